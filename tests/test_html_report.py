"""tfmeta.html_report: the page's content from hand-made predictions, and the page as
headless Chromium renders it (tests/browser.py): every image decodes, nothing errs in the
console, the thumbnails show their images' colours; and the checker itself fails on a
broken image and on a console error."""

import base64
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from tests import browser
from tfmeta.errors import UserError
from tfmeta.html_report import UNKNOWN, ReportQuery, accuracy, check_report_path, write_report

EVIL = "<script>alert(1)</script>"
# Pure colours no anti-aliasing or text makes: a thumbnail's pixels are exactly these.
COLOURS = {"magenta": (255, 0, 255), "cyan": (0, 255, 255), EVIL: (255, 255, 0)}
THUMBNAIL_PIXELS = 96 * 96


def square(colour, dot=0, size=28):
    """A uint8 [size, size, 3] image of one colour with a dark dot at (dot, dot), so that
    images of one colour differ."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = colour
    image[dot, dot] = (10, 10, 10)
    return image


def query(file, predicted, truth=None, top=None, probability=0.8, distance=None,
          image=None):
    return ReportQuery(file, square((0, 0, 0)) if image is None else image, predicted,
                       probability, top or predicted, distance, truth)


def support_of(*names, shots=2):
    return {n: [square(COLOURS.get(n, (0, 0, 0)), dot=i) for i in range(shots)] for n in names}


def page(tmp_path, queries, support, **kwargs) -> str:
    path = write_report(str(tmp_path / "report.html"), queries, support, **kwargs)
    with open(path, encoding="utf-8") as f:
        return f.read()


def cells(text) -> dict:
    """{(truth, predicted): count} from the confusion table."""
    return {(t, p): int(n) for t, p, n in re.findall(
        r'data-truth="([^"]*)" data-predicted="([^"]*)">(\d+)<', text)}


def test_the_header_counts_queries_classes_and_unknowns(tmp_path):
    queries = [query("q0.png", "a"), query("q1.png", UNKNOWN, top="b"),
               query("sub/q2.png", "b", distance=1.2345)]
    text = page(tmp_path, queries, support_of("a", "b", "c"), notes=["export: /tmp/x"])
    assert "3 queries · 3 classes · 1 unknown" in text
    assert "<li>export: /tmp/x</li>" in text
    assert text.count('<article class="card') == 3
    assert text.count('<div class="strip">') == 3
    assert "distance 1.23" in text and "confidence 80.0%" in text
    assert "Accuracy" not in text and "<table" not in text  # (no truths)


def test_an_unknown_card_names_its_closest_class_and_shows_that_class_beside_it(tmp_path):
    text = page(tmp_path, [query("q.png", UNKNOWN, top="b", probability=0.41)],
                support_of("a", "b", shots=3))
    card = text[text.index("<article"):]
    assert 'class="card unknown"' in card and '<div class="predicted unknown">unknown' in card
    assert "closest: b" in card and "confidence 41.0%" in card
    beside = card[card.index('class="beside"'):]
    # b's three support images (CSS classes s3..s5: a's are s0..s2), none of a's.
    assert re.findall(r'class="thumb (s\d+)"', beside) == ["s3", "s4", "s5"]


def test_accuracy_and_the_confusion_table_count_unknown_right_for_a_new_class(tmp_path):
    # Truths a, a, b, c; predictions a, b, b, unknown; c is not a support class, so its
    # "unknown" is right: 3 of 4.
    queries = [query("a/0.png", "a", "a"), query("a/1.png", "b", "a"),
               query("b/0.png", "b", "b"), query("c/0.png", UNKNOWN, "c", top="a")]
    support = support_of("a", "b")
    assert accuracy(queries, support) == 0.75
    text = page(tmp_path, queries, support)
    assert "Accuracy 75.0%</b> (3 of 4 right)" in text
    assert 'class="legend"' in text
    expected = {(t, p): 0 for t in "abc" for p in ("a", "b", UNKNOWN)}
    expected.update({("a", "a"): 1, ("a", "b"): 1, ("b", "b"): 1, ("c", UNKNOWN): 1})
    assert cells(text) == expected
    right = re.findall(r'<td class="right[^"]*" data-truth="(\w+)" data-predicted="(\w+)"',
                       text)
    assert right == [("a", "a"), ("b", "b"), ("c", UNKNOWN)]
    # Only a/1.png's card is marked wrong.
    wrong = re.findall(r'<article class="card[^"]*wrong">\n<figure><img [^>]*alt="([^"]*)"',
                       text)
    assert wrong == ["a/1.png"] and text.count("✗ wrong") == 1


def test_no_accuracy_unless_every_query_has_a_truth(tmp_path):
    queries = [query("a/0.png", "b", "a"), query("loose.png", "a")]
    text = page(tmp_path, queries, support_of("a", "b"))
    assert accuracy(queries, ["a", "b"]) is None and "<table" not in text
    assert text.count("✗ wrong") == 1  # (the card with a truth is still marked)


def test_names_notes_and_title_are_text_not_markup(tmp_path):
    queries = [query(f"{EVIL}/x<u>.png", EVIL, EVIL, top=EVIL)]
    text = page(tmp_path, queries, support_of(EVIL, "a"), title="<i>t</i>",
                notes=['<img src=x onerror="alert(2)">'])
    assert "<script" not in text and "<u>" not in text and "<i>" not in text
    assert "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert 'data-truth="&lt;script&gt;alert(1)&lt;/script&gt;"' in text


def test_the_page_stands_alone_and_its_thumbnails_are_the_images(tmp_path):
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10, 1)
    text = page(tmp_path, [query("g.png", "a", image=grey)], support_of("a", "b"))
    assert "<script" not in text and "http:" not in text and "https:" not in text
    assert re.findall(r'(?:src|href)="(?!data:)', text) == []
    assert "Content-Security-Policy" in text and "image-rendering: pixelated" in text
    uri = re.search(r'<img class="thumb" src="data:image/png;base64,([^"]+)"', text)[1]
    shown = tf.io.decode_png(base64.b64decode(uri), channels=0).numpy()
    np.testing.assert_array_equal(shown, grey)
    # Each support image is in the file once, however many cards show it.
    assert text.count("data:image/png") == 1 + 4


def test_the_report_path_must_name_a_file(tmp_path):
    with pytest.raises(UserError) as error:
        write_report(str(tmp_path), [query("q.png", "a")], support_of("a", "b"))
    assert str(error.value) == (f"--report={tmp_path} is a folder; give a file name such as "
                                f"{tmp_path}/report.html.")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"--report=.*/file/r.html cannot be written: .*/file "
                                        r"is a file"):
        check_report_path(str(tmp_path / "file" / "r.html"))
    with pytest.raises(UserError, match="--report is empty"):
        check_report_path("")
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_a_report_is_replaced_whole_in_new_folders(tmp_path):
    path = tmp_path / "new" / "folder" / "r.html"
    write_report(str(path), [query("q.png", "a")], support_of("a", "b"), title="first")
    write_report(str(path), [query("q.png", "b")], support_of("a", "b"), title="second")
    assert "<h1>second</h1>" in path.read_text() and os.listdir(path.parent) == ["r.html"]


@pytest.mark.parametrize("change, message", [
    (dict(image=np.zeros((4, 4, 3), np.float32)), "float32 of shape"),
    (dict(image=np.zeros((4, 4), np.uint8)), r"of shape \(4, 4\)"),
    (dict(predicted_class="z"), "neither a support class"),
    (dict(top_class="z"), "not a support class"),
    (dict(probability=1.5), r"expected a number in \[0, 1\]"),
])
def test_inputs_the_page_cannot_show_are_refused(tmp_path, change, message):
    bad = query("q.png", "a")
    for key, value in change.items():
        setattr(bad, key, value)
    with pytest.raises(ValueError, match=message):
        write_report(str(tmp_path / "r.html"), [bad], support_of("a", "b"))
    assert not os.listdir(tmp_path)


def test_a_support_class_cannot_be_named_unknown(tmp_path):
    with pytest.raises(UserError, match='A support class is named "unknown"'):
        write_report(str(tmp_path / "r.html"), [query("q.png", "a")], support_of("a", UNKNOWN))


# In a browser ----------------------------------------------------------------------------


def colour_pixels(png: bytes, colour) -> int:
    pixels = tf.io.decode_png(png, channels=3).numpy()
    return int(np.all(pixels == np.array(colour, np.uint8), axis=-1).sum())


def sample_report(tmp_path) -> str:
    """3 classes x 2 supports, 6 queries: 2 of each colour; one unknown; one wrong."""
    support = support_of("magenta", "cyan", EVIL)
    queries = [query(f"{name}/{i}.png", name, name, image=square(COLOURS[name], 5 + i),
                     distance=0.5)
               for name in COLOURS for i in range(2)]
    queries[1].predicted_class, queries[1].top_class = UNKNOWN, "cyan"
    queries[2].predicted_class = queries[2].top_class = "magenta"
    return write_report(str(tmp_path / "report.html"), queries, support,
                        notes=["a note"])


def test_the_report_renders_in_chromium(chromium, tmp_path):
    path = sample_report(tmp_path)
    shot = str(tmp_path / "report.png")
    rendering = browser.render(path, screenshot=shot, width=1200, height=3000)
    assert rendering.errors == []
    assert rendering.broken_images == []
    kinds = [image["kind"] for image in rendering.images]
    assert kinds.count("img") == 6 and kinds.count("background") == 6
    assert rendering.scripts == 0
    assert EVIL in rendering.text and "6 queries · 3 classes · 1 unknown" in rendering.text
    assert "Accuracy 66.7%" in rendering.text  # (4 of 6: one unknown, one wrong)
    assert rendering.height <= 3000  # (every card is in the screenshot)
    # Magenta thumbnails: its 2 supports in the strip, 2 queries, and 2 supports beside
    # each of the 2 cards predicted magenta (the wrong one included): 8. Cyan: 2 + 2
    # queries + 2 beside each of 2 cards (the unknown query came closest to cyan): 8. Each
    # is 96 x 96 pixels of its colour but for its one dark dot, enlarged to 3 or 4 squared.
    magenta = colour_pixels(rendering.screenshot, COLOURS["magenta"])
    cyan = colour_pixels(rendering.screenshot, COLOURS["cyan"])
    assert 8 * (THUMBNAIL_PIXELS - 16) <= magenta <= 8 * THUMBNAIL_PIXELS, magenta
    assert 8 * (THUMBNAIL_PIXELS - 16) <= cyan <= 8 * THUMBNAIL_PIXELS, cyan
    with open(shot, "rb") as f:
        assert f.read() == rendering.screenshot


def test_the_checker_finds_broken_thumbnails(chromium, tmp_path):
    path = sample_report(tmp_path)
    text = open(path, encoding="utf-8").read()
    # The first query's <img> and the first support image's CSS background made undecodable
    # (still valid base64).
    text = re.sub(r'(<img class="thumb" src="data:image/png;base64,)[^"]+', r"\1AAAA", text,
                  count=1)
    text = re.sub(r'(\.s0 \{ background-image: url\("data:image/png;base64,)[^"]+', r"\1AAAA",
                  text, count=1)
    broken = tmp_path / "broken.html"
    broken.write_text(text, encoding="utf-8")
    rendering = browser.render(str(broken), screenshot=str(tmp_path / "broken.png"))
    assert sorted(image["kind"] for image in rendering.broken_images) == ["background", "img"]
    assert len(rendering.images) - len(rendering.broken_images) == 10
    # s0 (magenta's first support) is blank in its strip and beside the 2 magenta cards, and
    # the first magenta query is blank: 4 of the 8 magenta thumbnails are left.
    magenta = colour_pixels(rendering.screenshot, COLOURS["magenta"])
    assert 4 * (THUMBNAIL_PIXELS - 16) <= magenta <= 4 * THUMBNAIL_PIXELS, magenta


def test_the_checker_finds_console_errors_exceptions_dialogs_and_refused_loads(chromium,
                                                                              tmp_path):
    noisy = tmp_path / "noisy.html"
    noisy.write_text("<!DOCTYPE html><html><body><p>hello</p>"
                     '<script>console.log("fine"); console.error("deliberate");</script>'
                     '<script>alert("boo"); null.x;</script></body></html>')
    rendering = browser.render(str(noisy))
    assert rendering.errors[0] == "console: deliberate"
    assert rendering.errors[1] == "dialog: alert 'boo'"
    assert rendering.errors[2].startswith("exception: TypeError")
    assert len(rendering.errors) == 3 and rendering.text == "hello"
    # The report's Content-Security-Policy refuses (and Chromium reports) anything it would
    # load from outside the file, and any script a name might carry.
    text = open(sample_report(tmp_path), encoding="utf-8").read().replace(
        "<h2>Queries</h2>", '<h2>Queries</h2><img src="https://example.com/x.png">'
                            "<script>alert(3)</script>")
    (tmp_path / "outside.html").write_text(text, encoding="utf-8")
    rendering = browser.render(str(tmp_path / "outside.html"))
    assert len(rendering.errors) == 2, rendering.errors
    assert all("Content Security Policy" in e for e in rendering.errors)
    assert [i["src"] for i in rendering.broken_images] == ["https://example.com/x.png"]

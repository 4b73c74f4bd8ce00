"""One HTML page of a prediction run, to see what the model did: `bin/predict.py --report`.

The page, top to bottom:

    header    the title; how many queries, classes and "unknown" answers; the run's notes;
              when every query sits in a folder named for its class, the accuracy (with a
              legend saying what counts as right) and a confusion table: rows the folder's
              class, columns the predicted class and then "unknown", a count in each cell
    support   one strip per class: its name and its example images, in class order
    queries   one card per query: its image and file, the predicted class (or "unknown",
              with the class it came closest to), the confidence as a percentage, the
              distance when given, and beside them the support images of that class (of
              the closest one for "unknown"); a card whose prediction is wrong is marked

The page stands alone, one file to mail or archive: every image is a PNG data URI, the
style sheet is inline, and there is no script. Each support image is written once, as a
CSS class that the strip and every card showing it use, so the file grows with the queries
and not with queries x support images. A Content-Security-Policy lets the page load only
its own data: images and run no script, and every name in it (files, classes, notes) is
HTML-escaped: a class folder named `<script>...` shows as text.

Images are shown at 96 px whatever their size, small ones enlarged pixel for pixel
(`image-rendering: pixelated`), as the model saw them.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os

import numpy as np
import tensorflow as tf

from tfmeta.errors import UserError
from tfmeta.files import atomic_write, check_output_file

# The predicted class of a query rejected as none of the support classes.
UNKNOWN = "unknown"
# What the CLI flag is called, for the messages of `check_report_path`.
FLAG = "--report"
THUMBNAIL_PX = 96

STYLE = f"""
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }}
h2 {{ font-size: 17px; margin: 24px 0 8px; }}
.thumb {{ width: {THUMBNAIL_PX}px; height: {THUMBNAIL_PX}px; object-fit: contain;
  image-rendering: pixelated; display: inline-block; vertical-align: top; margin: 2px;
  background: #eee no-repeat center / contain; }}
.strip {{ margin: 4px 0; }}
.strip .name, .beside .name {{ font-weight: 600; margin-right: 8px; }}
.card {{ display: flex; gap: 16px; align-items: flex-start; padding: 8px;
  border: 2px solid #ddd; border-radius: 6px; margin: 8px 0; }}
.card.wrong {{ border-color: #c62828; background: #fff5f5; }}
.card figure {{ margin: 0; width: {THUMBNAIL_PX + 4}px; }}
.card figcaption {{ font-size: 12px; overflow-wrap: anywhere; }}
.verdict {{ min-width: 200px; }}
.predicted {{ font-size: 17px; font-weight: 600; }}
.predicted.unknown {{ color: #777; font-style: italic; }}
.mark {{ color: #c62828; font-weight: 600; }}
table {{ border-collapse: collapse; margin: 8px 0; }}
th, td {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
td.right {{ background: #e8f5e9; }}
td.zero {{ color: #bbb; }}
.legend, .counts {{ color: #555; }}
"""
# Nothing but the page itself: its data: images and inline style; no script, no request.
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclasses.dataclass
class ReportQuery:
    file: str                  # path relative to the query folder, shown as the caption
    image: np.ndarray          # uint8 [H, W, C] (C 1 or 3), the image as the model saw it
    predicted_class: str       # a support class name, or "unknown" when rejected as none
    probability: float         # calibrated confidence of the top class, in [0, 1]
    top_class: str             # the most likely support class (even for "unknown")
    distance: float | None     # how far from every support class (None: not computed)
    truth: str | None          # the class named by the query's folder, where there is one


def check_report_path(path: str) -> None:
    """A one-line UserError naming --report unless an HTML file can be written at `path`
    (`files.check_output_file`). The CLI calls this before any work; `write_report` again."""
    check_output_file(path, "report.html", FLAG)


def write_report(path: str, queries: list[ReportQuery], support: dict[str, list[np.ndarray]],
                 title: str = "tfmeta predictions", notes: list[str] = ()) -> str:
    """Writes the page (see the module docstring) to `path`, atomically, and returns `path`.

    `support`: class name -> its support images (uint8 `[H, W, C]`, C 1 or 3), in class
    order. `notes`: lines shown under the counts (the export, the folders, the settings).
    """
    check_report_path(path)
    check_inputs(queries, support)
    page = render_page(queries, support, title, list(notes))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, encoding="utf-8") as f:
        f.write(page)
    return path


def check_inputs(queries: list[ReportQuery], support: dict) -> None:
    """A ValueError naming the first query or support image that is not what the page
    shows: a uint8 image `[H, W, 1 or 3]`, a predicted class among the support classes or
    "unknown", a top class among them, a probability in [0, 1]."""
    if UNKNOWN in support:
        raise UserError(f'A support class is named "{UNKNOWN}", the answer for a query that '
                        "is none of the classes; rename its folder.")
    for name, images in support.items():
        for i, image in enumerate(images):
            _check_image(image, f"support image {i} of class {name!r}")
    for query in queries:
        _check_image(query.image, f"the image of query {query.file!r}")
        if query.predicted_class not in support and query.predicted_class != UNKNOWN:
            raise ValueError(f"Query {query.file!r} is predicted {query.predicted_class!r}, "
                             f"which is neither a support class {list(support)} nor "
                             f"{UNKNOWN!r}.")
        if query.top_class not in support:
            raise ValueError(f"Query {query.file!r} has top class {query.top_class!r}, which "
                             f"is not a support class {list(support)}.")
        if not 0.0 <= query.probability <= 1.0:
            raise ValueError(f"Query {query.file!r} has probability {query.probability!r}; "
                             "expected a number in [0, 1].")


def _check_image(image, what: str) -> None:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"{what} is {image.dtype} of shape {image.shape}; expected uint8 "
                         "[height, width, channels] with 1 or 3 channels.")


def png_data_uri(image: np.ndarray) -> str:
    """`image` (uint8 `[H, W, C]`) as a `data:image/png;base64,...` URI."""
    png = tf.io.encode_png(np.asarray(image)).numpy()
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def is_right(query: ReportQuery, support_classes) -> bool | None:
    """Whether the prediction is right (None without a truth): the truth's class, or
    "unknown" for a truth that is not a support class."""
    if query.truth is None:
        return None
    if query.truth in support_classes:
        return query.predicted_class == query.truth
    return query.predicted_class == UNKNOWN


def accuracy(queries: list[ReportQuery], support_classes) -> float | None:
    """The share of right predictions (`is_right`) when every query has a truth, else None."""
    right = [is_right(q, support_classes) for q in queries]
    if not right or None in right:
        return None
    return sum(right) / len(right)


def confusion(queries: list[ReportQuery], support_classes: list[str]) -> tuple:
    """(rows, columns, counts): rows the truths that occur (support classes in their order,
    then the others sorted), columns the support classes and "unknown", counts
    `{(truth, predicted): n}`."""
    truths = {q.truth for q in queries}
    rows = [c for c in support_classes if c in truths] + sorted(truths - set(support_classes))
    counts = {}
    for q in queries:
        counts[q.truth, q.predicted_class] = counts.get((q.truth, q.predicted_class), 0) + 1
    return rows, list(support_classes) + [UNKNOWN], counts


def render_page(queries: list[ReportQuery], support: dict, title: str, notes: list) -> str:
    """The whole HTML document."""
    support_classes = list(support)
    css_names = {}  # (class name, index) -> the CSS class that shows that support image
    rules = []
    for name, images in support.items():
        for i, image in enumerate(images):
            css_names[name, i] = f"s{len(rules)}"
            rules.append(f'.s{len(rules)} {{ background-image: url("{png_data_uri(image)}"); }}')
    body = [_header(queries, support_classes, title, notes),
            _support_section(support, css_names),
            "<h2>Queries</h2>",
            *(_query_card(q, support, css_names) for q in queries)]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        f"<title>{html.escape(title)}</title>",
        "<style>", STYLE, *rules, "</style>", "</head>", "<body>", *body, "</body>",
        "</html>", ""])


def _header(queries, support_classes, title, notes) -> str:
    unknown = sum(q.predicted_class == UNKNOWN for q in queries)
    parts = [f"<header><h1>{html.escape(title)}</h1>",
             f'<p class="counts">{_count(len(queries), "query", "queries")} · '
             f'{_count(len(support_classes), "class", "classes")} · {unknown} {UNKNOWN}</p>']
    if notes:
        parts.append('<ul class="notes">' + "".join(
            f"<li>{html.escape(str(n))}</li>" for n in notes) + "</ul>")
    share = accuracy(queries, support_classes)
    if share is not None:
        right = round(share * len(queries))
        parts += [f'<p class="accuracy"><b>Accuracy {100 * share:.1f}%</b> ({right} of '
                  f"{len(queries)} right)</p>",
                  '<p class="legend">Right: the predicted class is the class of the query\'s '
                  f"folder, or &quot;{UNKNOWN}&quot; for a folder that names no support "
                  "class. Cards of wrong predictions are outlined in red and marked ✗. "
                  "Table: rows the folder's class, columns the prediction.</p>",
                  _confusion_table(queries, support_classes)]
    return "\n".join(parts) + "</header>"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _confusion_table(queries, support_classes) -> str:
    rows, columns, counts = confusion(queries, support_classes)
    head = "<tr><th>truth \\ predicted</th>" + "".join(
        f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    lines = [f'<table class="confusion">{head}']
    for truth in rows:
        cells = []
        for predicted in columns:
            n = counts.get((truth, predicted), 0)
            right = predicted == truth or (predicted == UNKNOWN and truth not in
                                           support_classes)
            kind = " ".join(k for k, on in (("right", right), ("zero", not n)) if on)
            cells.append(f'<td class="{kind}" data-truth="{html.escape(truth)}" '
                         f'data-predicted="{html.escape(predicted)}">{n}</td>')
        lines.append(f"<tr><th>{html.escape(truth)}</th>{''.join(cells)}</tr>")
    return "\n".join(lines) + "</table>"


def _support_thumbnails(name: str, count: int, css_names: dict) -> str:
    return "".join(f'<span class="thumb {css_names[name, i]}" role="img" '
                   f'aria-label="{html.escape(name)} example {i + 1}"></span>'
                   for i in range(count))


def _support_section(support: dict, css_names: dict) -> str:
    strips = [f'<div class="strip"><span class="name">{html.escape(name)}</span>'
              f"{_support_thumbnails(name, len(images), css_names)}</div>"
              for name, images in support.items()]
    return "<section><h2>Support</h2>\n" + "\n".join(strips) + "</section>"


def _query_card(query: ReportQuery, support: dict, css_names: dict) -> str:
    """One query's card (see the module docstring)."""
    right = is_right(query, support)
    unknown = query.predicted_class == UNKNOWN
    shown = query.top_class if unknown else query.predicted_class
    verdict = [f'<div class="predicted{" unknown" if unknown else ""}">'
               f"{html.escape(query.predicted_class)}</div>"]
    if unknown:
        verdict.append(f'<div class="closest">closest: {html.escape(query.top_class)}</div>')
    verdict.append(f'<div class="confidence">confidence {100 * query.probability:.1f}%</div>')
    if query.distance is not None:
        verdict.append(f'<div class="distance">distance {query.distance:.3g}</div>')
    if query.truth is not None:
        mark = "" if right else ' <span class="mark">✗ wrong</span>'
        verdict.append(f'<div class="truth">folder: {html.escape(query.truth)}{mark}</div>')
    kind = "card" + (" unknown" if unknown else "") + (" wrong" if right is False else "")
    file = html.escape(query.file)
    return "\n".join([
        f'<article class="{kind}">',
        f'<figure><img class="thumb" src="{png_data_uri(query.image)}" alt="{file}">'
        f"<figcaption>{file}</figcaption></figure>",
        f'<div class="verdict">{"".join(verdict)}</div>',
        f'<div class="beside"><span class="name">{html.escape(shown)}</span>'
        f"{_support_thumbnails(shown, len(support[shown]), css_names)}</div>",
        "</article>"])

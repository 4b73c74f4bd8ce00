"""Trust, third round (issue 34): images and class folders under bad input. One test per
finding, each of which failed on the code before it (what it did then is in the test's
docstring); no training, files of a few hundred bytes."""

import io
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfmeta import predict
from tfmeta.data import folder, image_headers, load_dataset, own_data
from tfmeta.data import images as image_utils

pytestmark = pytest.mark.usefixtures("private_cache")


def write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def png(width, height, rows: bytes | None = None) -> bytes:
    """A grey 8-bit PNG written by hand: its IHDR declares `width` x `height`; its IDAT holds
    `rows` (default: every row, black), compressed."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    if rows is None:
        rows = b"\0" * ((width + 1) * height)  # filter byte 0, then the pixels
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (image_headers.PNG_SIGNATURE + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def q(path) -> str:
    """`path` as a regular expression that matches it."""
    return re.escape(str(path))


def encoded(array, fmt, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def classes_of_pngs(root, names="abcd", count=2):
    for name in names:
        for k in range(count):
            write(os.path.join(root, name, f"{k}.png"),
                  tf.io.encode_png(np.full((6, 6, 3), 40 * k + 10, np.uint8)).numpy())
    return str(root)


# ------------------------------------------------- 1: declared size before decoding
def test_headers_declare_the_size_of_every_format_the_loader_reads(tmp_path):
    """Before: no header was read; an image's size was known once it was decoded."""
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    read = image_headers.read_header
    assert read(tf.io.encode_png(rgb).numpy()) == image_headers.Header("PNG", 7, 5)
    assert read(tf.io.encode_jpeg(rgb).numpy()) == image_headers.Header("JPEG", 7, 5)
    # A JPEG whose frame header follows an EXIF segment and is progressive (SOF2).
    exif = Image.Exif()
    exif[0x010E] = "a description " * 40
    jpeg = encoded(rgb, "JPEG", exif=exif, progressive=True)
    assert jpeg.index(b"\xff\xe1") < jpeg.index(b"\xff\xc2")
    assert read(jpeg) == image_headers.Header("JPEG", 7, 5)
    assert read(encoded(rgb, "BMP")) == image_headers.Header("BMP", 7, 5)
    assert read(encoded(rgb, "GIF")) == image_headers.Header("GIF", 7, 5)
    frames = [Image.fromarray(np.full((5, 7, 3), 60 * k, np.uint8)) for k in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    assert read(gif.getvalue()) == image_headers.Header("GIF", 7, 5, frames=3)
    assert read(gif.getvalue()).describe() == "7x5 in 3 frames"
    for options in ({"lossless": True}, {"quality": 50}, {"lossless": True, "exif": exif}):
        assert read(encoded(rgb, "WEBP", **options)) == image_headers.Header("WebP", 7, 5)
    # From a file, whatever its name says; None for what is no image, or cut short.
    assert read(write(tmp_path / "really_a_png.jpg", png(20000, 20000))).pixels == 20000 ** 2
    assert read(write(tmp_path / "text.png", b"not an image at all")) is None
    assert read(tf.io.encode_png(rgb).numpy()[:20]) is None
    assert read(str(tmp_path / "missing.png")) is None
    os.mkfifo(tmp_path / "pipe.png")
    assert read(str(tmp_path / "pipe.png")) is None  # never opened: it would wait forever


def test_folder_refuses_an_image_declaring_too_many_pixels_before_decoding(tmp_path,
                                                                        monkeypatch):
    """Before: a 389 KB PNG that declares 20000x20000 pixels was decoded in full (training's
    peak memory 0.74 GB -> 3.5 GB); nothing read its header first."""
    root = classes_of_pngs(tmp_path / "photos")
    bomb = write(os.path.join(root, "b", "bomb.png"), png(20000, 20000, rows=b"\0" * 64))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    with monkeypatch.context() as patch:
        patch.setattr(image_utils, "_decoded", no_decoding)
        with pytest.raises(ValueError, match=rf"Image {q(bomb)} declares 20000x20000 pixels "
                                             r"\(400,000,000\), more than the 89,478,485 .*"
                                             r"--set=data.max_image_pixels=400000000"):
            load_dataset("folder", root, image_size=6)
        # bin/predict.py's support and query images are read the same way.
        with pytest.raises(ValueError, match=r"declares 20000x20000 pixels"):
            predict.read_images([bomb], {"image_size": 6, "channels": 3})
    os.remove(bomb)

    # The limit is data.max_image_pixels: a genuine 1200x1200 image passes Pillow's default
    # and is decoded, and is refused under a lower limit.
    big = write(os.path.join(root, "b", "big.png"), png(1200, 1200))
    with pytest.raises(ValueError, match=rf"Image {q(big)} declares 1200x1200 pixels"):
        load_dataset("folder", root, image_size=6, max_image_pixels=1_000_000)
    data = load_dataset("folder", root, image_size=6)
    assert big in data.source_files
    with pytest.raises(ValueError, match=r"data.max_image_pixels must be an integer >= 1"):
        load_dataset("folder", root, image_size=6, max_image_pixels=0)


# ---------------------------------------------------------- 2: paletted BMPs
def bmp(indices, palette, bits, top_down=False, compression=0) -> bytes:
    """A BMP with a BITMAPINFOHEADER written by hand (Pillow writes no 4-bit BMP)."""
    height, width = indices.shape
    row_bytes = (width * bits + 31) // 32 * 4
    rows = []
    for row in indices if top_down else indices[::-1]:
        bits_of_row = np.unpackbits(row.astype(np.uint8)[:, None], axis=1)[:, 8 - bits:]
        rows.append(np.packbits(bits_of_row.ravel()).tobytes().ljust(row_bytes, b"\0"))
    table = b"".join(bytes((b, g, r, 0)) for r, g, b in palette)
    offset = 14 + 40 + len(table)
    info = struct.pack("<IiiHHIIiiII", 40, width, -height if top_down else height, 1, bits,
                       compression, row_bytes * height, 2835, 2835, len(palette), 0)
    pixels = b"".join(rows)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + table + \
        pixels


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_paletted_bmps_decode_as_pillow_decodes_them(tmp_path, bits):
    """Before: a valid 1-bit or 4-bit BMP was a corrupt image ("Number of channels inherent
    in the image must be 1, 3 or 4, was 0": tf.io.decode_bmp reads 24 and 32 bits), and an
    8-bit one with a colour palette was read as grey palette indices."""
    rng = np.random.default_rng(bits)
    palette = [tuple(rng.integers(0, 256, 3)) for _ in range(1 << bits)]
    for height, width, top_down in ((5, 13, False), (7, 3, True), (11, 11, False)):
        indices = rng.integers(0, 1 << bits, (height, width))
        data = bmp(indices, palette, bits, top_down)
        reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        np.testing.assert_array_equal(image_utils.decode_paletted_bmp(data), reference)
        if height == width:
            np.testing.assert_array_equal(image_utils.decode_image(data, width).numpy(),
                                          reference)
    # What Pillow writes (1-bit black and white, 8-bit colour), odd widths, in a folder.
    root = classes_of_pngs(tmp_path / "photos", "abc")
    art = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    image = Image.fromarray(art)
    image = image.convert("1") if bits == 1 else image.quantize(1 << bits)
    path = os.path.join(root, "c", "drawing.bmp")
    image.save(path, "BMP")
    reference = np.asarray(Image.open(path).convert("RGB"))
    data = load_dataset("folder", root, image_size=9, normalize=False,
                        class_split={"train": ["a"], "val": ["b"], "test": ["c"]})
    assert data.split("test").images.shape == (3, 9, 9, 3)  # 0.png, 1.png, drawing.bmp
    np.testing.assert_array_equal(data.split("test").images[2], reference)


def test_compressed_bmps_stay_corrupt_images_naming_the_file(tmp_path):
    """Before: an RLE8 BMP went to tf.io.decode_bmp, which read it as grey indices or
    failed with a message about channels; now the error names the compression."""
    root = classes_of_pngs(tmp_path / "photos")
    indices = np.zeros((4, 4), np.int64)
    rle = write(os.path.join(root, "a", "rle.bmp"),
                bmp(indices, [(0, 0, 0)] * 256, 8, compression=1))
    with pytest.raises(ValueError, match=rf"Corrupt image {q(rle)}: .*compressed with RLE8"):
        load_dataset("folder", root, image_size=6)
    assert "cut short" in image_utils.decode_failure(bmp(indices, [(1, 2, 3)] * 2, 1)[:-8])


def test_an_animated_webp_is_refused_not_decoded(tmp_path):
    """Before: TensorFlow 2.21's decoder ran on an animated WebP (a file named .png is
    sniffed by content) and corrupted the heap: "double free or corruption", the process
    aborted."""
    frames = [Image.fromarray(np.full((6, 9, 3), 20 * k, np.uint8)) for k in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:])
    root = classes_of_pngs(tmp_path / "photos")
    webp = write(os.path.join(root, "a", "moving.png"), buffer.getvalue())
    with pytest.raises(ValueError, match=rf"Corrupt image {q(webp)}: .*an animated WebP"):
        load_dataset("folder", root, image_size=6)


# ----------------------------------------------------------- 3: linked folders
def link_cases(root, outside):
    """name -> (what to link, the error it gives as a regular expression)."""
    a, e, image, linked = root / "a", root / "e", root / "a" / "0.png", root / "b" / "x.png"
    return {
        "class_to_root": (lambda: os.symlink(root, e),
                          rf"Class folder {q(e)} is a link to {q(root)}, the data folder "
                          r"itself, so the class would hold other classes' images"),
        "class_to_class": (lambda: os.symlink(a, e),
                           rf"Class folder {q(e)} is a link to {q(a)}, which is also class "
                           rf"folder {q(a)}; an image may belong to one class only"),
        "class_into_class": (lambda: (classes_of_pngs(a, "s"), os.symlink(a / "s", e)),
                             rf"Class folder {q(e)} is a link to {q(a / 's')}, which is inside "
                             rf"class folder {q(a)}"),
        "image_in_two_classes": (lambda: os.symlink(image, linked),
                                 rf"Image {q(linked)} of class 'b' is a link to {q(image)}, in "
                                 r"the folder of class 'a'"),
        "hard_link_in_two_classes": (lambda: os.link(image, linked),
                                     rf"Image {q(linked)} of class 'b' is a hard link, the same "
                                     rf"file as image {q(image)} of class 'a'"),
        "class_outside": (lambda: os.symlink(outside, e),
                          rf"Class folder {q(e)} is a link to {q(outside)}, outside the data "
                          rf"folder {q(root)}; .* replace the link by a copy or remove it"),
        "image_outside": (lambda: os.symlink(outside / "a" / "0.png", linked),
                          rf"Image {q(linked)} is a link to {q(outside / 'a' / '0.png')}, "
                          rf"outside the data folder {q(root)}"),
    }


@pytest.mark.parametrize("case", list(link_cases(Path("r"), Path("o"))))
def test_links_that_leave_their_class_are_refused(tmp_path, case):
    """Before: a class folder linked to the data folder became one class holding every image
    (the test classes' too: a leak across splits); links to another class, to its inside,
    an image linked (or hard-linked) into two classes, and links out of the data folder were
    all followed silently."""
    root, outside = tmp_path / "photos", tmp_path / "elsewhere"
    classes_of_pngs(root), classes_of_pngs(outside, "a")
    make, message = link_cases(root, outside)[case]
    make()
    with pytest.raises(ValueError, match=message):
        folder.find_classes(str(root))


def test_links_across_fixed_splits_are_refused_and_harmless_links_kept(tmp_path):
    """Before: train/<link to test/> was one training class of all the test images; links
    that break no rule (to a sibling, to a file or folder no class holds) were kept, the
    sibling twice."""
    root = tmp_path / "splits"
    classes_of_pngs(root / "train", "abc"), classes_of_pngs(root / "val", "d")
    classes_of_pngs(root / "test", "ef")
    os.symlink(root / "test", root / "train" / "leak")
    with pytest.raises(ValueError, match=rf"{q(root / 'train' / 'leak')} is a link to "
                                         rf"{q(root / 'test')}, which holds class folder"):
        load_dataset("folder", str(root), image_size=6)
    os.remove(root / "train" / "leak")
    os.symlink(root / "train", root / "train" / "up")
    with pytest.raises(ValueError, match=r"a folder above it"):
        folder.find_classes(str(root))
    os.remove(root / "train" / "up")

    os.symlink(root / "train" / "a" / "0.png", root / "train" / "a" / "again.png")
    classes_of_pngs(root / ".store", "gh")  # a hidden folder: no class of its own
    os.symlink(root / ".store" / "g", root / "train" / "g")
    os.symlink(root / ".store" / "h" / "0.png", root / "test" / "e" / "loose.png")
    classes, fixed, _ = folder.find_classes(str(root))
    assert fixed["train"] == ["a", "b", "c", "g"]
    assert {n: len(f) for n, f in classes.items()} == {"a": 2, "b": 2, "c": 2, "d": 2,
                                                       "e": 3, "f": 2, "g": 2}


def test_a_support_folder_of_links_to_photos_elsewhere_is_kept(tmp_path):
    """bin/predict.py's support set (`links_out`) has no splits to leak across: a folder of
    links to photos kept elsewhere is a support set; an image in two classes is not."""
    photos, support = tmp_path / "photos", tmp_path / "support"
    classes_of_pngs(photos, "ab")
    for name in "ab":
        (support / name).mkdir(parents=True)
        os.symlink(photos / name / "0.png", support / name / "0.png")
    with pytest.raises(ValueError, match="outside the data folder"):
        folder.class_folders(str(support))
    classes, _ = folder.class_folders(str(support), links_out=True)
    assert {n: len(f) for n, f in classes.items()} == {"a": 1, "b": 1}
    os.symlink(photos / "a" / "0.png", support / "b" / "1.png")
    with pytest.raises(ValueError, match="the same file as image"):
        folder.class_folders(str(support), links_out=True)


# ------------------------------------------------- 4: from_tf_dataset(image_size=)
@pytest.mark.parametrize("bad", [np.nan, 300.0, -5.0])
def test_from_tf_dataset_with_image_size_refuses_pixels_out_of_range(bad):
    """Before: with image_size= the images were clipped to [0, 1] before anything looked at
    them, so NaN, 300.0 (a 0..255 image in floats) and -5 became 0 or 255 silently; without
    image_size they were refused."""
    images = np.random.default_rng(0).random((8, 5, 5, 3)).astype(np.float32)
    images[3, 2, 1, 0] = bad
    labels = np.arange(8) % 4
    with pytest.raises(ValueError) as without_size:
        own_data.from_arrays(images, labels)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    with pytest.raises(ValueError) as with_size:
        own_data.from_tf_dataset(dataset, image_size=4)
    assert str(with_size.value) == str(without_size.value)
    assert "must be in [0.0, 1.0]" in str(with_size.value)

    pixels = np.round(np.nan_to_num(images.clip(0, 1)) * 255).astype(np.uint8)
    data = own_data.from_tf_dataset(tf.data.Dataset.from_tensor_slices((pixels, labels)),
                                    image_size=4)
    assert data.raw_shape == (4, 4, 3)
    assert sum(len(data.split(s).images) for s in ("train", "val", "test")) == 8

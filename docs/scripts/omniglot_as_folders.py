"""Writes the bundled Omniglot characters as a folder of class folders: a stand-in for a
user's own images, for docs/own_data.md and the own-data tests.

    python docs/scripts/omniglot_as_folders.py --output=/tmp/characters \
        [--alphabets=Balinese,Greek] [--drawers=0-19] [--seed=0]

One folder per character (`<alphabet>_<character>/`), one image per drawer, as users'
folders are: mixed formats (PNG, JPEG, BMP, GIF), modes (1-bit, grey, RGB) and sizes
(each side drawn from 64..140 pixels, so most images are not square), some in nested
folders, with stray files (a README, `.DS_Store`, `Thumbs.db`). Needs Pillow (the test
extra).
"""

import argparse
import io
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tfmeta.data import omniglot  # noqa: E402

FORMATS = (("png", "PNG", "1"), ("jpg", "JPEG", "L"), ("bmp", "BMP", "RGB"),
           ("gif", "GIF", "L"), ("png", "PNG", "RGB"), ("jpeg", "JPEG", "RGB"))


def characters(alphabets=None) -> dict:
    """{(alphabet, character): [PNG bytes per drawer]} of the bundled minimal sets."""
    found = {}
    for source in sorted(omniglot.find_sets(omniglot.BUNDLED_DIR).values()):
        for alphabet, character, _, read in omniglot._list_pngs(source):
            if alphabets and alphabet not in alphabets:
                continue
            drawers = found.setdefault((alphabet, character), {})
            drawers.setdefault(source, []).append(read())
    # Greek and Latin are in both sets: keep one copy, as the loader does.
    return {key: next(iter(by_set.values())) for key, by_set in sorted(found.items())}


def write_folders(output: str, alphabets=None, drawers=range(20), seed: int = 0,
                  strays: bool = True) -> list:
    """Writes `<output>/<alphabet>_<character>/...` (see the module docstring); returns the
    class folder names."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = []
    for (alphabet, character), reads in characters(alphabets).items():
        name = f"{alphabet}_{character}"
        names.append(name)
        for drawer in drawers:
            image = Image.open(io.BytesIO(reads[drawer]))
            extension, kind, mode = FORMATS[int(rng.integers(len(FORMATS)))]
            size = tuple(int(s) for s in rng.integers(64, 141, 2))
            image = image.convert("L").resize(size, Image.BILINEAR).convert(mode)
            nested = "scans" if rng.random() < 0.2 else ""
            folder = os.path.join(output, name, nested)
            os.makedirs(folder, exist_ok=True)
            image.save(os.path.join(folder, f"{drawer:02d}.{extension}"), kind)
    if strays:
        with open(os.path.join(output, "README.txt"), "w") as f:
            f.write("Omniglot characters, one folder per character.\n")
        first = os.path.join(output, names[0])
        for stray in (".DS_Store", "Thumbs.db", "notes.txt"):
            with open(os.path.join(first, stray), "wb") as f:
                f.write(b"\x00not an image\n")
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--alphabets", default="", help="comma-separated (default: all 8)")
    parser.add_argument("--drawers", default="0-19", help="a range such as 0-19")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    first, last = (int(x) for x in args.drawers.split("-"))
    names = write_folders(args.output, [a for a in args.alphabets.split(",") if a] or None,
                          range(first, last + 1), args.seed)
    print(f"wrote {len(names)} class folders to {args.output}")


if __name__ == "__main__":
    main()

"""Writes a folder of class folders of natural-looking synthetic photos: a stand-in, on a
machine without data, for a user's own few hundred photos (tests/test_pretrained_pipeline.py
and docs/pretrained.md run the whole pipeline on it).

    python docs/scripts/synthetic_photos.py /tmp/photos [--groups=4] [--classes=6] [--images=12]

    /tmp/photos/<group>/<group>_<k>/<i>.jpg      (class depth 2: --set=data.class_depth=2)

Each group is a kind of object (a disc, a box, a wedge, a ring, a bar), each of its
classes one such object with a colour, a surface pattern and a size of its own, and each
image that object photographed anew: placed, scaled and turned at random, lit by a
gradient over a textured background of the class's scene, with sensor noise, a slight blur
and JPEG compression. Classes of one group look alike, as a dataset's fine-grained classes
do.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

SHAPES = ("disc", "box", "wedge", "ring", "bar")


def _mask(kind: str, size: int, rng) -> np.ndarray:
    """A soft mask [size, size] of one object of `kind`, placed, scaled and turned at random."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    cy, cx = rng.uniform(-0.15, 0.15, 2)
    angle = rng.uniform(0, np.pi)
    scale = rng.uniform(0.75, 1.25)
    y = ((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle)) / scale
    x = ((yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)) / scale
    if kind == "disc":
        inside = 0.28 - np.hypot(y, x)
    elif kind == "box":
        inside = 0.22 - np.maximum(np.abs(y), np.abs(x))
    elif kind == "wedge":
        inside = np.minimum(0.25 - y, np.minimum(y + 0.2 - 1.2 * x, y + 0.2 + 1.2 * x) * 0.6)
    elif kind == "ring":
        inside = 0.08 - np.abs(np.hypot(y, x) - 0.22)
    else:  # bar
        inside = np.minimum(0.1 - np.abs(y), 0.35 - np.abs(x))
    return np.clip(inside * size / 2.0, 0.0, 1.0)


def _class_look(rng) -> dict:
    """What makes one class: its colour, pattern frequency and angle, scene colours."""
    return {"colour": rng.uniform(0.1, 0.95, 3), "pattern": rng.uniform(2.0, 9.0),
            "pattern_angle": rng.uniform(0, np.pi), "contrast": rng.uniform(0.15, 0.45),
            "scene": rng.uniform(0.2, 0.8, (2, 3)), "grain": rng.uniform(3.0, 12.0)}


def photo(kind: str, look: dict, size: int, rng) -> np.ndarray:
    """One uint8 RGB photo [size, size, 3] of an object of class `look`."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    light = rng.uniform(0, 2 * np.pi)
    gradient = 0.5 + 0.5 * (np.cos(light) * yy + np.sin(light) * xx)
    scene = look["scene"][0] * (1 - gradient[..., None]) + look["scene"][1] * gradient[..., None]
    grain = np.sin(look["grain"] * 6.3 * (xx + 0.3 * yy) + rng.uniform(0, 6.3))[..., None]
    background = np.clip(scene + 0.06 * grain, 0, 1)
    angle = look["pattern_angle"] + rng.normal(0, 0.1)
    stripes = np.sin(look["pattern"] * 6.3 * (np.cos(angle) * yy + np.sin(angle) * xx)
                     + rng.uniform(0, 6.3))[..., None]
    colour = np.clip(look["colour"] * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03, 3), 0, 1)
    surface = np.clip(colour * (1 + look["contrast"] * stripes) * (0.7 + 0.5 * gradient[..., None]),
                      0, 1)
    mask = _mask(kind, size, rng)[..., None]
    image = mask * surface + (1 - mask) * background
    image = image + rng.normal(0, 0.03, image.shape)                      # sensor noise
    blurred = (image + np.roll(image, 1, 0) + np.roll(image, 1, 1) + np.roll(image, -1, 0)
               + np.roll(image, -1, 1)) / 5.0                              # a slight blur
    return (np.clip(0.6 * image + 0.4 * blurred, 0, 1) * 255).round().astype(np.uint8)


def write_folders(root: str, groups: int = 4, classes: int = 6, images: int = 12,
                  size: int = 48, seed: int = 0) -> list:
    """Writes `groups` x `classes` class folders of `images` JPEG photos under `root`
    (`<group>/<group>_<k>/`); returns the class folders, relative to `root`."""
    from PIL import Image

    if not 1 <= groups <= len(SHAPES):
        raise ValueError(f"groups must be 1..{len(SHAPES)}; got {groups}.")
    rng = np.random.default_rng(seed)
    written = []
    for kind in SHAPES[:groups]:
        for k in range(classes):
            look = _class_look(rng)
            folder = os.path.join(kind, f"{kind}_{k}")
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            for i in range(images):
                Image.fromarray(photo(kind, look, size, rng)).save(
                    os.path.join(root, folder, f"{i:03d}.jpg"), quality=90)
            written.append(folder)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--classes", type=int, default=6, help="classes per group")
    parser.add_argument("--images", type=int, default=12, help="photos per class")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folders = write_folders(args.root, args.groups, args.classes, args.images, args.size,
                            args.seed)
    print(f"Wrote {len(folders)} classes of {args.images} photos to {args.root}")


if __name__ == "__main__":
    main()

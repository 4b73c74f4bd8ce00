"""Accuracy of a run's SavedModel, LiteRT and ONNX exports on the same test episodes of the
bundled Omniglot (the test alphabets' characters as their files hold them: raw 105x105
images in [0, 1]), and whether the three predict alike; for docs/deploy.md.

    python bin/train.py --algo=protonet --dataset=omniglot --workdir=runs/protonet
    python docs/scripts/export_accuracy.py --workdir=runs/protonet [--episodes=600] \
        [--ways=5] [--shots=1] [--set=learner.inner_steps_test=0]

Writes `<workdir>/export.tflite` and `<workdir>/export.onnx` (bin/export.py's defaults)
unless they exist, then scores `--episodes` episodes (15 queries per class) with each of
the three and prints one line per format: accuracy with its 95% interval, and how many of
the queries it labels as the SavedModel does.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tfmeta import lite  # noqa: E402
from tfmeta.data import omniglot  # noqa: E402

QUERIES_PER_CLASS = 15


def raw_test_characters() -> np.ndarray:
    """The bundled Omniglot's test alphabets as the files hold them: float32 in [0, 1],
    `[characters, 20 drawers, 105, 105, 1]`."""
    found = omniglot.find_sets(omniglot.BUNDLED_DIR)
    names, images = omniglot.read_characters([found[s] for s in omniglot.MINIMAL_SETS])
    test = [i for i, n in enumerate(names)
            if omniglot.alphabet_of(n) in omniglot.MINIMAL_SPLIT["test"]]
    return images[test].astype(np.float32) / 255.0


def episode(characters, rng, ways, shots, queries_per_class):
    """(support, labels, queries, query labels) of `ways` random characters."""
    chosen = [characters[c][rng.permutation(characters.shape[1])[:shots + queries_per_class]]
              for c in rng.choice(len(characters), ways, replace=False)]
    return (np.concatenate([c[:shots] for c in chosen]),
            np.repeat(np.arange(ways, dtype=np.int32), shots),
            np.concatenate([c[shots:] for c in chosen]),
            np.repeat(np.arange(ways), queries_per_class))


def compare(workdir, episodes, ways, shots, overrides=(), seed=0) -> dict:
    """{format: (accuracy, 95% interval, share of queries labelled as the SavedModel does)}."""
    import tensorflow as tf

    from tfmeta.training.export import export_workdir

    paths = {}
    for export_format, suffix in (("litert", ".tflite"), ("onnx", ".onnx")):
        paths[export_format] = os.path.join(workdir, "export" + suffix)
        if not os.path.isfile(paths[export_format]):
            export_workdir(workdir, export_format=export_format, overrides=tuple(overrides))
    saved = tf.saved_model.load(os.path.join(workdir, "export"))
    runtimes = {"saved_model": lambda s, y, q: saved.adapt_and_predict(
        support_images=s, support_labels=y, query_images=q)["logits"].numpy()}
    for export_format, path in paths.items():
        runtimes[export_format] = (lambda e: lambda s, y, q: e.adapt_and_predict(s, y, q)[
            "logits"])(lite.load(path))
    characters, rng = raw_test_characters(), np.random.default_rng(seed)
    scores = {name: [] for name in runtimes}
    agree = {name: 0 for name in runtimes}
    total = 0
    for _ in range(episodes):
        support, labels, queries, truth = episode(characters, rng, ways, shots,
                                                  QUERIES_PER_CLASS)
        predicted = {name: run(support, labels, queries).argmax(-1)
                     for name, run in runtimes.items()}
        total += len(truth)
        for name, labels_given in predicted.items():
            scores[name].append(np.mean(labels_given == truth))
            agree[name] += int(np.sum(labels_given == predicted["saved_model"]))
    return {name: (float(np.mean(s)), float(1.96 * np.std(s) / np.sqrt(len(s))),
                   agree[name] / total) for name, s in scores.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    results = compare(args.workdir, args.episodes, args.ways, args.shots, args.overrides)
    for name, (accuracy, ci95, agreement) in results.items():
        print(f"{name:12s} {args.ways}-way {args.shots}-shot over {args.episodes} episodes: "
              f"{100 * accuracy:.2f}% +- {100 * ci95:.2f}; labels as the SavedModel: "
              f"{100 * agreement:.2f}% of queries")


if __name__ == "__main__":
    main()

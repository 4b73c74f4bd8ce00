"""Writes a dataset as per-class TFRecord files, which training streams
(`--dataset=records`), so a dataset larger than memory trains in bounded memory.

    python bin/convert.py --dataset=folder --data_dir=photos --output_dir=records/photos \
        --set=data.image_size=84
    python bin/train.py --algo=protonet --dataset=records --data_dir=records/photos

Any registered dataset converts (folder, tfds:NAME, the benchmarks), decoded and resized
once as training would load it: `--set=data.*` sets the loader's options, with `--algo`'s
config for the dataset giving the defaults. Rerun the same command to finish an
interrupted conversion. See docs/datasets.md, "Records".
"""

import sys

from absl import flags

from tfmeta import cli
from tfmeta import config as config_lib
from tfmeta.data import load_dataset, record_writer
from tfmeta.errors import UserError

flags.DEFINE_string("dataset", None, "Dataset to convert (a name in tfmeta.data.DATASETS or "
                    "tfds:NAME).", required=True)
flags.DEFINE_string("data_dir", None, "Folder with the dataset's files (default: the bundled "
                    "data, where the dataset has some).")
flags.DEFINE_string("output_dir", None, "New folder for the records.", required=True)
flags.DEFINE_string("algo", "protonet", "Algorithm whose config for the dataset gives the "
                    "data options' defaults (image size, channels, ...).")
flags.DEFINE_multi_string("set", [], "Loader option data.key=value, e.g. "
                          "--set=data.image_size=84 (repeatable).")
flags.DEFINE_integer("threads", None, "Classes written at once (default: the CPU count).")
flags.DEFINE_integer("seed", 0, "Seed of the order of each class's records.")
flags.DEFINE_bool("download", False, "Download the official files into --data_dir if missing.")
FLAGS = flags.FLAGS


def progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\rconverting [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                     "classes")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def main(argv):
    del argv
    if FLAGS.dataset == "records":
        raise UserError("--dataset=records is already records; convert the dataset they were "
                        "written from.")
    if FLAGS.threads is not None and FLAGS.threads < 1:
        raise UserError(f"--threads={FLAGS.threads} must be at least 1.")
    others = [item for item in FLAGS.set if not item.strip().startswith("data.")]
    if others:
        raise UserError(f"--set={others[0]}: convert takes only loader options, data.KEY=VALUE.")
    config = config_lib.apply_overrides(config_lib.get_config(FLAGS.algo, FLAGS.dataset),
                                        FLAGS.set)
    dataset = load_dataset(FLAGS.dataset, FLAGS.data_dir, download=FLAGS.download,
                           **config.data)
    spec = record_writer.convert(dataset, FLAGS.output_dir, FLAGS.threads,
                                 progress if sys.stderr.isatty() else None, FLAGS.seed)
    counts = {}
    for entry in spec["classes"]:
        classes, examples = counts.get(entry["split"], (0, 0))
        counts[entry["split"]] = (classes + 1, examples + entry["count"])
    print(f"Wrote {FLAGS.output_dir}: " + ", ".join(
        f"{split} {c} classes / {n} records" for split, (c, n) in counts.items())
        + f"; train with --dataset=records --data_dir={FLAGS.output_dir}")


def run():
    """The console entry point."""
    cli.run(main, __doc__)

"""Exports a run's newest checkpoint as a SavedModel, a LiteRT model or an ONNX model.

    python bin/export.py --workdir=runs/protonet --format=litert --output=protonet.tflite
    python bin/export.py --workdir=runs/protonet --format=onnx --output=protonet.onnx
    python bin/export.py --workdir=runs/maml --format=litert --set=learner.inner_steps_test=0

Each serves `adapt_and_predict(support_images, support_labels, query_images)` on raw
images; `bin/predict.py --export=<file>` classifies folders with any of them, and
`tfmeta.lite` serves the .tflite and .onnx files without TensorFlow. A LiteRT or ONNX file
is checked against the SavedModel on random episodes before it is written. Learners that
adapt with gradient steps on the whole network are refused, with what converts instead.
LiteRT needs `pip install ".[litert]"`, ONNX `pip install ".[onnx]"`.
"""

from absl import flags

from tfmeta import cli
from tfmeta.files import disk_size
from tfmeta.training.export import export_workdir
from tfmeta.training.portable import FORMATS

flags.DEFINE_string("workdir", None, "Run folder written by bin/train.py.", required=True)
flags.DEFINE_enum("format", "saved_model", FORMATS, "What to write.")
flags.DEFINE_string("output", None, "File (or, for saved_model, folder) to write (default: "
                    "<workdir>/export, export.tflite or export.onnx).")
flags.DEFINE_string("data_dir", None, "Folder with the dataset's files (default: the data the "
                    "run was trained on, as its config.json records).")
flags.DEFINE_multi_string("set", [], "A test-time setting for this export, e.g. "
                          "--set=learner.inner_steps_test=0 or --set=learner.finetune_steps=0.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    path = export_workdir(FLAGS.workdir, FLAGS.data_dir, FLAGS.format, FLAGS.output,
                          tuple(FLAGS.set))
    print(f"wrote {FLAGS.format} export {path} ({disk_size(path) / 1024:.0f} KB)")


def run():
    """The console entry point."""
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()

"""Adapts an exported model to a folder of examples and classifies a folder of images.

    python bin/predict.py --workdir=runs/protonet --support_dir=support --query_dir=queries \
        [--output=predictions.csv]
    python bin/predict.py --export=protonet.tflite --support_dir=support --query_dir=queries

`--support_dir` holds one folder per class (the folder name is the class name) with its
few examples; `--query_dir` the images to classify (nested folders allowed). Prints a
table (and, when each query sits in a folder named like a support class, the accuracy
against those names) and, with `--output`, writes CSV `file,predicted_class,probability`.
"""


from absl import flags

from tfmeta import (
    cli,
    predict,
)

flags.DEFINE_string("workdir", None, "Run folder written by bin/train.py (its export/ is used).")
flags.DEFINE_string("export", None, "A SavedModel folder, or a .tflite or .onnx file, written "
                    "by tfmeta (instead of --workdir).")
flags.DEFINE_string("support_dir", None, "One folder of example images per class.",
                    required=True)
flags.DEFINE_string("query_dir", None, "The images to classify (nested folders allowed).",
                    required=True)
flags.DEFINE_string("output", None, "CSV file to write: file,predicted_class,probability.")
flags.DEFINE_integer("batch_size", 256, "Queries sent to the model at a time.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.output is not None:
        predict.check_output(FLAGS.output)  # before anything is loaded or scored
    export = predict.open_export(predict.export_path(FLAGS.workdir, FLAGS.export))
    predictions, class_names = predict.predict(export, FLAGS.support_dir, FLAGS.query_dir,
                                               FLAGS.batch_size)
    print(predict.format_table(predictions))
    accuracy = predict.folder_accuracy(predictions, class_names)
    if accuracy is not None:
        print(f"accuracy against the query folders' names: {100 * accuracy:.1f}% "
              f"({len(predictions)} queries)")
    if FLAGS.output is not None:
        print(f"wrote {len(predictions)} predictions to "
              f"{predict.write_csv(predictions, FLAGS.output)}")


def run():
    """The console entry point."""
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()

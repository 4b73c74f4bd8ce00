"""Adapts an exported model to a folder of examples and classifies a folder of images.

    python bin/predict.py --workdir=runs/protonet --support_dir=support --query_dir=queries \
        [--output=predictions.csv]
    python bin/predict.py --export=protonet.tflite --support_dir=support --query_dir=queries
    python bin/predict.py --workdir=runs/protonet --support_dir=support --query_dir=queries \
        --report=report.html

`--support_dir` holds one folder per class (the folder name is the class name) with its
few examples; `--query_dir` the images to classify (nested folders allowed). Prints a
table (and, when each query sits in a folder named like a support class, the accuracy
against those names) and, with `--output`, writes CSV
`file,predicted_class,probability,top_class,distance`. The probability is calibrated where
the run was (`bin/evaluate.py --calibrate`), which also calibrates the open-set threshold
that turns far queries into `unknown`. `--report` writes one self-contained HTML page: each
query's thumbnail with its class, confidence and the support examples of that class.
"""


from absl import flags

from tfmeta import (
    cli,
    heads,
    html_report,
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
flags.DEFINE_string("head", None, "The head the export must serve (own, or one of "
                    f"{heads.describe_heads()}); an export of another head is refused with "
                    "the command that exports this one.")
flags.DEFINE_bool("open_set", None, "Say unknown for queries farther from every support class "
                  "than the run's calibrated threshold (default: where it has one).")
flags.DEFINE_string("report", None, "HTML file to write: every query's thumbnail, class and "
                    "confidence beside the support examples of that class.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.output is not None:
        predict.check_output(FLAGS.output)  # before anything is loaded or scored
    if FLAGS.report is not None:
        html_report.check_report_path(FLAGS.report)
    export = predict.open_export(predict.export_path(FLAGS.workdir, FLAGS.export))
    predict.check_head(export, FLAGS.head, FLAGS.workdir)
    open_set = predict.check_open_set(export, FLAGS.open_set)
    scored = predict.predict(export, FLAGS.support_dir, FLAGS.query_dir, FLAGS.batch_size,
                             open_set, keep_images=FLAGS.report is not None)
    predictions, class_names = scored[:2]
    print(predict.format_table(predictions))
    accuracy = predict.folder_accuracy(predictions, class_names, open_set)
    if accuracy is not None:
        print(f"accuracy against the query folders' names: {100 * accuracy:.1f}% "
              f"({len(predictions)} queries)")
    if FLAGS.report is not None:
        written = predict.write_report(FLAGS.report, export, predictions, scored[2])
        print(f"wrote the report {written}")
    if FLAGS.output is not None:
        print(f"wrote {len(predictions)} predictions to "
              f"{predict.write_csv(predictions, FLAGS.output)}")


def run():
    """The console entry point."""
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()

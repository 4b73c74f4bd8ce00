"""Reruns the documented results and rewrites docs/results.md and the README's table.

    python bin/report.py                       # every entry of tfmeta/report.py
    python bin/report.py --only=maml,protonet  # some; the others keep their measurement
    python bin/report.py --list                # the entries and their commands
"""

import os

from absl import flags

from tfmeta import cli, report

flags.DEFINE_list("only", None, "Entries to rerun (default: all).")
flags.DEFINE_string("runs_dir", "runs/report", "Where the runs' workdirs go (repository-relative).")
flags.DEFINE_bool("list", False, "Print the entries and their commands, run nothing.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not os.path.isfile(os.path.join(report.ROOT, "bin", "train.py")):
        raise FileNotFoundError(
            f"tfmeta-report reruns the documented results of a source checkout and rewrites "
            f"its README and docs/results.md, but {report.ROOT} is an installed package; run "
            "it in a clone of the repository (pip install -e .).")
    if FLAGS.list:
        for entry in report.ENTRIES:
            print(f"{entry.name}: {entry.command_line(FLAGS.runs_dir)}")
        return
    report.report(FLAGS.only, FLAGS.runs_dir, log=lambda line: print(line, flush=True))


def run():
    """The console entry point."""
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()

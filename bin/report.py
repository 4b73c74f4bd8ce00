"""Reruns the documented results and rewrites docs/results.md and the README's table.

    python bin/report.py                       # every entry of tfmeta/report.py
    python bin/report.py --only=maml,protonet  # some; the others keep their measurement
    python bin/report.py --list                # the entries and their commands
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from tfmeta import cli, report  # noqa: E402

flags.DEFINE_list("only", None, "Entries to rerun (default: all).")
flags.DEFINE_string("runs_dir", "runs/report", "Where the runs' workdirs go (repository-relative).")
flags.DEFINE_bool("list", False, "Print the entries and their commands, run nothing.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.list:
        for entry in report.ENTRIES:
            print(f"{entry.name}: {entry.command_line(entry.workdir(FLAGS.runs_dir))}")
        return
    report.report(FLAGS.only, FLAGS.runs_dir, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    cli.run(main)

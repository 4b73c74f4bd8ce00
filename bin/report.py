"""Reruns the documented results and rewrites docs/results.md and the README's table.

    python bin/report.py                       # every entry of tfmeta/report.py
    python bin/report.py --only=maml,protonet  # some; the others keep their measurement
    python bin/report.py --list                # the entries and their commands
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.commands.report import run  # noqa: E402

if __name__ == "__main__":
    run()

"""Reruns the documented results.

The tool is `tfmeta.commands.report` (the console command `tfmeta-report`); `--help`
says how to use it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.commands.report import run  # noqa: E402

if __name__ == "__main__":
    run()

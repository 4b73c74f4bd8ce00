"""Evaluates a run on meta-test episodes.

The tool is `tfmeta.commands.evaluate` (the console command `tfmeta-evaluate`); `--help`
says how to use it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.commands.evaluate import run  # noqa: E402

if __name__ == "__main__":
    run()

"""Writes a dataset as per-class records (--dataset=records streams them).

The tool is `tfmeta.commands.convert` (the console command `tfmeta-convert`); `--help`
says how to use it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.commands.convert import run  # noqa: E402

if __name__ == "__main__":
    run()

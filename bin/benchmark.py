"""Measures tfmeta's speed.

The tool is `tfmeta.commands.benchmark` (the console command `tfmeta-benchmark`); `--help`
says how to use it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.commands.benchmark import run  # noqa: E402

if __name__ == "__main__":
    run()

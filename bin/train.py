"""Meta-trains a learner, then exports it.

The tool is `tfmeta.commands.train` (the console command `tfmeta-train`); `--help`
says how to use it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.commands.train import run  # noqa: E402

if __name__ == "__main__":
    run()

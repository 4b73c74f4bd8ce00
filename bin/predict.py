"""Adapts an export to a folder of examples and classifies a folder of images.

The tool is `tfmeta.commands.predict` (the console command `tfmeta-predict`); `--help`
says how to use it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.commands.predict import run  # noqa: E402

if __name__ == "__main__":
    run()

"""Exports a run as a SavedModel, a LiteRT model or an ONNX model.

The tool is `tfmeta.commands.export` (the console command `tfmeta-export`); `--help`
says how to use it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.commands.export import run  # noqa: E402

if __name__ == "__main__":
    run()

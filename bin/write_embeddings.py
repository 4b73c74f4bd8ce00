"""Writes LEO-format embeddings with a run's backbone.

The tool is `tfmeta.commands.embed` (the console command `tfmeta-embed`); `--help`
says how to use it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.commands.embed import run  # noqa: E402

if __name__ == "__main__":
    run()

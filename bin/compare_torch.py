"""tfmeta's MAML meta-step against a PyTorch peer, alternated in one process.

The tool is `tfmeta.benchmarking.torch_peer`; `--help` says how to use it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.benchmarking.torch_peer import run  # noqa: E402

if __name__ == "__main__":
    run()

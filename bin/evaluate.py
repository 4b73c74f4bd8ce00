"""Evaluates a run's newest checkpoint on meta-test episodes; writes <workdir>/eval.json.

    python bin/evaluate.py --workdir=runs/maml [--episodes=600] [--split=test]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.commands.evaluate import run  # noqa: E402

if __name__ == "__main__":
    run()

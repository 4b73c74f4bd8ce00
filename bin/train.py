"""Meta-trains a learner, then exports it.

    python bin/train.py --algo=maml --dataset=omniglot --workdir=runs/maml \
        --num_steps=1000 --set=learner.inner_steps=1 --set=meta_batch_size=16

Rerunning the same command resumes from the workdir's last checkpoint.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.commands.train import run  # noqa: E402

if __name__ == "__main__":
    run()

"""Writes LEO-format embeddings of a dataset with the backbone of a trained run.

    python bin/train.py --algo=maml --dataset=omniglot --workdir=runs/maml
    python bin/write_embeddings.py --workdir=runs/maml --output_dir=embeddings --name=Omniglot
    python bin/train.py --algo=leo --dataset=embeddings --data_dir=embeddings --workdir=runs/leo

Writes <output_dir>/<name>/{center,multiview}/{train,val,test}_embeddings.pkl (and .npz);
`--crops=center` for the center files only. A supervised pre-training run
(`--algo=pretrain`) gives LEO the kind of backbone its paper used:

    python bin/train.py --algo=pretrain --dataset=omniglot --workdir=runs/pretrain
    python bin/write_embeddings.py --workdir=runs/pretrain --output_dir=embeddings
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.commands.embed import run  # noqa: E402

if __name__ == "__main__":
    run()

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


from absl import flags

from tfmeta import cli, embeddings

flags.DEFINE_string("workdir", None, "A run written by bin/train.py.", required=True)
flags.DEFINE_string("output_dir", None, "Where to write <name>/center/*.pkl.", required=True)
flags.DEFINE_string("name", None, "Folder name of the embeddings (default: the run's dataset).")
flags.DEFINE_string("data_dir", None, "The dataset's files (default: the data the run was "
                    "trained on).")
flags.DEFINE_enum("recalibrate_batch_norm", "auto", ["auto", "yes", "no"],
                  "Recompute batch-norm statistics on the training split first "
                  "(auto: for runs trained with batch statistics only).")
flags.DEFINE_string("layer", None, "Backbone layer whose output is the embedding, e.g. "
                    "block4_relu (default: the input of the classification head).")
flags.DEFINE_integer("batch_size", 256, "Examples per forward pass.")
flags.DEFINE_list("crops", ["center", "multiview"], "Which LEO files to write: center (each "
                  "example as it is) and/or multiview (the mean of ten shifted and flipped "
                  "views; see tfmeta/embeddings.py).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    recalibrate = {"auto": None, "yes": True, "no": False}[FLAGS.recalibrate_batch_norm]
    paths = embeddings.write_workdir_embeddings(FLAGS.workdir, FLAGS.output_dir, FLAGS.name,
                                                FLAGS.data_dir, recalibrate, FLAGS.batch_size,
                                                FLAGS.layer, FLAGS.crops)
    for split, path in paths.items():
        print(f"{split}: {path}")


def run():
    """The console entry point."""
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()

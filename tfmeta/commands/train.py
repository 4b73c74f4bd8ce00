"""Meta-trains a learner, then exports it.

    python bin/train.py --algo=maml --dataset=omniglot --workdir=runs/maml \
        --num_steps=1000 --set=learner.inner_steps=1 --set=meta_batch_size=16

Rerunning the same command resumes from the workdir's last checkpoint.
"""

import os
import sys

from absl import flags, logging

from tfmeta import cli
from tfmeta import config as config_lib
from tfmeta.errors import UserError
from tfmeta.training import trainer
from tfmeta.training.strategy import STRATEGIES

flags.DEFINE_string("algo", "maml", "Algorithm (a name in tfmeta.algorithms.ALGORITHMS).")
flags.DEFINE_string("dataset", "omniglot", "Dataset (a name in tfmeta.data.DATASETS).")
flags.DEFINE_string("setting", None, "N-way K-shot setting such as 5w1s (the config's default).")
flags.DEFINE_string("workdir", None, "Run folder: config, checkpoints, logs, export.")
flags.DEFINE_string("data_dir", None, "Folder with the dataset's official files "
                    "(default: the bundled data, where the dataset has some).")
flags.DEFINE_bool("download", False, "Download the official files into --data_dir if missing.")
flags.DEFINE_integer("num_steps", None, "Meta-training steps (overrides the config).")
flags.DEFINE_enum("strategy", None, list(STRATEGIES), "tf.distribute strategy: mirrored uses "
                  "this machine's GPUs; multi_worker the machines TF_CONFIG lists (run the same "
                  "command on each; see docs/distributed.md); tpu the TPU TPU_NAME names.")
flags.DEFINE_multi_string("set", [], "Config override key=value, e.g. --set=ways=20 "
                          "--set=learner.inner_lr=0.1 (repeatable).")
flags.DEFINE_bool("export", True, "Export a SavedModel to <workdir>/export after training.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    config = config_lib.get_config(FLAGS.algo, FLAGS.dataset, FLAGS.setting)
    overrides = list(FLAGS.set)
    if FLAGS.num_steps is not None:
        overrides.append(f"num_steps={FLAGS.num_steps}")
    if FLAGS.strategy is not None:
        overrides.append(f"strategy='{FLAGS.strategy}'")
    config = config_lib.apply_overrides(config, overrides)
    if FLAGS.workdir is not None and not FLAGS.workdir.strip():
        raise UserError("--workdir is empty; give the run's folder, e.g. --workdir=runs/x "
                        "(leave the flag out for runs/<algo>_<dataset>).")
    workdir = FLAGS.workdir or os.path.join("runs", f"{FLAGS.algo}_{FLAGS.dataset}".replace(
        ":", "_"))
    verbose = 1 if sys.stdout.isatty() else 2  # a bar on a terminal, one line per epoch in logs
    trainer.train(config, workdir, FLAGS.data_dir, download=FLAGS.download, verbose=verbose,
                  export=FLAGS.export)


def run():
    """The console entry point."""
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()

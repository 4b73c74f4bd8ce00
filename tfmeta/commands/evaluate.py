"""Evaluates a run's newest checkpoint on meta-test episodes; writes <workdir>/eval.json.

    python bin/evaluate.py --workdir=runs/maml [--episodes=600] [--split=test]
"""

import json

from absl import flags

from tfmeta import cli
from tfmeta.ranges import EVAL_EPISODES
from tfmeta.training import evaluation

flags.DEFINE_string("workdir", None, "Run folder written by bin/train.py.", required=True)
flags.DEFINE_string("data_dir", None, "Folder with the dataset's files (default: the data the "
                    "run was trained on, as its config.json records).")
flags.DEFINE_string("split", "test", "Split to evaluate on.")
flags.DEFINE_integer("episodes", None, f"Number of episodes, {EVAL_EPISODES.describe()} "
                     "(default: config.eval_episodes).")
flags.DEFINE_integer("ways", None, "N of the test episodes (default: the config's).")
flags.DEFINE_integer("shots", None, "K of the test episodes (default: the config's).")
flags.DEFINE_integer("seed", 1234, "Seed of the test episodes.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    result = evaluation.evaluate_workdir(FLAGS.workdir, FLAGS.data_dir, FLAGS.split,
                                         FLAGS.episodes, FLAGS.ways, FLAGS.shots, FLAGS.seed)
    if "accuracy" in result:
        setting = (f"{result['ways']}-way {result['shots']}-shot" if result.get("ways") else
                   f"{result.get('sampler', 'variable')}-episode")
        print(f"{result['algo']} on {result['dataset']} {result['split']}: {setting} accuracy "
              f"{100 * result['accuracy']:.2f}% +- {100 * result['ci95']:.2f}% (95% CI, "
              f"{result['episodes']} episodes)")
    if "drawn" in result:
        print("drawn per episode: " + "; ".join(
            f"{name} {d['min']}-{d['max']} (mean {d['mean']:.1f})"
            for name, d in result["drawn"].items()) + " (shots and queries per class)")
    print(json.dumps(result))


def run():
    """The console entry point."""
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()

"""Evaluates a run's newest checkpoint on meta-test episodes; writes <workdir>/eval.json.

    python bin/evaluate.py --workdir=runs/maml [--episodes=600] [--split=test] [--within_group]
    python bin/evaluate.py --workdir=runs/proto --finetune_steps=50 --select_finetune_lr
"""

import json

from absl import flags

from tfmeta import cli
from tfmeta.algorithms.finetune import LEARNING_RATE_GRID
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
flags.DEFINE_bool("within_group", False, "Draw each test episode's classes within one group "
                  "of classes (Omniglot's alphabets; --dataset=folder with data.class_depth=2).")
flags.DEFINE_integer("finetune_steps", None, "Fine-tune the backbone this many steps on each "
                     "test episode's support set (P>M>F; protonet, matching, relation, siamese, "
                     "pretrain), for this evaluation (default: the run's learner.finetune_steps).")
flags.DEFINE_float("finetune_lr", None, "Learning rate of that fine-tuning, for this evaluation "
                   "(default: the run's learner.finetune_lr).")
flags.DEFINE_bool("select_finetune_lr", False, "Choose the fine-tuning learning rate from "
                  f"{list(LEARNING_RATE_GRID)} (0: none) on --select_episodes episodes of the "
                  "val split, record it in the run's config.json (and its export), then "
                  "evaluate with it.")
flags.DEFINE_integer("select_episodes", evaluation.SELECT_EPISODES, "Validation episodes per "
                     "candidate learning rate of --select_finetune_lr.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    result = evaluation.evaluate_workdir(FLAGS.workdir, FLAGS.data_dir, FLAGS.split,
                                         FLAGS.episodes, FLAGS.ways, FLAGS.shots, FLAGS.seed,
                                         within_group=FLAGS.within_group,
                                         finetune_steps=FLAGS.finetune_steps,
                                         finetune_lr=FLAGS.finetune_lr,
                                         select_finetune_lr=FLAGS.select_finetune_lr,
                                         select_episodes=FLAGS.select_episodes)
    if "finetune_selection" in result:
        selection = result["finetune_selection"]
        print(f"finetune_lr on {selection['episodes']} {selection['split']} episodes: " + "; ".join(
            f"{c['finetune_lr']:g}: {100 * c['accuracy']:.2f}%" for c in selection["candidates"])
            + f"; chosen {selection['chosen']:g} (recorded in config.json)")
    if "accuracy" in result:
        setting = (f"{result['ways']}-way {result['shots']}-shot" if result.get("ways") else
                   f"{result.get('sampler', 'variable')}-episode")
        if result.get("grouping") == "within":
            setting += " within one group"
        print(f"{result['algo']} on {result['dataset']} {result['split']}: {setting} accuracy "
              f"{100 * result['accuracy']:.2f}% +- {100 * result['ci95']:.2f}% (95% CI, "
              f"{result['episodes']} episodes)"
              + (f", backbone fine-tuned {result['finetune_steps']} steps at lr "
                 f"{result['finetune_lr']:g}" if result.get("finetune_steps")
                 and result.get("finetune_lr") else ""))
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

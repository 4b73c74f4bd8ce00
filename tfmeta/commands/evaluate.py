"""Evaluates a run's newest checkpoint on meta-test episodes; writes <workdir>/eval.json.

    python bin/evaluate.py --workdir=runs/maml [--episodes=600] [--split=test] [--within_group]
    python bin/evaluate.py --workdir=runs/proto --finetune_steps=50 --select_finetune_lr
    python bin/evaluate.py --workdir=runs/proto --head=simpleshot --query_balance=dirichlet:2
    python bin/evaluate.py --workdir=runs/proto --calibrate --open_set
"""

import json

from absl import flags

from tfmeta import calibration, cli, heads
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
flags.DEFINE_integer("queries", None, "Queries per class of the test episodes (default: the "
                     "config's eval_queries, else queries); with --query_balance, on average.")
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
flags.DEFINE_string("head", None, "How support features classify the queries, for this "
                    "evaluation (with --calibrate, recorded): own (the learner's rule, the "
                    f"default), {heads.describe_heads()}.")
flags.DEFINE_string("query_balance", None, "balanced (every class --queries queries) or "
                    "dirichlet:A: each episode's queries split over its classes by a "
                    "Dirichlet(A) draw (Veilleux et al. 2021 use A=2).")
flags.DEFINE_bool("open_set", False, "Add as many query classes outside the support set and "
                  "measure the \"none of these\" distance: AUROC, and at the calibrated "
                  "threshold the known queries kept and the unknown ones rejected.")
flags.DEFINE_bool("calibrate", False, "First fit the temperature of the probabilities and the "
                  "open-set threshold on --calibration_episodes val episodes; record them in "
                  "config.json and the export.")
flags.DEFINE_integer("calibration_episodes", evaluation.CALIBRATION_EPISODES,
                     "Val episodes --calibrate fits on.")
flags.DEFINE_float("open_set_keep", calibration.DEFAULT_KEEP, "The share of val queries of "
                   "support classes the calibrated threshold keeps.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    result = evaluation.evaluate_workdir(FLAGS.workdir, FLAGS.data_dir, FLAGS.split,
                                         FLAGS.episodes, FLAGS.ways, FLAGS.shots, FLAGS.seed,
                                         within_group=FLAGS.within_group,
                                         finetune_steps=FLAGS.finetune_steps,
                                         finetune_lr=FLAGS.finetune_lr,
                                         select_finetune_lr=FLAGS.select_finetune_lr,
                                         select_episodes=FLAGS.select_episodes,
                                         head=FLAGS.head, query_balance=FLAGS.query_balance,
                                         open_set=FLAGS.open_set, calibrate=FLAGS.calibrate,
                                         calibration_episodes=FLAGS.calibration_episodes,
                                         open_set_keep=FLAGS.open_set_keep,
                                         queries=FLAGS.queries)
    if "calibration" in result:
        c = result["calibration"]
        print(f"calibrated on {c['episodes']} {c['split']} episodes ({c['head']} head): "
              f"temperature {c['temperature']:.3g} (val NLL {c['nll_before']:.3f} -> "
              f"{c['nll_after']:.3f})" + (f", open-set threshold {c['open_set_threshold']:.4g}"
                                          f" keeping {100 * c['open_set_keep']:g}% of val "
                                          "queries" if c["open_set_threshold"] is not None
                                          else "") + " (recorded in config.json)")
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
    if "ece" in result:
        print(f"{result['head']} head{' (transductive)' if result['transductive'] else ''}"
              f"{', ' + result['query_balance'] + ' queries' if 'query_balance' in result else ''}"
              f": expected calibration error {100 * result['ece']:.2f}%"
              + (f", {100 * result['ece_calibrated']:.2f}% at temperature "
                 f"{result['temperature']:.3g}" if "ece_calibrated" in result else ""))
    if "open_set" in result:
        o = result["open_set"]
        print(f"open set: AUROC {100 * o['auroc']:.2f}% ({o['known_queries']} known, "
              f"{o['unknown_queries']} unknown queries)" + (
                  f"; at threshold {o['threshold']:.4g}: {100 * o['known_kept']:.1f}% of known "
                  f"kept, known accuracy {100 * o['known_accuracy']:.2f}%, "
                  f"{100 * o['unknown_rejected']:.1f}% of unknown rejected"
                  if o["threshold"] is not None else "; no calibrated threshold (--calibrate)"))
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

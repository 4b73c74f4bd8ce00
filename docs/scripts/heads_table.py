"""Regenerates the tables of docs/heads.md:

    python docs/scripts/heads_table.py [--episodes=200] [--runs=protonet,pretrain]

Trains (once; a finished run is reused) ProtoNet and supervised pre-training (`pretrain`, the
backbone pre-trained on the training classes, then used as it is) on the bundled Omniglot
with the CLI, then scores every head of `tfmeta.heads` on the test alphabets' characters:
5-way and 20-way, 1-shot and 5-shot, 5 queries a class on average, balanced and with
Dirichlet(2) query sets (Veilleux et al. 2021), each over the same `--episodes` episodes
with its 95% interval. Then, per run, the calibration (`bin/evaluate.py --calibrate` on 200
val episodes: the temperature, the ECE on the test episodes before and after) and the
open set (queries of 5 more classes: AUROC, and at the threshold that keeps 95% of the val
queries, the known queries kept and the unknown rejected), 5-way 1-shot.

Writes the tables between the markers of docs/heads.md and prints them.
"""
import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from tfmeta import heads  # noqa: E402
from tfmeta.data import EpisodeShape  # noqa: E402
from tfmeta.evaluation import Protocol  # noqa: E402
from tfmeta.training import evaluation  # noqa: E402
from tfmeta.training.features import train_feature_mean  # noqa: E402
from tfmeta.training.run import open_run  # noqa: E402

RUNS = {
    # ProtoNet's paper config (60-way training), cut to 350 steps of 1 query a class
    # (tests/test_metric_integration.py's budget), on the training characters only: the
    # val characters stay unseen, for calibration.
    "protonet": ["--algo=protonet", "--num_steps=350", "--set=queries=1",
                 "--set=data.train_on_val=False",
                 "--set=optimizer.learning_rate=0.003", "--set=optimizer.decay_steps=245",
                 "--set=val_episodes=20", "--set=checkpoint_every=100000"],
    # Supervised pre-training over the 161 training characters (docs/pretrain.md).
    "pretrain": ["--algo=pretrain", "--num_steps=1000", "--set=val_episodes=20",
                 "--set=checkpoint_every=100000"],
}
SETTINGS = [(5, 1), (5, 5), (20, 1), (20, 5)]
QUERIES = 5
ALPHA = 2.0
# The heads whose calibration and open set the last table shows (one per kind of rule).
CALIBRATED_HEADS = ("prototypes", "simpleshot", "bd_cspn")
BEGIN, END = "<!-- heads:begin (docs/scripts/heads_table.py) -->", "<!-- heads:end -->"


def train(name: str) -> str:
    workdir = os.path.join(ROOT, "runs", f"heads_{name}")
    if not os.path.isdir(os.path.join(workdir, "export")):
        subprocess.run([sys.executable, os.path.join(ROOT, "bin", "train.py"),
                        "--dataset=omniglot", f"--workdir={workdir}", *RUNS[name]], check=True)
    return workdir


def cell(result: dict) -> str:
    return f"{100 * result['accuracy']:.1f} ± {100 * result['ci95']:.1f}"


def head_rows(workdir: str, episodes: int) -> list:
    """A row per head, a cell per setting; each cell is kept in `<workdir>/heads_table.json`
    as it is measured, so a rerun with the same --episodes measures only what is missing."""
    cache_path = os.path.join(workdir, "heads_table.json")
    cache = {}
    if os.path.isfile(cache_path):
        with open(cache_path) as f:
            cache = json.load(f)
    run = open_run(workdir)
    learner = run.learner
    learner.feature_mean = train_feature_mean(learner, run.dataset)
    rows = []
    for head in heads.HEADS:
        learner.test_head = head  # read when meta_test traces the learner's test_outputs
        row = [f"{head}{' (T)' if heads.HEADS[head].transductive else ''}"]
        for ways, shots in SETTINGS:
            spec = dataclasses.replace(run.spec, test=EpisodeShape(ways, shots, QUERIES))
            for alpha in (None, ALPHA):
                key = f"{head} {ways}w{shots}s {'dirichlet' if alpha else 'balanced'} {episodes}"
                if key not in cache:
                    start = time.time()
                    result = learner.meta_test(run.dataset, spec, "test", episodes, seed=2026,
                                               protocol=Protocol(query_balance=alpha))
                    cache[key] = cell(result)
                    print(f"{key}: {cache[key]} ({time.time() - start:.0f} s)", flush=True)
                    with open(cache_path, "w") as f:
                        json.dump(cache, f, indent=1)
                row.append(cache[key])
        rows.append(row)
    return rows


def calibration_rows(workdir: str, name: str, episodes: int) -> list:
    rows = []
    for head in CALIBRATED_HEADS:
        result = evaluation.evaluate_workdir(
            workdir, num_episodes=episodes, ways=5, shots=1, queries=QUERIES, head=head,
            calibrate=True, calibration_episodes=200, open_set=True)
        c, o = result["calibration"], result["open_set"]
        rows.append([name, head, f"{c['temperature']:.3g}", f"{100 * result['ece']:.1f}",
                     f"{100 * result['ece_calibrated']:.1f}" if "ece_calibrated" in result
                     else f"{100 * result['ece']:.1f}",
                     f"{100 * o['auroc']:.1f}", f"{100 * o['known_kept']:.1f}",
                     f"{100 * o['unknown_rejected']:.1f}", f"{100 * o['known_accuracy']:.1f}"])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--runs", default="protonet,pretrain")
    args = parser.parse_args()
    header = ["head"] + [f"{w}w{s}s {b}" for w, s in SETTINGS for b in ("bal.", "Dir.")]
    sections, calibrated = [], []
    for name in args.runs.split(","):
        workdir = train(name)
        sections.append(f"**{name}** (`runs/heads_{name}`), accuracy % ± 95% interval, "
                        f"{args.episodes} test episodes each, {QUERIES} queries a class on "
                        f"average; (T): transductive; Dir.: Dirichlet({ALPHA:g}) query "
                        f"sets\n\n" + table(header, head_rows(workdir, args.episodes)))
        calibrated += calibration_rows(workdir, name, args.episodes)
    sections.append("Calibration and the open set, 5-way 1-shot (temperature and threshold "
                    "fitted on 200 val episodes; ECE and the open set on the test episodes, "
                    "5 unknown classes' queries beside the 5 known):\n\n" + table(
                        ["run", "head", "T", "ECE %", "ECE at T %", "AUROC %",
                         "known kept %", "unknown rejected %", "known accuracy %"],
                        calibrated))
    text = "\n\n".join(sections)
    print(text)
    path = os.path.join(ROOT, "docs", "heads.md")
    with open(path) as f:
        doc = f.read()
    doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END),
                 lambda _: f"{BEGIN}\n{text}\n{END}", doc, flags=re.S)
    with open(path, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    main()

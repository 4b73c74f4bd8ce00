"""The results tfmeta documents, and the commands that produce them.

Every accuracy in the README and `docs/results.md` is one `Entry` here: a `bin/train.py`
command at a stated size, then `bin/evaluate.py` on the run. `bin/report.py` reruns the
entries, keeps what they measured in `docs/results.json`, and rewrites `docs/results.md`
and the README's results table from it, with the command beside every number:

    python bin/report.py                      # every entry (about an hour on 2 CPU cores)
    python bin/report.py --only=maml,protonet # some; the others keep their last measurement

The commands are exactly what a user types; nothing here trains in-process.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time

from tfmeta.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_JSON = os.path.join("docs", "results.json")
RESULTS_MD = os.path.join("docs", "results.md")
README = "README.md"
BEGIN, END = "<!-- results:begin (bin/report.py) -->", "<!-- results:end -->"

# The CI-sized shrink of issue 6's learners: 14x14 images, a 3-block Conv4 of 16 filters.
SMALL = ["--set=data.image_size=14", "--set=model.filters=16", "--set=model.num_blocks=3",
         "--set=meta_batch_size=8", "--set=val_episodes=20"]


# The P>M>F rows' ProtoNet: the protonet row's settings, the validation alphabet held out.
PMF_PROTONET = ("--set=queries=1", "--set=optimizer.learning_rate=0.003",
                "--set=optimizer.decay_steps=350", "--set=val_episodes=20",
                "--set=data.train_on_val=False")
WITHIN_20 = ("--within_group", "--ways=20")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One documented result: `bin/train.py <train>` then `bin/evaluate.py <evaluate>`."""

    name: str
    algo: str
    description: str
    train: tuple
    evaluate: tuple = ()
    steps: int = 0  # for the table; the command's --num_steps
    reuse: str | None = None  # evaluate that entry's run instead of training again
    init_from: str | None = None  # an earlier entry whose run's backbone this one starts from

    def workdir(self, runs_dir: str) -> str:
        return os.path.join(runs_dir, self.reuse or self.name)

    def commands(self, runs_dir: str) -> list:
        workdir = self.workdir(runs_dir)
        evaluate = ["python", "bin/evaluate.py", f"--workdir={workdir}", *self.evaluate]
        if self.reuse:
            return [evaluate]
        start = ([f"--set=model.init_from={os.path.join(runs_dir, self.init_from)}"]
                 if self.init_from else [])
        return [["python", "bin/train.py", f"--algo={self.algo}", f"--workdir={workdir}",
                 *self.train, *start], evaluate]

    def command_line(self, runs_dir: str) -> str:
        return " && ".join(shlex.join(c) for c in self.commands(runs_dir))


def _entry(name, algo, description, steps, *flags, evaluate=(), dataset="omniglot", reuse=None,
           init_from=None):
    return Entry(name, algo, description,
                 (f"--dataset={dataset}", f"--num_steps={steps}", *flags), tuple(evaluate), steps,
                 reuse, init_from)


ENTRIES = [
    _entry("maml", "maml", "MAML, second order, the paper's Omniglot settings (README quick "
           "start)", 500),
    _entry("fomaml", "maml", "first-order MAML, same settings", 500,
           "--set=learner.first_order=True"),
    _entry("metasgd", "metasgd", "Meta-SGD, shrunk (14x14, 16 filters, 3 blocks)", 150,
           *SMALL, "--set=queries=5", "--set=learner.inner_steps_test=1",
           "--set=optimizer.learning_rate=0.003"),
    _entry("anil", "anil", "ANIL, shrunk", 150, *SMALL, "--set=queries=5",
           "--set=optimizer.learning_rate=0.003"),
    _entry("lstm_meta", "lstm_meta", "LSTM meta-learner, shrunk", 150, *SMALL, "--set=queries=5",
           "--set=learner.inner_steps=3", "--set=learner.inner_steps_test=3",
           "--set=optimizer.learning_rate=0.003"),
    _entry("metanet", "metanet", "MetaNet, shrunk", 150, *SMALL, "--set=queries=5",
           "--set=optimizer.learning_rate=0.002"),
    _entry("mann", "mann", "MANN at the paper's sizes but 14x14 pixels (50-step sequences, 16 "
           "per update)", 1000, "--set=data.image_size=14", "--set=meta_batch_size=16",
           "--set=optimizer.learning_rate=0.003", "--set=val_episodes=20"),
    _entry("reptile", "reptile", "Reptile, the paper's Omniglot settings (inner Adam 1e-3)",
           400, "--set=data.image_size=14", "--set=model.filters=32",
           "--set=model.num_blocks=3", "--set=learner.anneal_steps=400"),
    _entry("reptile_sgd", "reptile", "Reptile with the paper's SGD inner loop (rate 0.1)", 400,
           "--set=data.image_size=14", "--set=model.filters=32", "--set=model.num_blocks=3",
           "--set=learner.anneal_steps=400", "--set=learner.inner_optimizer=sgd",
           "--set=learner.inner_lr=0.1"),
    _entry("protonet", "protonet", "Prototypical Networks, the paper's config (60-way "
           "training, train+val characters, augmentation), shortened", 500, "--set=queries=1",
           "--set=optimizer.learning_rate=0.003", "--set=optimizer.decay_steps=350",
           "--set=val_episodes=20"),
    _entry("protonet_20way", "protonet", "the protonet run, evaluated 20-way 1-shot", 500,
           evaluate=["--ways=20"], reuse="protonet"),
    # P>M>F on the bundled Omniglot (issue 31, docs/pretrained.md): ProtoNet from scratch,
    # pre-training alone, ProtoNet from the pre-trained backbone, and that with test-time
    # fine-tuning (its rate chosen on the validation alphabet); each on the test alphabets
    # 5-way 1-shot and 20-way 1-shot within one alphabet (Sanskrit: the one test alphabet
    # with 20 characters). Validation is held out (train_on_val=False) for the choice.
    _entry("pmf_scratch", "protonet", "P>M>F stage M alone: ProtoNet from scratch, the "
           "protonet row's settings without training on the validation alphabet", 500,
           *PMF_PROTONET),
    _entry("pmf_scratch_20way_within", "protonet", "the pmf_scratch run, 20-way within one "
           "alphabet", 500, evaluate=WITHIN_20, reuse="pmf_scratch"),
    _entry("pmf_pretrain", "pretrain", "P>M>F stage P alone: supervised pre-training (Conv4, "
           "all 644 training classes), nearest-centroid episodes", 2000, "--set=val_episodes=20"),
    _entry("pmf_pretrain_20way_within", "pretrain", "the pmf_pretrain run, 20-way within one "
           "alphabet", 2000, evaluate=WITHIN_20, reuse="pmf_pretrain"),
    _entry("pmf_protonet", "protonet", "P>M: ProtoNet from the pmf_pretrain backbone", 500,
           *PMF_PROTONET, evaluate=["--finetune_steps=0"], init_from="pmf_pretrain"),
    _entry("pmf_protonet_20way_within", "protonet", "the pmf_protonet run, 20-way within one "
           "alphabet", 500, evaluate=[*WITHIN_20, "--finetune_steps=0"], reuse="pmf_protonet"),
    _entry("pmf_protonet_gentle", "protonet", "P>M with the rate lowered as for a pretrained "
           "backbone: ProtoNet from pmf_pretrain at 3e-4, no decay", 500,
           *PMF_PROTONET[:1], "--set=optimizer.learning_rate=0.0003", *PMF_PROTONET[3:],
           evaluate=["--finetune_steps=0"], init_from="pmf_pretrain"),
    _entry("pmf_protonet_gentle_20way_within", "protonet", "the pmf_protonet_gentle run, "
           "20-way within one alphabet", 500, evaluate=[*WITHIN_20, "--finetune_steps=0"],
           reuse="pmf_protonet_gentle"),
    _entry("pmf_finetune", "protonet", "P>M>F: the pmf_protonet run fine-tuned on each test "
           "episode's support set (20 steps, Adam, the rate chosen on 50 validation episodes)",
           500, evaluate=["--finetune_steps=20", "--select_finetune_lr"], reuse="pmf_protonet"),
    _entry("pmf_finetune_20way_within", "protonet", "the pmf_finetune setting, 20-way within "
           "one alphabet", 500, evaluate=WITHIN_20, reuse="pmf_protonet"),
    _entry("matching", "matching", "Matching Networks", 200, "--set=meta_batch_size=4",
           "--set=val_episodes=20"),
    _entry("relation", "relation", "Relation Networks, 32 filters", 300, "--set=queries=5",
           "--set=model.filters=32", "--set=learner.relation_filters=32",
           "--set=val_episodes=20"),
    _entry("siamese", "siamese", "Siamese Networks, 512-unit twin", 200,
           "--set=meta_batch_size=4", "--set=model.units=512", "--set=val_episodes=20"),
]


def entry_names() -> list:
    return [e.name for e in ENTRIES]


def run_entry(entry: Entry, runs_dir: str, log=print) -> dict:
    """Runs an entry's commands from the repository root in a fresh workdir; returns the
    measurement (eval.json plus the command, wall time and when)."""
    workdir = entry.workdir(runs_dir)
    if not entry.reuse:
        shutil.rmtree(os.path.join(ROOT, workdir), ignore_errors=True)
    start = time.time()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for command in entry.commands(runs_dir):
        log(f"$ {shlex.join(command)}")
        proc = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{entry.name}: {shlex.join(command)} failed (exit "
                               f"{proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(os.path.join(ROOT, workdir, "eval.json")) as f:
        result = json.load(f)
    return {"result": result, "command": entry.command_line(runs_dir),
            "wall_time_s": round(time.time() - start), "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"}


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def summary(measured: dict) -> str:
    result = measured["result"]
    text = f"{percent(result['accuracy'])} ± {100 * result['ci95']:.1f}"
    within = " within one alphabet" if result.get("grouping") == "within" else ""
    tuned = (f", fine-tuned {result['finetune_steps']} steps at lr {result['finetune_lr']:g}"
             if result.get("finetune_steps") and result.get("finetune_lr") else "")
    return text + (f" ({result['ways']}-way {result['shots']}-shot{within}, "
                   f"{result['episodes']} episodes{tuned})")


def readme_table(measurements: dict) -> str:
    lines = ["| result | `--algo` | what | held-out Omniglot accuracy |",
             "|---|---|---|---|"]
    for entry in ENTRIES:
        measured = measurements.get(entry.name)
        value = summary(measured) if measured else "not measured yet"
        lines.append(f"| [{entry.name}](docs/results.md#{entry.name}) | `{entry.algo}` | "
                     f"{entry.description}, {entry.steps} steps | {value} |")
    return "\n".join(lines)


def results_markdown(measurements: dict) -> str:
    out = ["# Measured results", "",
           "Written by `python bin/report.py` from `docs/results.json`; do not edit by hand.",
           "Each result is the command beside it, run from the repository root on a fresh "
           "workdir: `bin/train.py` at the stated size, then `bin/evaluate.py` on the bundled "
           "Omniglot test alphabets (Sanskrit, Tagalog: characters training never sees). These "
           "are CI-sized runs on 183 training characters, not the papers' numbers, which need "
           "the full data and 10^4-10^5 steps.", ""]
    for entry in ENTRIES:
        out += [f"## {entry.name}", "", entry.description + ".", ""]
        measured = measurements.get(entry.name)
        if not measured:
            out += ["Not measured yet: `python bin/report.py --only=" + entry.name + "`.", ""]
            continue
        result = measured["result"]
        out += [f"- **{summary(measured)}**",
                f"- queries per class: {result.get('queries')}, step {result.get('step')}",
                f"- measured {measured['date']} on {measured['machine']}, "
                f"{measured['wall_time_s']} s including training", "",
                "```sh", measured["command"], "```", ""]
        extra = {k: v for k, v in result.items() if k in ("by_instance",)}
        if extra:
            out += [f"Also measured: `{json.dumps(extra)}`", ""]
    return "\n".join(out)


def rewrite_readme(text: str, table: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise UserError(f"The README has no results block; put {BEGIN} ... {END} where the "
                        "table goes.")
    return pattern.sub(lambda _: f"{BEGIN}\n{table}\n{END}", text)


def load_measurements(root: str = ROOT) -> dict:
    path = os.path.join(root, RESULTS_JSON)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_reports(measurements: dict, root: str = ROOT) -> None:
    """Writes docs/results.json, docs/results.md and the README's results block."""
    with open(os.path.join(root, RESULTS_JSON), "w") as f:
        json.dump(measurements, f, indent=2, sort_keys=True)
    with open(os.path.join(root, RESULTS_MD), "w") as f:
        f.write(results_markdown(measurements) + "\n")
    readme = os.path.join(root, README)
    with open(readme) as f:
        text = f.read()
    with open(readme, "w") as f:
        f.write(rewrite_readme(text, readme_table(measurements)))


def report(names=None, runs_dir: str = "runs/report", log=print) -> dict:
    """Reruns the named entries (all by default) and rewrites the reports."""
    unknown = sorted(set(names or ()) - set(entry_names()))
    if unknown:
        raise UserError(f"Unknown entries {unknown}; valid entries: {entry_names()}.")
    measurements = load_measurements()
    for entry in ENTRIES:
        if names and entry.name not in names:
            continue
        measurements[entry.name] = run_entry(entry, runs_dir, log)
        log(f"{entry.name}: {summary(measurements[entry.name])}")
        write_reports(measurements)  # after each entry: an interrupted report keeps its work
    write_reports(measurements)
    return measurements

"""Measures tfmeta's speed: median ms per meta-step, time to the first step, sampler
throughput and peak memory, each case in a fresh process.

    python bin/benchmark.py                       # every case except *_xla
    python bin/benchmark.py --cases=maml_second_order,maml_first_order --steps=20
    python bin/benchmark.py --output=bench.json
"""

import json
import os
import subprocess
import sys

from absl import app, flags

from tfmeta import benchmarking
from tfmeta.benchmarking.common import peak_memory_mb

flags.DEFINE_list("cases", None, "Cases to run (default: all but the XLA ones).")
flags.DEFINE_integer("steps", 20, "Timed steps per case (the median is reported).",
                     lower_bound=1)
flags.DEFINE_string("output", None, "Also write the results as JSON here.")
flags.DEFINE_string("run_case", None, "Internal: run one case in this process, print JSON.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cases = benchmarking.all_cases()
    if FLAGS.run_case:
        result = cases[FLAGS.run_case](FLAGS.steps)
        result["peak_memory_mb"] = peak_memory_mb()
        print("RESULT " + json.dumps(result))
        return
    names = FLAGS.cases or [n for n in cases if not n.endswith("_xla")]
    unknown = sorted(set(names) - set(cases))
    if unknown:
        raise app.UsageError(f"Unknown cases {unknown}; valid cases: {sorted(cases)}.")
    results = {}
    # Each case in a fresh process: this module, with the package importable from anywhere.
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(
        p for p in (package_parent, os.environ.get("PYTHONPATH")) if p))
    for name in names:
        proc = subprocess.run([sys.executable, "-m", "tfmeta.commands.benchmark",
                               f"--run_case={name}", f"--steps={FLAGS.steps}"],
                              capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode < 0:  # a signal: SIGKILL is most often the kernel's OOM killer
            results[name] = {"error": f"killed by signal {-proc.returncode}"
                                      + (" (out of memory?)" if proc.returncode == -9 else "")}
        elif proc.returncode or not lines:
            results[name] = {"error": proc.stderr.strip().splitlines()[-1:]}
        else:
            results[name] = json.loads(lines[-1][len("RESULT "):])
        print(f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in results[name].items()), flush=True)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(results, f, indent=2)


def run():
    """The console entry point."""
    sys.modules["__main__"].__doc__ = __doc__  # what --help shows
    app.run(main)


if __name__ == "__main__":
    run()

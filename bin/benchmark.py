"""Measures tfmeta's speed: median ms per meta-step, time to the first step, sampler
throughput and peak memory, each case in a fresh process.

    python bin/benchmark.py                       # every case except *_xla
    python bin/benchmark.py --cases=maml_second_order,maml_first_order --steps=20
    python bin/benchmark.py --output=bench.json
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.commands.benchmark import run  # noqa: E402

if __name__ == "__main__":
    run()

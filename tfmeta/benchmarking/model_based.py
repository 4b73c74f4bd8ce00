"""Issue 6's learners at their configs' Omniglot 5-way 1-shot settings (28x28, the
configs' backbones, meta-batch sizes and inner steps): median ms per meta-step."""

from __future__ import annotations

from tfmeta.benchmarking.common import time_config_training


def _case(algo: str):
    def run(steps: int) -> dict:
        return time_config_training(algo, steps)[0]

    return run


CASES = {f"{algo}_omniglot_5w1s": _case(algo) for algo in ("metasgd", "anil", "lstm_meta", "metanet", "mann")}

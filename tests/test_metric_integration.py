"""The four metric-based learners, meta-trained by `tfmeta.training.trainer.train` on a
CI-sized budget of the bundled Omniglot (training alphabets) and evaluated 5-way and
20-way 1-shot on the test alphabets (Sanskrit, Tagalog: 59 characters never seen)."""

import json

import pytest

from tfmeta.config import apply_overrides, get_config
from tfmeta.data import EpisodeShape
from tfmeta.evaluation import evaluate
from tfmeta.training.trainer import train

EPISODES = 200
# algo -> (overrides of its Omniglot 5w1s config, minimum 5-way and 20-way 1-shot accuracy):
# a wide margin over chance (20%, 5%). ProtoNet runs its paper config (60-way training,
# train + val characters, lr halving) with the config's augmentation, cut to 350 steps of
# 1 query per class at lr 3e-3 (500 until 2026-12-07, measured 90.3% 5-way / 73.3% 20-way;
# at 350, halving every 245 steps: 89.2% / 70.5%, the thresholds kept). The 95% is
# not reached on the 183 training characters of the bundled data in any budget tried
# (best 92.6% / 78.1%; docs/metric_learners.md). Matching trains 120 steps since 2026-12-07
# (200 before), measured 63.0% / 39.8% (200 episodes each, seed 99), the thresholds kept.
BUDGETS = {
    "protonet": (["num_steps=350", "queries=1", "optimizer.learning_rate=0.003",
                  "optimizer.decay_steps=245"], 0.85, 0.65),
    "matching": (["num_steps=120", "meta_batch_size=4"], 0.45, 0.18),
    "relation": (["num_steps=300", "queries=5", "model.filters=32",
                  "learner.relation_filters=32"], 0.45, 0.18),
    "siamese": (["num_steps=200", "meta_batch_size=4", "model.units=512"], 0.45, 0.18),
}


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(BUDGETS))
def test_meta_trained_learner_beats_chance_on_unseen_alphabets(algo, omniglot, tmp_path):
    overrides, min_five_way, min_twenty_way = BUDGETS[algo]
    config = apply_overrides(get_config(algo, "omniglot", "5w1s"),
                             overrides + ["val_episodes=20", "checkpoint_every=100000"])
    learner = train(config, str(tmp_path / algo), verbose=0)
    results = {ways: evaluate(learner, omniglot.split("test"), EpisodeShape(ways, 1, 5),
                              num_episodes=EPISODES, seed=99)
               for ways in (5, 20)}
    print(f"\n{algo} after {config.num_steps} steps: " + json.dumps(
        {f"{w}-way 1-shot": f"{100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f}"
         for w, r in results.items()}))
    assert results[5]["accuracy"] >= min_five_way, results[5]
    assert results[20]["accuracy"] >= min_twenty_way, results[20]

"""MANN end to end on Omniglot (issue 6's shrunken setting, see
test_model_based_integration.py): its own file because it is the longest integration run,
and `pytest -n 2 --dist=loadfile` hands whole files to its two processes."""

import pytest

from tests.test_model_based_integration import assert_above_chance, shrunk_config
from tfmeta.algorithms.mann import accuracy_by_instance
from tfmeta.data import EpisodeShape
from tfmeta.evaluation import evaluate
from tfmeta.training.trainer import train


@pytest.mark.slow
def test_mann_remembers_image_label_bindings_on_held_out_alphabets(tmp_path, omniglot_small):
    # MANN's config: 14x14 pixels here, 50-step training sequences (10 instances of 5
    # classes) and one query step per class, 16 sequences per update.
    config = shrunk_config("mann", 850, ["meta_batch_size=16", "optimizer.learning_rate=0.003"])
    learner = train(config, str(tmp_path / "mann"), verbose=0)
    test_alphabets = omniglot_small.split("test")
    result = evaluate(learner, test_alphabets, EpisodeShape(5, 1, 5), num_episodes=200, seed=1234)
    by_instance = accuracy_by_instance(learner, test_alphabets, num_episodes=100)
    print(f"mann: 5-way 1-shot on test alphabets {result['accuracy']:.3f} "
          f"+- {result['ci95']:.3f}; accuracy by instance: {by_instance}")
    # Memory-free, a sequence model can only use the label structure (a class shown the
    # first time gets a label not used yet). Measured with the binding not yet learned:
    # 1st 43.5%, 2nd 30.5%, 5th 26.5%, 10th 21.5%. Well above that on later instances is
    # remembering which image came with which label (measured at 1000 steps: 2nd 39.8%,
    # 5th 47.2%, 10th 45.8%, 1-shot queries 35.7%; at 850 steps, the budget since
    # 2026-12-07: 38.6%, 42.2%, 39.8%, 35.1%, the thresholds kept).
    assert by_instance[5] > 0.38 and by_instance[10] > 0.35, by_instance
    assert_above_chance(result)

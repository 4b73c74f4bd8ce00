"""Reptile learns: meta-trained on the bundled Omniglot's training alphabets, it classifies
characters of the held-out test alphabets well above chance (CI-sized budget)."""

import keras
import pytest

from tfmeta.algorithms.reptile import Reptile
from tfmeta.data import episode_dataset
from tfmeta.models import conv4
from tfmeta.training.evaluation import evaluate


@pytest.mark.slow
@pytest.mark.parametrize("transductive", [True])
def test_reptile_learns_on_held_out_alphabets(omniglot_small, transductive):
    # 5-way 1-shot on 14x14 images; the paper's inner loop (Adam 1e-3, beta1 0, batch 10,
    # 5 iterations on 10 training shots per class, meta-batch 5), a shorter run (300
    # meta-steps, epsilon annealed 1 -> 0) and more test-time inner steps with a larger rate.
    keras.utils.set_random_seed(0)
    steps = 300
    learner = Reptile(conv4(omniglot_small.input_shape, num_classes=5, filters=32,
                            downsample="strided", num_blocks=3),
                      inner_steps=5, inner_batch_size=10, inner_steps_test=20,
                      inner_batch_size_test=5, inner_lr=1e-3, meta_step_size=1.0,
                      meta_step_size_final=0.0, anneal_steps=steps, transductive=transductive)
    learner.compile(optimizer=keras.optimizers.SGD())
    train = episode_dataset(omniglot_small.split("train"), 5, 10, 1, 5, seed=0)
    learner.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)
    result = evaluate(learner, omniglot_small.split("test"), 5, 1, 1, num_episodes=200,
                      meta_batch_size=20, seed=3)
    print(f"Reptile 5-way 1-shot on held-out alphabets: {result['accuracy']:.3f} "
          f"+- {result['ci95']:.3f}")
    assert result["accuracy"] - result["ci95"] > 0.4, result  # chance is 0.2

"""The contract every tfmeta learner passes.

A learner's test subclasses `LearnerContract` and defines `make_learner`:

    class TestMAMLContract(LearnerContract):
        def make_learner(self, input_shape, ways):
            return MAML(conv4(input_shape, num_classes=ways, filters=16), inner_steps=1)

It may tune the class attributes (optimizer, steps) for its method. The contract
runs on real data: the bundled Omniglot at 28x28, training episodes from the
training alphabets and checks on episodes of other alphabets.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta.algorithms.base import accuracy
from tfmeta.data import episode_dataset
from tfmeta.training.export import export_learner


class LearnerContract:
    ways = 5
    shots = 1
    queries = 3
    meta_batch_size = 4
    learning_rate = 1e-3
    train_steps = 40           # for "loss goes down"
    overfit_steps = 150        # upper bound for "overfits one episode"
    overfit_accuracy = 1.0
    dataset_fixture = "omniglot"

    def make_learner(self, input_shape, ways):
        raise NotImplementedError

    def make_optimizer(self):
        return keras.optimizers.Adam(self.learning_rate)

    # --------------------------------------------------------------- helpers
    @pytest.fixture
    def dataset(self, request):
        return request.getfixturevalue(self.dataset_fixture)

    def learner_and_data(self, dataset, seed=0):
        keras.utils.set_random_seed(seed)
        learner = self.make_learner(dataset.input_shape, self.ways)
        learner.compile(optimizer=self.make_optimizer())
        train = episode_dataset(dataset.split("train"), self.ways, self.shots, self.queries,
                                self.meta_batch_size, seed=seed)
        held_out = next(iter(episode_dataset(dataset.split("test"), self.ways, self.shots,
                                             self.queries, 16, seed=seed + 1)))
        return learner, train, held_out

    # ----------------------------------------------------------------- tests
    def test_output_shapes(self, dataset):
        learner, _, batch = self.learner_and_data(dataset)
        logits = learner.query_logits(batch, training=False)
        assert tuple(logits.shape[:2]) == (16, self.ways * self.queries)
        assert logits.shape[-1] >= self.ways
        single = learner.adapt_and_predict(batch["support_images"][0], batch["support_labels"][0],
                                           batch["query_images"][0])
        assert tuple(single.shape) == (self.ways * self.queries, self.ways)
        assert np.all(np.isfinite(single.numpy()))

    def test_query_labels_are_not_used(self, dataset):
        learner, _, batch = self.learner_and_data(dataset)
        shuffled = dict(batch)
        shuffled["query_labels"] = tf.random.shuffle(tf.transpose(batch["query_labels"]))
        shuffled["query_labels"] = tf.transpose(shuffled["query_labels"])
        a = learner.query_logits(batch, training=False)
        b = learner.query_logits(shuffled, training=False)
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)

    def test_chance_accuracy_on_unrelated_queries(self, dataset):
        """Queries from classes that are not in the support set: nothing to learn, so ~1/N."""
        learner, _, batch = self.learner_and_data(dataset)
        others = next(iter(episode_dataset(dataset.split("val"), self.ways, self.shots,
                                           self.queries, 16, seed=7)))
        mixed = dict(batch, query_images=others["query_images"])
        acc = float(tf.reduce_mean(accuracy(mixed["query_labels"],
                                            learner.query_logits(mixed, training=False))))
        n = 16 * self.ways * self.queries
        margin = 4 * np.sqrt((1 / self.ways) * (1 - 1 / self.ways) * self.ways / n) + 0.1
        assert abs(acc - 1 / self.ways) < margin, acc

    def test_loss_goes_down(self, dataset):
        """The meta-training objective, on held-out episodes, drops after a few meta-steps."""
        learner, train, batch = self.learner_and_data(dataset)

        def objective():
            logits = learner.query_logits(batch, training=True)
            return float(tf.reduce_mean(learner.query_loss(batch, logits)))

        before = objective()
        learner.fit(train, steps_per_epoch=self.train_steps, epochs=1, verbose=0)
        after = objective()
        assert np.isfinite(after) and after < before, (before, after)

    def test_overfits_one_episode(self, dataset):
        learner, train, _ = self.learner_and_data(dataset)
        fixed = next(iter(train))
        one = tf.data.Dataset.from_tensors(fixed).repeat()
        for _ in range(self.overfit_steps // 10):
            learner.fit(one, steps_per_epoch=10, epochs=1, verbose=0)
            result = learner.evaluate(tf.data.Dataset.from_tensors(fixed), verbose=0,
                                      return_dict=True)
            if result["accuracy"] >= self.overfit_accuracy:
                break
        assert result["accuracy"] >= self.overfit_accuracy, result

    @pytest.mark.slow
    def test_saved_model_round_trip_in_fresh_process(self, dataset, tmp_path):
        learner, _, _ = self.learner_and_data(dataset)
        path = export_learner(learner, dataset, str(tmp_path / "export"))
        classes = dataset.split("test")
        rng = np.random.default_rng(0)
        raw = rng.uniform(0, 1, size=(self.ways * (self.shots + 1), *dataset.raw_shape))
        raw = raw.astype(np.float32)
        support, query = raw[: self.ways * self.shots], raw[self.ways * self.shots:]
        labels = np.repeat(np.arange(self.ways), self.shots).astype(np.int32)
        del classes
        expected = learner.adapt_and_predict(dataset.preprocess(support), tf.constant(labels),
                                             dataset.preprocess(query)).numpy()
        np.savez(tmp_path / "inputs.npz", support=support, labels=labels, query=query)
        script = textwrap.dedent(f"""
            import json, numpy as np, tensorflow as tf
            data = np.load({str(tmp_path / 'inputs.npz')!r})
            loaded = tf.saved_model.load({path!r})
            out = loaded.signatures["adapt_and_predict"](
                support_images=tf.constant(data["support"]),
                support_labels=tf.constant(data["labels"]),
                query_images=tf.constant(data["query"]))["logits"]
            print(json.dumps(out.numpy().tolist()))
        """)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        served = np.array(json.loads(proc.stdout.strip().splitlines()[-1]))
        assert served.shape == (self.ways, self.ways)
        np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4)

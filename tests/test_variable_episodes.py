"""Variable episodes (Meta-Dataset's sampler): every bound of the drawn shapes, the reference's
support formula, the padded layout, the in-memory sampler's episodes, the config and the
refusal of learners that cannot take them, and what evaluation reports of the episodes."""

import dataclasses
import json
import math
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tfmeta import config as config_lib
from tfmeta import evaluation
from tfmeta.algorithms import build_learner
from tfmeta.data import ClassImages, EpisodeShape, VariableEpisodes, episode_dataset
from tfmeta.data.variable_sampling import (
    arrange_padded,
    check_variable,
    sample_episode_shape,
)
from tfmeta.migrate import migrate

# Small enough that its bounds bind often: 3 to 6 ways, support sets of at most 20.
SMALL = VariableEpisodes(min_ways=3, max_ways=6, max_queries=3, max_support=20,
                         max_support_per_class=5)
# Variable episodes of SMALL's parameters (their ways, shots and queries are drawn: the
# shape's own counts are not used).
SMALL_EPISODES = EpisodeShape(3, 1, 1, sampler="variable", variable=SMALL)


def draw_shapes(counts, spec, draws=300, seed=0):
    """`sample_episode_shape` for seeds (seed, 0..draws-1): numpy arrays [draws, max_ways]."""
    counts = tf.constant(counts, tf.int64)
    seeds = tf.stack([tf.fill([draws], tf.constant(seed, tf.int64)),
                      tf.range(draws, dtype=tf.int64)], 1)
    shapes = tf.function(lambda s: tf.map_fn(
        lambda one: sample_episode_shape(one, counts, spec), s,
        fn_output_signature={"classes": tf.int64, "support": tf.int32, "queries": tf.int32}))(
        seeds)
    return {k: v.numpy() for k, v in shapes.items()}


def test_defaults_are_meta_datasets_and_the_config_holds_them():
    spec = VariableEpisodes()
    assert (spec.min_ways, spec.max_ways, spec.max_queries, spec.max_support,
            spec.max_support_per_class) == (5, 50, 10, 500, 100)
    assert spec.min_log_weight == pytest.approx(math.log(0.5))
    assert spec.max_log_weight == pytest.approx(math.log(2))
    assert (spec.support_slots, spec.query_slots) == (500, 500)
    config = config_lib.get_config("protonet", "omniglot")
    assert config.episode_sampler.to_dict() == {"name": "fixed", **dataclasses.asdict(spec)}


@pytest.mark.parametrize("field, value, message", [
    ("max_ways", 4, r"max_ways=4 is less than min_ways=5"),
    ("max_support", 40, r"max_support=40 is less than max_ways=50"),
    ("min_log_weight", 1.0, r"max_log_weight=0.69.* is less than min_log_weight=1.0"),
    ("min_ways", 1, r"min_ways must be an integer in \[2, 1000\]; got 1"),
    ("max_queries", 0, r"max_queries must be an integer"),
])
def test_contradictory_or_out_of_range_fields_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        VariableEpisodes(**{field: value})


def test_config_validation_names_the_field_and_the_sampler():
    config = config_lib.get_config("protonet", "omniglot")
    config_lib.validate_config(config_lib.apply_overrides(config,
                                                          ["episode_sampler.name=variable"]))
    with pytest.raises(ValueError, match=r"^episode_sampler\.name must be one of \['fixed', "
                                         r"'variable'\]; got 'meta'\.$"):
        config_lib.validate_config(config_lib.apply_overrides(
            config_lib.get_config("protonet", "omniglot"), ["episode_sampler.name=meta"]))
    with pytest.raises(ValueError, match=r"episode_sampler\.max_ways=3 is less than "
                                         r"episode_sampler\.min_ways=5"):
        config_lib.validate_config(config_lib.apply_overrides(
            config_lib.get_config("protonet", "omniglot"), ["episode_sampler.max_ways=3"]))
    # The switch's old form (a name, before the sampler's settings were its section) is one
    # line saying what to write; so is the old section's name.
    with pytest.raises(ValueError, match=r"^episode_sampler is a section of fields \[.*'name'"
                                         r".*\]; set one of them, e\.g\. "
                                         r"--set=episode_sampler\.name=variable\.$"):
        config_lib.apply_overrides(config_lib.get_config("protonet", "omniglot"),
                                   ["episode_sampler=variable"])
    with pytest.raises(ValueError, match=r"Unknown config section 'variable_episodes'"):
        config_lib.apply_overrides(config_lib.get_config("protonet", "omniglot"),
                                   ["variable_episodes.max_ways=8"])
    # A config.json edited by hand into something that is not a section: one line.
    for bad in (5, None):
        recorded = {**config_lib.get_config("protonet", "omniglot").to_dict(),
                    "episode_sampler": bad}
        with pytest.raises(ValueError, match=rf"^episode_sampler must be a section .*got {bad}"):
            config_lib.validate_config(ml_collections.ConfigDict(migrate(recorded)))


@pytest.mark.parametrize("spec, counts", [
    (VariableEpisodes(), np.random.RandomState(0).randint(2, 400, size=80)),  # C > max_ways
    (VariableEpisodes(), np.random.RandomState(1).randint(2, 30, size=12)),   # C < max_ways
    (SMALL, np.random.RandomState(2).randint(2, 12, size=9)),
])
def test_every_drawn_shape_respects_every_bound(spec, counts):
    shapes = draw_shapes(counts, spec)
    for classes, support, queries in zip(shapes["classes"], shapes["support"],
                                         shapes["queries"]):
        ways = int(np.sum(support > 0))
        assert spec.min_ways <= ways <= min(spec.max_ways, len(counts))
        # Zeros beyond the episode's ways, and every chosen class has a support example.
        assert not support[ways:].any() and not queries[ways:].any()
        assert not classes[ways:].any() and (support[:ways] >= 1).all()
        chosen = classes[:ways]
        assert len(set(chosen)) == ways and chosen.min() >= 0 and chosen.max() < len(counts)
        q = queries[0]
        assert (queries[:ways] == q).all()
        assert q == min(spec.max_queries, counts[chosen].min() // 2) and q >= 1
        assert (support[:ways] <= counts[chosen] - q).all()
        assert support.sum() <= spec.max_support


def test_the_draws_cover_the_range_and_order_of_classes():
    counts = np.full(9, 10)
    shapes = draw_shapes(counts, SMALL)
    ways = (shapes["support"] > 0).sum(1)
    assert set(ways) == {3, 4, 5, 6}
    # Each class is drawn, and appears as the first label (a random order, not sorted).
    assert set(shapes["classes"][:, 0]) == set(range(9))


def attainable_support_sizes(remaining, spec):
    """Every S the reference's sample_support_set_size can give for some beta in [0, 1):
    min(sum(floor(beta * min(max_support_per_class, remaining) + 1)), max_support); S only
    changes where beta * c crosses an integer, so beta = k / c covers every value."""
    contributions = np.minimum(spec.max_support_per_class, remaining)
    betas = sorted({k / c for c in contributions for k in range(c)})
    return {int(min(np.floor(b * contributions + 1).sum(), spec.max_support)) for b in betas}


def test_support_counts_follow_the_reference_formula():
    """With log-weights fixed at 0 the proportions are the class sizes' own, so each draw's
    support counts must be min(floor(count / sum(count) * (S - N)) + 1, count - q) for one S
    the reference's support-set size can take."""
    spec = dataclasses.replace(SMALL, max_support=40, max_support_per_class=8,
                               min_log_weight=0.0, max_log_weight=0.0)
    counts = np.array([4, 7, 9, 12, 15, 20, 26, 31, 40])
    shapes = draw_shapes(counts, spec, draws=100)
    for classes, support, queries in zip(shapes["classes"], shapes["support"],
                                         shapes["queries"]):
        ways = int(np.sum(support > 0))
        count = counts[classes[:ways]]
        remaining = count - queries[0]
        proportion = count / count.sum()
        matching = [size for size in attainable_support_sizes(remaining, spec)
                    if (np.minimum(np.floor(proportion * (size - ways)).astype(int) + 1,
                                   remaining) == support[:ways]).all()]
        assert matching, (count, support[:ways])


def test_class_weights_make_support_sets_imbalanced():
    """Equal classes get equal support sets without weights, and unequal ones with them."""
    counts = np.full(9, 40)
    spec = dataclasses.replace(SMALL, max_support=60, max_support_per_class=40)
    balanced = draw_shapes(counts, dataclasses.replace(spec, min_log_weight=0.0,
                                                       max_log_weight=0.0), draws=50)
    weighted = draw_shapes(counts, spec, draws=50)

    def spread(support):
        real = support[support > 0]
        return real.max() - real.min()

    assert all(spread(s) == 0 for s in balanced["support"])
    assert max(spread(s) for s in weighted["support"]) >= 3


def test_arrange_padded_by_hand():
    # Class 0: support 11, 12 and query 13; class 1: support 14 and query 15; a third
    # slot of ways unused. 4 support slots, 3 * 1 query slots.
    spec = VariableEpisodes(min_ways=2, max_ways=3, max_queries=1, max_support=4,
                            max_support_per_class=2)
    examples = tf.constant([[11.0], [12.0], [13.0], [14.0], [15.0]])
    shape = {"classes": tf.constant([7, 2, 0], tf.int64), "support": tf.constant([2, 1, 0]),
             "queries": tf.constant([1, 1, 0])}
    episode = {k: v.numpy() for k, v in arrange_padded(examples, shape, spec).items()}
    np.testing.assert_array_equal(episode["support_images"][:, 0], [11, 12, 14, 0])
    np.testing.assert_array_equal(episode["support_labels"], [0, 0, 1, -1])
    np.testing.assert_array_equal(episode["query_images"][:, 0], [13, 15, 0])
    np.testing.assert_array_equal(episode["query_labels"], [0, 1, -1])


def coded_classes(counts):
    """Images [2, 2, 1] whose every pixel is 1 + 1000 * class + index: no pixel is zero, so
    padding (zeros) is told apart, and every image names its class and example."""
    return ClassImages.from_lists(
        [np.full((n, 2, 2, 1), 1, np.float32) + 1000 * c
         + np.arange(n, dtype=np.float32)[:, None, None, None] for c, n in enumerate(counts)])


COUNTS = [4, 5, 6, 7, 8, 9, 10, 11, 12, 3]


@pytest.mark.parametrize("augmented", [False, True])
def test_memory_sampler_episodes_are_padded_and_true_to_their_classes(augmented):
    """Static shapes; real examples first and class-major, padding zero with label -1;
    every real image of its labelled class; no example twice in an episode. Augmentation
    (here + 0.5) reaches the real examples only."""
    augment = (lambda images, seed: images + 0.5) if augmented else None
    dataset = episode_dataset(coded_classes(COUNTS), SMALL_EPISODES, meta_batch_size=2, seed=5,
                              augment=augment)
    assert all(spec.shape.is_fully_defined() for spec in dataset.element_spec.values())
    assert dataset.element_spec["support_images"].shape == (2, 20, 2, 2, 1)
    assert dataset.element_spec["query_labels"].shape == (2, 18)
    for batch in dataset.take(15):
        for e in range(2):
            episode = {k: v[e].numpy() for k, v in batch.items()}
            check_episode(episode, shift=0.5 if augmented else 0.0)


def check_episode(episode, shift):
    support_labels, query_labels = episode["support_labels"], episode["query_labels"]
    ways = support_labels.max() + 1
    classes_of_label, seen = {}, set()
    for part in ("support", "query"):
        labels, images = episode[f"{part}_labels"], episode[f"{part}_images"]
        real = labels >= 0
        count = int(real.sum())
        assert real[:count].all() and not real[count:].any()  # real first, padding after
        assert (np.diff(labels[:count]) >= 0).all()           # class-major
        assert not images[count:].any()                       # exact zeros
        assert np.array_equal(np.unique(labels[:count]), np.arange(ways))
        for label, image in zip(labels[:count], images[:count] - shift):
            assert (image == image.flat[0]).all()
            code = int(image.flat[0]) - 1
            cls, index = divmod(code, 1000)
            assert index < COUNTS[cls]
            assert classes_of_label.setdefault(int(label), cls) == cls
            assert (cls, index) not in seen
            seen.add((cls, index))
    assert len(set(classes_of_label.values())) == ways
    per_class = np.bincount(query_labels[query_labels >= 0])
    assert (per_class == per_class[0]).all()  # balanced queries


def test_memory_sampler_is_a_function_of_the_seed():
    classes = coded_classes(COUNTS)

    def first(seed):
        batch = next(iter(episode_dataset(classes, SMALL_EPISODES, meta_batch_size=3,
                                          seed=seed)))
        return {k: v.numpy() for k, v in batch.items()}

    a, b, c = first(1), first(1), first(2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["support_labels"], c["support_labels"]) or \
        not np.array_equal(a["support_images"], c["support_images"])


def test_classes_too_small_or_too_few_are_refused_or_dropped(caplog):
    with pytest.raises(ValueError, match=r"Class '9' has 1 example .* at least 2"):
        check_variable(ClassImages.from_lists([np.zeros((3, 1))] * 9 + [np.zeros((1, 1))]),
                       SMALL_EPISODES)
    with pytest.raises(ValueError, match=r"min_ways=3 classes, but only 2 classes in the "
                                         r"'val' split"):
        check_variable(ClassImages.from_lists([np.zeros((3, 1))] * 2), SMALL_EPISODES, "val")
    own = ClassImages.from_lists([np.zeros((3, 1))] * 4 + [np.zeros((1, 1))],
                                 drop_small_classes=True)
    assert check_variable(own, SMALL_EPISODES).num_classes == 4
    assert "'4' (1)" in caplog.text


def test_variable_episodes_refused_for_maml_with_its_learned_head_in_one_line():
    from tfmeta.training.preflight import check_episode_sampler

    config = config_lib.apply_overrides(config_lib.get_config("maml", "omniglot"),
                                        ["episode_sampler.name=variable", "model.filters=4"])
    learner = build_learner(config, (28, 28, 1))
    with pytest.raises(ValueError) as error:
        check_episode_sampler(learner, config, (28, 28, 1))
    message = str(error.value)
    assert "\n" not in message and message.startswith("--algo=maml ")
    able = set(message.split("learners that do: ")[1].split(". Use")[0].split(", "))
    assert {"--algo=protonet", "--algo=matching", "--algo=pretrain",
            "--algo=maml --set=learner.head=prototypes"} <= able
    assert not able & {"--algo=maml", "--algo=leo", "--algo=reptile", "--algo=mann",
                       "--algo=relation", "--algo=metasgd"}
    fixed = config_lib.apply_overrides(config, ["episode_sampler.name=fixed"])
    check_episode_sampler(learner, fixed, (28, 28, 1))  # fixed episodes: any learner


def test_episode_sizes_by_hand():
    sizes = evaluation.episode_sizes(support_labels=[[0, 0, 1, -1], [0, 1, 2, 2]],
                                     query_labels=[[0, 1, -1], [0, 1, 2]])
    np.testing.assert_array_equal(sizes["ways"], [2, 3])
    np.testing.assert_array_equal(sizes["shots"], [2, 1, 1, 1, 2])
    np.testing.assert_array_equal(sizes["queries"], [1, 1, 1, 1, 1])
    assert evaluation.summary(sizes["shots"]) == {"min": 1, "mean": 1.4, "max": 2}


class AlwaysClassZero:
    """Scores class 0 highest for every query: an episode's accuracy is the share of its real
    queries labelled 0, 1 / N with balanced queries."""

    def query_logits(self, episodes, training=False):
        queries = tf.shape(episodes["query_labels"])
        return tf.one_hot(tf.zeros(queries, tf.int32), 3)


@pytest.mark.parametrize("sampler", ["fixed", "variable"])
def test_evaluate_reports_the_drawn_ways_and_shots(sampler):
    classes = coded_classes(COUNTS)
    variable = SMALL if sampler == "variable" else None  # (fixed episodes take none)
    result = evaluation.evaluate(AlwaysClassZero(), classes,
                                 EpisodeShape(4, 2, 1, sampler, variable),
                                 num_episodes=10, meta_batch_size=4)
    episodes = episode_dataset(classes, EpisodeShape(4, 2, 1, sampler, variable), 4,
                               seed=1234, num_episodes=12)
    labels = [(b["support_labels"].numpy(), b["query_labels"].numpy()) for b in episodes]
    sizes = evaluation.episode_sizes(np.concatenate([s for s, _ in labels])[:10],
                                     np.concatenate([q for _, q in labels])[:10])
    assert result["drawn"] == {k: evaluation.summary(v) for k, v in sizes.items()}
    assert result["accuracy"] == pytest.approx(np.mean(1 / sizes["ways"]))
    assert result["episodes"] == 10 and result["sampler"] == sampler
    if sampler == "fixed":
        assert result["drawn"]["ways"] == {"min": 4, "mean": 4.0, "max": 4}
        assert result["drawn"]["shots"] == {"min": 2, "mean": 2.0, "max": 2}
        assert (result["ways"], result["shots"], result["queries"]) == (4, 2, 1)
    else:
        assert result["drawn"]["ways"]["min"] >= 3 and result["drawn"]["ways"]["max"] <= 6
        assert result["ways"] is None


def test_protonet_trains_and_evaluates_on_variable_omniglot_episodes(tmp_path):
    from tfmeta.training import evaluation as run_evaluation
    from tfmeta.training import trainer

    config = config_lib.apply_overrides(config_lib.get_config("protonet", "omniglot"), [
        "episode_sampler.name=variable", "episode_sampler.max_ways=8",
        "episode_sampler.max_support=20", "episode_sampler.max_queries=2",
        "model.filters=4", "num_steps=3", "log_every=3",
        "checkpoint_every=3", "val_episodes=2", "eval_meta_batch_size=2",
        "meta_batch_size=2"])
    workdir = str(tmp_path / "run")
    trainer.train(config, workdir, verbose=0)
    result = run_evaluation.evaluate_workdir(workdir, num_episodes=4)
    with open(os.path.join(workdir, "eval.json")) as f:
        written = json.load(f)
    assert written["drawn"] == result["drawn"] and written["sampler"] == "variable"
    assert 5 <= written["drawn"]["ways"]["min"] <= written["drawn"]["ways"]["max"] <= 8
    assert 1 <= written["drawn"]["queries"]["max"] <= 2
    assert written["episodes"] == 4 and written["ways"] is None and "accuracy" in written

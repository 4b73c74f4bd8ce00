"""Episodes drawn within one group of classes (`grouping="within"`): the sampler on small
hand-made classes, the loaders that know groups (Omniglot's alphabets, a folder's
`data.class_depth`), records, the config's `episode_grouping` and `bin/evaluate.py
--within_group`."""

import collections
import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from tfmeta import config as config_lib
from tfmeta.data import (
    ClassImages,
    EpisodeShape,
    FewShotDataset,
    episode_dataset,
    load_dataset,
    record_store,
    record_writer,
)
from tfmeta.episode_spec import DataSpec
from tfmeta.migrate import migrate

pytestmark = pytest.mark.usefixtures("private_cache")

# Group -> its number of classes: with 3 ways, "big" and "mid" are drawn, "pair" and
# "single" never.
GROUP_SIZES = {"big": 6, "mid": 3, "pair": 2, "single": 1}


def grouped_classes(group_sizes=GROUP_SIZES, per_class=5, drop_small_classes=False,
                    image_shape=(1,)):
    """Classes whose every example holds its class index (decoded by `classes_of`),
    grouped as `group_sizes` says; class names "group/k"."""
    groups = [g for g, size in group_sizes.items() for _ in range(size)]
    per = [np.full((per_class, *image_shape), c, np.float32) for c in range(len(groups))]
    names = [f"{g}/{k}" for k, g in enumerate(groups)]
    return ClassImages.from_lists(per, names, drop_small_classes=drop_small_classes,
                                  class_groups=groups)


def classes_of(episode) -> set:
    """The class indices an episode's support images hold."""
    return {int(v) for v in np.unique(np.asarray(episode["support_images"]))}


def groups_drawn(classes, episodes) -> list:
    """The one group of each episode's classes (an AssertionError if it has several)."""
    drawn = []
    for episode in episodes:
        groups = {classes.class_groups[c] for c in classes_of(episode)}
        assert len(groups) == 1, f"an episode's classes span groups {groups}"
        drawn.append(groups.pop())
    return drawn


# ----------------------------------------------------------------------- the sampler
def test_within_episodes_take_one_group_drawn_uniformly_among_those_with_enough_classes():
    classes = grouped_classes()
    ways, episodes = 3, 400
    stream = episode_dataset(classes, EpisodeShape(ways, 1, 1, grouping="within"), seed=7,
                             num_episodes=episodes)
    drawn, classes_seen = [], set()
    for episode in stream:
        classes_seen |= classes_of(episode)
        drawn += groups_drawn(classes, [episode])
    counts = collections.Counter(drawn)
    assert set(counts) == {"big", "mid"}  # "pair" and "single" have fewer than 3 classes
    # Uniform over the eligible groups, not over classes (which would favour "big" 2:1):
    # each count is Binomial(400, 1/2), sd 10; 60 is six of them.
    assert abs(counts["big"] - episodes / 2) < 60, counts
    mid_and_big = {c for c, g in enumerate(classes.class_groups) if g in ("big", "mid")}
    assert classes_seen == mid_and_big  # every class of an eligible group is drawn


def test_groups_that_lose_classes_to_small_class_dropping_are_not_drawn():
    # "mid" has 3 classes, but one of them has 2 examples and 2 + 2 episodes drop it.
    per = [np.full((5 if c != 6 else 2, 1), c, np.float32) for c in range(9)]
    groups = ["big"] * 6 + ["mid"] * 3
    classes = ClassImages.from_lists(per, drop_small_classes=True, class_groups=groups)
    stream = episode_dataset(classes, EpisodeShape(3, 2, 2, grouping="within"), seed=1,
                             num_episodes=60)
    kept = classes.select([c for c in range(9) if c != 6])
    assert set(groups_drawn(kept, stream)) == {"big"}
    with pytest.raises(ValueError, match=r"the largest group, 'big', has 6 classes; use "
                                         r"ways <= 6, or episode_grouping=any"):
        episode_dataset(classes, EpisodeShape(7, 2, 2, grouping="within"), split="train")


def test_the_stream_is_a_pure_function_of_the_seed_and_any_is_unchanged():
    classes = grouped_classes()

    def batches(seed, **options):
        return [{k: v.numpy() for k, v in b.items()} for b in episode_dataset(
            classes, EpisodeShape(3, 2, 1, **options), meta_batch_size=2, seed=seed,
            num_episodes=12)]

    def same(first, second):
        return all(np.array_equal(a[k], b[k]) for a, b in zip(first, second) for k in a)

    within = batches(seed=3, grouping="within")
    assert same(within, batches(seed=3, grouping="within"))
    assert not same(within, batches(seed=4, grouping="within"))
    assert not same(within, batches(seed=3))
    assert same(batches(seed=3), batches(seed=3, grouping="any"))  # the default, as before
    resumed = [{k: v.numpy() for k, v in b.items()} for b in episode_dataset(
        classes, EpisodeShape(3, 2, 1, grouping="within"), meta_batch_size=2, seed=3,
        start_step=4).take(2)]
    assert same(resumed, within[4:6])  # meta-batch s is the same, resumed or not
    # Labels are still permuted: label 0 is not always the group's first class.
    first = {int(b["support_images"][e, 0, 0]) for b in within for e in range(2)}
    assert len(first) > 2


def test_refusals_name_the_value_and_the_fix():
    plain = ClassImages.from_lists([np.zeros((4, 1), np.float32)] * 6)
    with pytest.raises(ValueError, match=r"episode_grouping=within .*needs classes with "
                                         r"groups, but those of the 'test' split have none: "
                                         r"use --dataset=omniglot .*data.class_depth=2"):
        episode_dataset(plain, EpisodeShape(3, 1, 1, grouping="within"), split="test")
    with pytest.raises(ValueError, match=r"ways=7 is more classes than any one group of the "
                                         r"'val' split has.*'big', has 6 classes"):
        episode_dataset(grouped_classes(), EpisodeShape(7, 1, 1, grouping="within"),
                        split="val")
    with pytest.raises(ValueError, match=r"episode_sampler\.name=variable draws its ways from "
                                         r"every class; use episode_grouping=any"):
        episode_dataset(grouped_classes(), EpisodeShape(3, 1, 1, sampler="variable",
                                                        grouping="within"))
    with pytest.raises(ValueError, match=r"must be one of \['any', 'within'\]; got 'one'"):
        episode_dataset(grouped_classes(), EpisodeShape(3, 1, 1, grouping="one"))
    with pytest.raises(ValueError, match="class_groups has 2 group names for 6 classes"):
        ClassImages.from_lists([np.zeros((4, 1), np.float32)] * 6, class_groups=["a", "b"])


def test_records_keep_the_groups_and_stream_within_them(tmp_path):
    grouped = grouped_classes({"big": 3, "mid": 3, "pair": 2}, per_class=3)
    dataset = FewShotDataset("toy", {"train": grouped, "test": grouped_classes(
        {"a": 2}, per_class=3)}, (1,), lambda x: x, value_range=None)
    record_writer.convert(dataset, str(tmp_path / "records"), threads=1)
    loaded = record_store.load(str(tmp_path / "records"))
    assert loaded.split("train").class_groups == grouped.class_groups
    stream = episode_dataset(loaded, EpisodeShape(3, 1, 1, grouping="within"),
                             meta_batch_size=2, seed=2, num_episodes=16, split="train")
    drawn = groups_drawn(grouped, [{"support_images": b["support_images"][e]}
                                   for b in stream for e in range(2)])
    assert set(drawn) == {"big", "mid"}
    with pytest.raises(ValueError, match="'big', has 3 classes; use ways <= 3"):
        episode_dataset(loaded, EpisodeShape(4, 1, 1, grouping="within"), split="train")


# ------------------------------------------------------------------------ Omniglot
def test_omniglot_groups_are_the_alphabets(omniglot_small):
    for classes in omniglot_small.splits.values():
        assert classes.class_groups == tuple(n.split("/")[0] for n in classes.class_names)
    train = omniglot_small.split("train")
    rotated = [i for i, n in enumerate(train.class_names) if n.endswith("/rot90")]
    assert rotated and all(train.class_groups[i] == train.class_names[i].split("/")[0]
                           for i in rotated)
    test = omniglot_small.split("test")
    sizes = collections.Counter(test.class_groups)
    largest, size = sizes.most_common(1)[0]
    stream = episode_dataset(test, EpisodeShape(20, 1, 1, grouping="within"), seed=0,
                             num_episodes=8)
    assert set(groups_drawn_by_pixels(test, stream)) == {
        g for g, n in sizes.items() if n >= 20}
    with pytest.raises(ValueError, match=rf"the largest group, '{largest}', has {size} "
                                         rf"classes; use ways <= {size}"):
        episode_dataset(omniglot_small, EpisodeShape(size + 1, 1, 1, grouping="within"),
                        split="test")


def groups_drawn_by_pixels(classes, episodes) -> list:
    """The group of each episode's classes, found by matching its support images to the
    classes' examples (Omniglot's images do not encode their class)."""
    owner = {example.tobytes(): c for c in range(classes.num_classes)
             for example in classes.class_examples(c)}
    drawn = []
    for episode in episodes:
        groups = {classes.class_groups[owner[np.asarray(x).tobytes()]]
                  for x in episode["support_images"]}
        assert len(groups) == 1, groups
        drawn.append(groups.pop())
    return drawn


# ---------------------------------------------------------------- folder class_depth
def write_pngs(root, paths, size=6):
    """A tiny PNG at each relative path (a distinct grey level per file)."""
    for k, path in enumerate(paths):
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        Image.fromarray(np.full((size, size), 10 * k % 256, np.uint8)).save(full)


def group_tree(root, groups=6, classes=2, images=3, prefix=""):
    """`root/<prefix>g<i>/c<j>/img<k>.png`."""
    write_pngs(root, [f"{prefix}g{i}/c{j}/img{k}.png" for i in range(groups)
                      for j in range(classes) for k in range(images)])
    return root


def test_folder_class_depth_2_names_classes_group_slash_class_and_splits_by_group(tmp_path,
                                                                                  caplog):
    root = group_tree(str(tmp_path / "tree"), groups=10)
    write_pngs(root, ["g0/above.png"])  # above the class level: skipped, counted
    os.makedirs(os.path.join(root, "g1", "empty"))
    with caplog.at_level("INFO"):
        data = load_dataset("folder", root, image_size=6, channels=1, class_depth=2)
    log = " ".join(r.getMessage() for r in caplog.records)
    assert "Skipped 1 images above the class folders (data.class_depth=2)" in log
    assert "g1/empty holds no" in log
    assert "split by group" in data.description
    split = data.chosen_split
    assert sorted(n for names in split.values() for n in names) == sorted(
        f"g{i}/c{j}" for i in range(10) for j in range(2))
    groups_of = {s: {n.split("/")[0] for n in names} for s, names in split.items()}
    assert [len(groups_of[s]) for s in ("train", "val", "test")] == [6, 2, 2]  # of 10 groups
    assert not (groups_of["train"] & groups_of["test"]) and not (
        groups_of["train"] & groups_of["val"])
    for s, classes in data.splits.items():
        assert classes.class_groups == tuple(n.split("/")[0] for n in classes.class_names)
        assert len(classes.class_names) == 2 * len(groups_of[s])  # whole groups
    # The split config.json records reads back to the same classes and groups.
    again = load_dataset("folder", root, image_size=6, channels=1, class_depth=2,
                         class_split=json.loads(json.dumps(split)))
    assert {s: c.class_groups for s, c in again.splits.items()} == {
        s: c.class_groups for s, c in data.splits.items()}
    plain = load_dataset("folder", root, image_size=6, channels=1)
    assert plain.split("train").class_groups is None  # class_depth=1: as before
    assert sorted(n for c in plain.splits.values() for n in c.class_names) == [
        f"g{i}" for i in range(10)]


def test_folder_class_depth_3_and_fixed_split_folders(tmp_path):
    deep = str(tmp_path / "deep")
    write_pngs(deep, [f"a{i}/b{i % 2}/c{j}/x{k}.png" for i in range(3) for j in range(2)
                      for k in range(2)])
    data = load_dataset("folder", deep, image_size=6, channels=1, class_depth=3)
    names = sorted(n for c in data.splits.values() for n in c.class_names)
    assert names == sorted(f"a{i}/b{i % 2}/c{j}" for i in range(3) for j in range(2))
    assert {g for c in data.splits.values() for g in c.class_groups} == {
        f"a{i}/b{i % 2}" for i in range(3)}
    fixed = str(tmp_path / "fixed")
    group_tree(fixed, groups=3, prefix="train/")
    write_pngs(fixed, ["test/t0/c0/x.png", "test/t0/c1/x.png", "test/t1/c0/x.png"])
    data = load_dataset("folder", fixed, image_size=6, channels=1, class_depth=2)
    assert data.chosen_split["test"] == ["t0/c0", "t0/c1", "t1/c0"]
    val_groups = {n.split("/")[0] for n in data.chosen_split["val"]}
    train_groups = {n.split("/")[0] for n in data.chosen_split["train"]}
    assert len(val_groups) == 1 and not val_groups & train_groups  # a whole group cut


def test_folder_class_depth_errors_name_the_depth_found(tmp_path):
    root = group_tree(str(tmp_path / "tree"), groups=3)
    with pytest.raises(ValueError, match=r"data.class_depth=3 reads class folders 3 levels "
                                         r"below .*deepest folders are 2 level\(s\) down .*; "
                                         r"use data.class_depth=2"):
        load_dataset("folder", root, image_size=6, class_depth=3)
    for bad in (0, 1.5, "2", True):
        with pytest.raises(ValueError, match=rf"data.class_depth must be an integer in "
                                             rf"\[1, 100\].*got {bad!r}"):
            load_dataset("folder", root, image_size=6, class_depth=bad)


# ------------------------------------------------------------------- the config
def test_episode_grouping_validates_and_reaches_the_training_episodes():
    config = config_lib.get_config("protonet", "folder")
    config_lib.apply_overrides(config, ["data.class_depth=2", "episode_grouping=within"])
    config_lib.validate_config(config)
    spec = DataSpec.from_config(config)
    assert spec.train.grouping == "within" and spec.test.grouping == "any"
    assert isinstance(spec.train, EpisodeShape)  # what episode_dataset takes, grouping and all
    assert spec.train.fixed(ways=2).grouping == "within"
    with pytest.raises(ValueError, match=r"episode_grouping must be one of \['any', "
                                         r"'within'\]; got 'alphabet'"):
        config_lib.validate_config(config_lib.apply_overrides(
            config, ["episode_grouping=alphabet"]))
    with pytest.raises(ValueError, match=r"data.class_depth must be an integer in \[1, 100\]"):
        config_lib.validate_config(config_lib.apply_overrides(
            config, ["episode_grouping=any", "data.class_depth=0"]))
    recorded = config_lib.get_config("protonet", "omniglot").to_dict()
    del recorded["episode_grouping"]  # a run recorded before the field existed
    assert DataSpec.from_config(ml_collections.ConfigDict(migrate(recorded))).train.grouping \
        == "any"


def test_a_learner_draws_its_training_episodes_within_groups():
    from tfmeta.algorithms import recipe_of

    config = config_lib.apply_overrides(config_lib.get_config("protonet", "omniglot"), [
        "model.filters=2", "episode_grouping=within", "ways=3", "shots=1", "queries=1",
        "eval_ways=7", "meta_batch_size=2", "val_episodes=2", "augment.rotation=0.0",
        "augment.scale=0.0", "augment.shift=0.0"])  # (which would blur the class's pixels)
    classes = grouped_classes(image_shape=(16, 16, 1))
    dataset = FewShotDataset("toy", {"train": classes, "val": classes}, (16, 16, 1),
                             lambda x: x)
    learner = recipe_of("protonet").build(config, dataset.input_shape)
    train, validation = learner.training_episodes(dataset, DataSpec.from_config(config))
    episodes = [{"support_images": b["support_images"][e]} for b in train.take(20)
                for e in range(2)]
    assert set(groups_drawn(classes, episodes)) == {"big", "mid"}
    # Validation draws from any classes: 7 ways, more than any one group has.
    validation_classes = classes_of({"support_images": next(iter(validation))[
        "support_images"][0]})
    assert len(validation_classes) == 7


# -------------------------------------------------------------- bin/evaluate.py
@pytest.mark.parametrize("algo", ["leo", "mann", "reptile_gan", "maml_rl", "maml_regression"])
def test_within_group_refuses_learners_with_a_meta_test_of_their_own(algo):
    from tfmeta.algorithms import learner_class
    from tfmeta.algorithms.maml_regression import MAMLRegression
    from tfmeta.training.evaluation import within_group_spec

    cls = MAMLRegression if algo == "maml_regression" else learner_class(algo)
    spec = DataSpec.from_config(config_lib.get_config("protonet", "omniglot"))
    with pytest.raises(ValueError, match=rf"--within_group: {cls.__name__} has a meta-test "
                                         r"of its own .*does not draw episodes within groups"):
        within_group_spec(cls.__new__(cls), spec)
    protonet = learner_class("protonet")
    assert within_group_spec(protonet.__new__(protonet), spec).test.grouping == "within"


@pytest.mark.slow
def test_evaluate_within_group_end_to_end(tmp_path):
    from tfmeta.training import evaluation, preflight, trainer

    config = config_lib.apply_overrides(config_lib.get_config("protonet", "omniglot"), [
        "model.filters=4", "model.num_blocks=3", "data.image_size=14", "num_steps=2", "log_every=2",
        "checkpoint_every=2", "val_episodes=2", "eval_meta_batch_size=2", "meta_batch_size=2",
        "queries=1", "episode_grouping=within"])
    workdir = str(tmp_path / "run")
    trainer.train(config, workdir, verbose=0)
    result = evaluation.evaluate_workdir(workdir, num_episodes=4, ways=20, within_group=True)
    with open(os.path.join(workdir, "eval.json")) as f:
        written = json.load(f)
    assert written["grouping"] == result["grouping"] == "within"
    assert (written["ways"], written["shots"], written["episodes"]) == (20, 1, 4)
    assert evaluation.evaluate_workdir(workdir, num_episodes=4)["grouping"] == "any"
    # The test split's largest alphabet bounds the ways of episodes within one.
    sizes = collections.Counter(
        load_dataset("omniglot", image_size=14).split("test").class_groups)
    largest, size = sizes.most_common(1)[0]
    with pytest.raises(ValueError, match=rf"'{largest}', has {size} classes; use ways "
                                         rf"<= {size}"):
        evaluation.evaluate_workdir(workdir, num_episodes=4, ways=size + 1, within_group=True)
    # episode_grouping names the experiment: resuming with another is refused, and a run
    # recorded before the field existed resumes.
    with pytest.raises(ValueError, match="episode_grouping='within'"):
        preflight.check_workdir_config(config_lib.apply_overrides(
            config, ["episode_grouping=any"]), workdir)
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        recorded = json.load(f)
    del recorded["episode_grouping"]
    with open(path, "w") as f:
        json.dump(recorded, f)
    preflight.check_workdir_config(config, workdir)

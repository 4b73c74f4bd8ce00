"""Per-class records (bin/convert.py; `tfmeta.data.record_writer`, `record_store`,
`record_stream`): the round trip, and episodes streamed from them: deterministic, resumed
bitwise, shared disjointly by workers, drawn from one source at a time, in bounded memory."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfmeta.data import (
    ClassImages,
    EpisodeShape,
    FewShotDataset,
    VariableEpisodes,
    episode_dataset,
    from_arrays,
    record_format,
    record_store,
    record_stream,
    record_writer,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def coded_images(classes=12, per_class=8, size=12, seed=0):
    """uint8 images whose pixel (0, 0) holds the class and (0, 1) the index in the class."""
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, (classes * per_class, size, size, 3)).astype(np.uint8)
    labels = np.repeat(np.arange(classes), per_class)
    images[:, 0, 0, 0] = labels
    images[:, 0, 1, 0] = np.tile(np.arange(per_class), classes)
    return images, labels


@pytest.fixture(scope="module")
def source():
    images, labels = coded_images()
    return from_arrays(images, labels, split_fractions=(0.5, 0.25, 0.25))


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("records") / "r")
    record_writer.convert(source, folder, threads=2)
    return folder


def multiset(examples):
    return sorted(e.tobytes() for e in examples)


def test_round_trip_keeps_every_example_class_and_split(source, converted):
    loaded = record_store.load(converted)
    assert set(loaded.splits) == set(source.splits)
    for split, classes in source.splits.items():
        streamed = loaded.split(split)
        assert streamed.class_names == classes.class_names
        np.testing.assert_array_equal(streamed.class_counts, classes.class_counts)
        for i in range(classes.num_classes):
            assert multiset(streamed.stored_examples(i)) == multiset(classes.stored_examples(i))
            # The model inputs: the loader's normalization, reproduced from the spec.
            np.testing.assert_allclose(streamed.inputs(classes.stored_examples(i)),
                                       classes.class_examples(i), atol=1e-5)
    # A served image is preprocessed as the records' examples are.
    raw = source.split("train").stored_examples(0)[:3].astype(np.float32) / 255
    np.testing.assert_allclose(loaded.preprocess(raw), source.preprocess(raw), atol=1e-5)
    assert loaded.raw_shape == source.raw_shape and loaded.file_decoding() == \
        source.file_decoding()


def test_tensor_examples_round_trip_exactly(tmp_path):
    rng = np.random.RandomState(1)
    per_class = [rng.normal(size=(n, 7)).astype(np.float32) for n in (3, 5, 4, 6, 5, 4)]
    split = lambda i, j: ClassImages.from_lists(per_class[i:j])  # noqa: E731
    dataset = FewShotDataset("vectors", {"train": split(0, 4), "test": split(4, 6)}, (7,),
                             lambda x: x, value_range=None)
    record_writer.convert(dataset, str(tmp_path / "r"))
    loaded = record_store.load(str(tmp_path / "r"))
    assert json.load(open(tmp_path / "r" / record_format.SPEC_FILE))["encoding"] == "tensor"
    for i in range(4):
        assert multiset(loaded.split("train").stored_examples(i)) == multiset(per_class[i])


def test_an_interrupted_conversion_resumes_and_other_data_is_refused(source, tmp_path):
    folder = str(tmp_path / "r")
    record_writer.convert(source, folder)
    spec_path = os.path.join(folder, record_format.SPEC_FILE)
    spec = json.load(open(spec_path))
    # As if killed after some classes: the spec still partial, two class files not there.
    os.replace(spec_path, spec_path + ".partial")
    missing = [os.path.join(folder, e["file"]) for e in spec["classes"][:2]]
    kept = os.path.join(folder, spec["classes"][3]["file"])
    kept_mtime = os.stat(kept).st_mtime_ns
    for path in missing:
        os.remove(path)
    with pytest.raises(FileNotFoundError, match="did not finish.*rerun bin/convert.py"):
        record_store.load(folder)
    record_writer.convert(source, folder)
    assert all(os.path.exists(p) for p in missing) and os.stat(kept).st_mtime_ns == kept_mtime
    assert record_store.load(folder).split("train").num_classes == source.split("train").num_classes
    images, labels = coded_images(seed=5)
    other = from_arrays(images, labels, split_fractions=(0.5, 0.25, 0.25))
    with pytest.raises(ValueError, match="already holds records of other data"):
        record_writer.convert(other, folder)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is not empty"):
        record_writer.convert(source, str(tmp_path / "busy"))


def decode_codes(episodes, loaded):
    """(class code, index code) of every support and query image, from the normalized
    inputs: pixel (0, 0, 0) holds the class, (0, 1, 0) the index."""
    transform = loaded.split("train").transform
    scale = transform(tf.ones([1, 1, 1, 3])) - transform(tf.zeros([1, 1, 1, 3]))
    offset = transform(tf.zeros([1, 1, 1, 3]))
    codes = {}
    for key in ("support_images", "query_images"):
        pixels = (episodes[key].numpy() - offset.numpy()[0, 0, 0]) / scale.numpy()[0, 0, 0]
        codes[key] = np.rint(pixels[..., 0, :2, 0] * 255).astype(int)
    return codes


def stream(loaded, split="train", ways=3, shots=2, queries=2, sampler="fixed", variable=None,
           grouping="any", **kwargs):
    options = dict(meta_batch_size=4, seed=5)
    options.update(kwargs)
    shape = EpisodeShape(ways, shots, queries, sampler=sampler, variable=variable,
                         grouping=grouping)
    return episode_dataset(loaded.split(split), shape, **options)


def test_streamed_episodes_hold_their_classes_without_repeats(source, converted):
    loaded = record_store.load(converted)
    names = loaded.split("train").class_names
    class_codes = {int(n) for n in names}
    seen = set()
    for batch in stream(loaded).take(8):  # 6 classes of 8: every class stream wraps around
        codes = decode_codes(batch, loaded)
        for b in range(4):
            support, query = codes["support_images"][b], codes["query_images"][b]
            for labels, code in ((batch["support_labels"][b], support),
                                 (batch["query_labels"][b], query)):
                for label in range(3):  # one class per label, a class of the split
                    members = {tuple(c) for c in code[labels.numpy() == label]}
                    assert len({c for c, _ in members}) == 1
                    assert next(iter(members))[0] in class_codes
            pairs = [tuple(c) for c in np.concatenate([support, query])]
            assert len(pairs) == len(set(pairs)), "an example twice in one episode"
            seen.update(pairs)
    assert len(seen) == sum(loaded.split("train").class_counts)  # every record comes round


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_streams_are_deterministic_resume_bitwise_and_split_over_workers(converted):
    loaded = record_store.load(converted)
    whole = list(stream(loaded).take(7))
    assert_same(whole, list(stream(loaded).take(7)))
    assert_same(whole[4:], list(stream(loaded, start_step=4).take(3)))
    shares = [list(stream(loaded, worker=w, workers=2).take(7)) for w in range(2)]
    joined = [{k: np.concatenate([shares[0][i][k], shares[1][i][k]]) for k in whole[i]}
              for i in range(7)]
    assert_same(whole, joined)
    other_seed = list(stream(loaded, seed=6).take(2))
    assert not np.array_equal(other_seed[0]["support_images"], whole[0]["support_images"])


def test_variable_episodes_stream_within_the_sampler_bounds(converted):
    loaded = record_store.load(converted)
    spec = VariableEpisodes(min_ways=2, max_ways=5, max_queries=3, max_support=12)
    options = dict(sampler="variable", variable=spec, meta_batch_size=2)
    batches = list(stream(loaded, **options).take(6))
    assert_same(batches[3:], list(stream(loaded, start_step=3, **options).take(3)))
    counts = loaded.split("train").class_counts
    for batch in batches:
        assert batch["support_images"].shape[1] == spec.support_slots
        assert batch["query_images"].shape[1] == spec.query_slots
        for support, query in zip(batch["support_labels"].numpy(),
                                  batch["query_labels"].numpy()):
            ways = support.max() + 1
            assert 2 <= ways <= min(5, len(counts)) and (support >= 0).sum() <= 12
            per_class = np.bincount(query[query >= 0], minlength=ways)
            assert per_class.min() == per_class.max() <= 3


def test_each_episode_draws_from_one_source(tmp_path):
    folders = []
    for seed, offset in ((0, 0), (1, 100)):  # source 2's class codes start at 100
        images, labels = coded_images(classes=8, seed=seed)
        images[:, 0, 0, 0] = labels + offset
        data = from_arrays(images, labels + offset,
                                          split_fractions=(0.75, 0.125, 0.125))
        folders.append(str(tmp_path / f"s{seed}"))
        record_writer.convert(data, folders[-1])
    loaded = record_store.load(",".join(folders), source_weights=(1, 3), normalize=False)
    assert loaded.split("train").num_classes == 12
    sources = []
    for batch in stream(loaded, ways=2, shots=1, queries=1).take(15):
        codes = decode_codes(batch, loaded)["support_images"][..., 0]
        high = codes >= 100
        assert (high.all(axis=1) | (~high).all(axis=1)).all()  # one source per episode
        sources += list(high[:, 0])
    assert 0.55 < np.mean(sources) < 0.95  # weights 1:3
    with pytest.raises(ValueError, match="one positive weight per records folder"):
        record_store.load(",".join(folders), source_weights=(1,))


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        record_store.load(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"no {record_format.SPEC_FILE}.*bin/convert.py"):
        record_store.load(str(tmp_path))
    (tmp_path / record_format.SPEC_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        record_store.load(str(tmp_path))


def run_command(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_convert_train_and_evaluate_from_the_command_line(tmp_path):
    """bin/convert.py on a folder of class folders, then ProtoNet streamed from the records."""
    images, labels = coded_images(classes=10, per_class=5, size=20)
    for i, (image, label) in enumerate(zip(images, labels)):
        (tmp_path / "photos" / f"class{label}").mkdir(parents=True, exist_ok=True)
        tf.io.write_file(str(tmp_path / "photos" / f"class{label}" / f"{i}.png"),
                         tf.io.encode_png(image))
    out = tmp_path / "records"
    convert = ["bin/convert.py", "--dataset=folder", f"--data_dir={tmp_path / 'photos'}",
               f"--output_dir={out}", "--set=data.image_size=16",
               "--set=data.split_fractions=(0.6, 0.2, 0.2)"]
    done = run_command(*convert)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train 6 classes / 30 records" in done.stdout
    refused = run_command(*convert, "--set=ways=3")
    assert refused.returncode == 2 and "only loader options" in refused.stderr
    run = tmp_path / "run"
    trained = run_command("bin/train.py", "--algo=protonet", "--dataset=records",
                          f"--data_dir={out}", f"--workdir={run}", "--num_steps=4",
                          "--export=false", "--set=log_every=2", "--set=val_episodes=4",
                          "--set=model.filters=8", "--set=ways=2", "--set=queries=2",
                          "--set=eval_ways=2")
    assert trained.returncode == 0, trained.stderr[-2000:]
    evaluated = run_command("bin/evaluate.py", f"--workdir={run}", "--episodes=10")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert (result["dataset"], result["episodes"], result["ways"]) == ("records", 10, 2)


@pytest.mark.slow
def test_a_dataset_larger_than_the_trainer_may_use_trains_in_bounded_memory(tmp_path):
    """3 GB of decoded 224x224 images train with a peak resident size under a third of that
    (measured 887 MB on this machine, records_rss_3gb: TensorFlow itself and the model's
    activations)."""
    from tfmeta.benchmarking.records import train_streamed, write_synthetic_records

    decoded = write_synthetic_records(str(tmp_path / "r"), classes=50, per_class=400, size=224)
    assert decoded > 3e9
    peak_mb = train_streamed(str(tmp_path / "r"), str(tmp_path / "run"), steps=5)
    assert peak_mb * 2 ** 20 < decoded / 2.5, peak_mb


def test_pretraining_batches_stream_labelled_examples_and_resume(converted):
    from tfmeta.algorithms.pretrain import example_batches

    loaded = record_store.load(converted, normalize=False)
    train = loaded.split("train")
    batches = list(example_batches(train, 6, seed=2).take(4))
    resumed = list(example_batches(train, 6, seed=2, start_step=2).take(2))
    for a, b in zip(batches[2:], resumed):
        np.testing.assert_array_equal(a["images"], b["images"])
    for batch in record_stream.stream_examples(train, 6, seed=2).take(4):  # (before crop and flip)
        codes = np.rint(batch["images"].numpy()[:, 0, 0, 0] * 255).astype(int)
        names = [int(train.class_names[i]) for i in batch["labels"].numpy()]
        assert list(codes) == names  # each image under its own class's label


def test_records_stream_from_a_gfile_url(converted):
    """Any `tf.io.gfile` file system (gs://, s3://, here TensorFlow's in-memory ram://)."""
    # (Sorted: TensorFlow's ram:// file system writes an empty file at a path that another
    # file's name extends, such as a record file after its index.)
    for path in sorted(tf.io.gfile.glob(converted + "/*") + tf.io.gfile.glob(converted + "/*/*")):
        if not tf.io.gfile.isdir(path):
            target = "ram://records_test/" + os.path.relpath(path, converted)
            tf.io.gfile.makedirs(os.path.dirname(target))
            tf.io.gfile.copy(path, target, overwrite=True)
    remote, local = record_store.load("ram://records_test"), record_store.load(converted)
    assert remote.data_dir == "ram://records_test"
    assert_same(list(stream(remote).take(2)), list(stream(local).take(2)))

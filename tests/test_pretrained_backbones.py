"""Backbones from outside tfmeta (tfmeta.models.external), what trains (tfmeta.models.blocks)
and a frozen backbone's cached features (tfmeta.training.features).

No machine here can download weights, so the tests build small models themselves and load
them through the real loading code: a KerasHub ViT and ResNet saved with `save_to_preset`
and read back with `Backbone.from_preset(folder)`, a keras.applications model with
`weights=None` and with a weights file the test wrote, a `.keras` file."""

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta import config as config_lib
from tfmeta.algorithms.anil import ANIL
from tfmeta.algorithms.prototypical import PrototypicalNetwork
from tfmeta.data import ClassImages, FewShotDataset
from tfmeta.models import backbone_from_config, blocks, external, resolved_fields
from tfmeta.models.heads import on_features
from tfmeta.training import features

keras_hub = pytest.importorskip("keras_hub")
rng = np.random.default_rng(0)


# ------------------------------------------------------------------ small models, saved
@pytest.fixture(scope="module")
def vit_preset(tmp_path_factory):
    """A 3-layer ViT preset with its image converter (32x32, scale 1/127.5, offset -1)."""
    folder = str(tmp_path_factory.mktemp("vit_preset"))
    keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=3,
                                 num_heads=2, hidden_dim=16, mlp_dim=32).save_to_preset(folder)
    keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5,
                                       offset=-1.0).save_to_preset(folder)
    return folder


@pytest.fixture(scope="module")
def resnet_preset(tmp_path_factory):
    """A 2-stack ResNet preset without an image converter (a CNN feature map)."""
    folder = str(tmp_path_factory.mktemp("resnet_preset"))
    keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2],
        block_type="basic_block").save_to_preset(folder)
    return folder


def images(count, side=28, channels=1, seed=0):
    return np.random.default_rng(seed).uniform(size=(count, side, side, channels)).astype(
        np.float32)


# ------------------------------------------------------------------ KerasHub presets
def test_a_vit_preset_folder_loads_with_its_converter_and_gives_its_class_token(vit_preset,
                                                                                caplog):
    with caplog.at_level(logging.INFO):
        model = backbone_from_config({"name": f"keras_hub:{vit_preset}"}, (28, 28, 1))
    assert "converting the dataset's grey images" in caplog.text
    layer = model.get_layer("preprocessing")
    # The converter's x * (1/127.5) - 1 on 0..255 pixels is (x - 127.5) / 127.5.
    assert layer.image_size == 32 and layer.mean == [127.5] * 3 and layer.std == [127.5] * 3
    assert model.get_layer("pool").mode == "cls"
    x = images(2)
    # By hand: grey -> RGB, resized to 32 (antialiased bilinear), mapped to [-1, 1], and the
    # ViT's first token.
    rgb = tf.image.resize(np.repeat(x, 3, -1), (32, 32), antialias=True)
    core = keras_hub.models.Backbone.from_preset(vit_preset)
    expected = core(255.0 * rgb / 127.5 - 1.0)[:, 0]
    np.testing.assert_allclose(model(x), expected, atol=1e-5)


def test_a_cnn_preset_without_converter_is_average_pooled_in_0_1(resnet_preset, caplog):
    with caplog.at_level(logging.WARNING):
        model = backbone_from_config({"name": f"keras_hub:{resnet_preset}"}, (20, 20, 3),
                                     num_classes=4)
    assert "has no image converter" in caplog.text
    assert model.get_layer("pool").mode == "avg" and model.output_shape == (None, 4)
    assert model.get_layer("preprocessing").image_size is None  # any size: the data's own
    assert model(images(3, 20, 3)).shape == (3, 4)


def test_preset_errors_are_one_line_each(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="Unknown KerasHub preset 'no_such_preset'.*"
                                         "keras_hub.models.Backbone.presets"):
        external.check_name("keras_hub:no_such_preset")
    with pytest.raises(ValueError, match="is not a KerasHub preset folder .it has no config.json"):
        external.check_name(f"keras_hub:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="No KerasHub preset folder"):
        external.check_name(f"keras_hub:{tmp_path}/missing")
    text_preset = str(tmp_path / "bert")
    keras_hub.models.BertBackbone(vocabulary_size=10, num_layers=1, num_heads=1, hidden_dim=4,
                                  intermediate_dim=8, max_sequence_length=8).save_to_preset(
        text_preset)
    with pytest.raises(ValueError, match="is a BertBackbone, not an image backbone"):
        backbone_from_config({"name": f"keras_hub:{text_preset}"}, (28, 28, 3))

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)
    with pytest.raises(OSError, match="no network\\? ConnectionError.*kagglehub.model_download\\('keras/dinov2/"
                                      ".*--set=model.name=keras_hub:<that folder>"):
        external.load_preset("dinov2_small")


# ------------------------------------------------------------------ keras.applications
@pytest.mark.parametrize("application, channel_order, mean, std", [
    ("ResNet50", "bgr", [103.939, 116.779, 123.68], [1.0, 1.0, 1.0]),       # "caffe"
    ("MobileNetV2", "rgb", [127.5] * 3, [127.5] * 3),                       # "tf": [-1, 1]
    ("DenseNet121", "rgb", [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),  # "torch"
    ("EfficientNetV2B0", "rgb", [0.0] * 3, [1.0] * 3),                      # takes 0..255
])
def test_preprocess_input_is_read_off_each_family(application, channel_order, mean, std):
    """The numbers of keras/src/applications/imagenet_utils.py's three modes (torch's: the
    ImageNet mean and std times 255), and the models that normalize inside."""
    found = external.application_preprocessing(application)
    assert found["channel_order"] == channel_order
    np.testing.assert_allclose(found["mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(found["std"], std, rtol=1e-5)


def test_the_in_graph_preprocessing_equals_the_family_s_preprocess_input():
    """ResNet50's Caffe preprocessing (RGB -> BGR, minus the mean) of 0..255 pixels, by the
    layer on [0, 1] images."""
    from keras.applications import resnet

    x = images(2, 8, 3)
    found = external.application_preprocessing("ResNet50")
    layer = external.ImagePreprocessing(None, 3, found["mean"], found["std"], "bgr")
    np.testing.assert_allclose(layer(x), resnet.preprocess_input(255.0 * x), atol=1e-3)


def test_an_application_loads_a_weights_file_the_test_wrote(tmp_path):
    weights = str(tmp_path / "mobilenet.weights.h5")
    trained = keras.applications.MobileNetV3Small(include_top=False, weights=None,
                                                  input_shape=(32, 32, 3))
    for variable in trained.trainable_variables[:3]:
        variable.assign(variable + 0.5)
    trained.save_weights(weights)
    section = {"name": "keras_applications:MobileNetV3Small", "weights": weights,
               "image_size": 32}
    model = backbone_from_config(section, (32, 32, 3))
    x = images(2, 32, 3)
    expected = tf.reduce_mean(trained(255.0 * x), axis=[1, 2]).numpy()  # (its own
    # preprocessing is inside; a randomly initialized MobileNet's features are ~1e-11)
    np.testing.assert_allclose(model(x), expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    random = backbone_from_config({**section, "weights": "none"}, (32, 32, 3))(x).numpy()
    assert np.abs(random - expected).max() > 0.5 * np.abs(expected).max()


def test_application_errors_are_one_line_each(tmp_path):
    with pytest.raises(ValueError, match="Unknown keras.applications model 'ResNet5'; its "
                                         "models: ConvNeXtBase.*keras.io/api/applications"):
        external.check_name("keras_applications:ResNet5")
    with pytest.raises(FileNotFoundError, match="model.weights=.*no file"):
        backbone_from_config({"name": "keras_applications:MobileNetV3Small",
                              "weights": str(tmp_path / "none.h5")}, (32, 32, 3))
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not weights")
    with pytest.raises(ValueError, match="does not load into it"):
        backbone_from_config({"name": "keras_applications:MobileNetV3Small",
                              "weights": str(bad), "image_size": 32}, (32, 32, 3))


# ------------------------------------------------------------------ a .keras file
def test_a_saved_keras_model_loads_and_a_non_image_model_is_refused(tmp_path):
    path = str(tmp_path / "backbone.keras")
    core = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, name="block1_conv"),
                             keras.layers.Conv2D(6, 3, name="block2_conv")])
    core.save(path)
    model = backbone_from_config({"name": f"file:{path}", "trainable": "last:1"}, (20, 20, 3))
    assert model.output_shape == (None, 6)  # RGB -> grey, 20 -> 16, averaged
    assert [v.path for v in model.trainable_variables] == ["block2_conv/kernel",
                                                          "block2_conv/bias"]
    vectors = str(tmp_path / "vectors.keras")
    keras.Sequential([keras.Input((10,)), keras.layers.Dense(3)]).save(vectors)
    with pytest.raises(ValueError, match="is not an image model: it takes inputs "
                                         r"\[\(None, 10\)\]"):
        backbone_from_config({"name": f"file:{vectors}"}, (20, 20, 3))
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="does not load as a Keras model"):
        backbone_from_config({"name": f"file:{junk}"}, (20, 20, 3))
    with pytest.raises(FileNotFoundError, match="no such file"):
        external.check_name(f"file:{tmp_path}/missing.keras")


def test_channels_that_do_not_convert_are_refused(tmp_path):
    path = str(tmp_path / "four.keras")
    keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3)]).save(path)
    with pytest.raises(ValueError, match="takes images of 3 channels, and this dataset has 2"):
        backbone_from_config({"name": f"file:{path}"}, (8, 8, 2))


# ------------------------------------------------------------------ what trains
def test_blocks_of_tfmeta_s_keras_hub_s_and_keras_applications_backbones(vit_preset):
    conv4 = backbone_from_config({"name": "conv4", "filters": 4}, (28, 28, 1), num_classes=5)
    assert [b.name for b in blocks.backbone_blocks(conv4)] == [f"block{i}" for i in (1, 2, 3, 4)]
    vit = backbone_from_config({"name": f"keras_hub:{vit_preset}"}, (32, 32, 3))
    names = [b.name for b in blocks.backbone_blocks(vit)]
    assert names == ["vit_patching_and_embedding", "transformer_block_1",
                     "transformer_block_2", "transformer_block_3"]
    assert [layer.name for layer in blocks.backbone_blocks(vit)[-1].layers] == [
        "transformer_block_3", "ln"]  # the final norm joins the last block
    resnet = keras.applications.ResNet50(include_top=False, weights=None,
                                         input_shape=(32, 32, 3))
    names = [b.name for b in blocks.backbone_blocks(resnet)]
    assert names[0] == "conv1_conv" and names[1] == "conv2_block1" and \
        names[-1] == "conv5_block3" and len(names) == 17  # the stem and 16 bottlenecks


def test_last_k_trains_the_last_blocks_and_the_head_only(vit_preset):
    model = backbone_from_config({"name": "conv4", "filters": 4, "trainable": "last:1"},
                                 (28, 28, 1), num_classes=5)
    assert sorted(v.path for v in model.trainable_variables) == sorted([
        "block4_conv/kernel", "block4_conv/bias", "block4_bn/gamma", "block4_bn/beta",
        "head/kernel", "head/bias"])
    frozen = backbone_from_config({"name": "conv4", "filters": 4, "trainable": "none"},
                                  (28, 28, 1), num_classes=5)
    assert sorted(v.path for v in frozen.trainable_variables) == ["head/bias", "head/kernel"]
    with pytest.raises(ValueError, match="last:5 asks for more blocks than the backbone "
                                         "'conv4' has: 4 blocks .block1, block2, block3, "
                                         "block4.; use last:K with K <= 4"):
        backbone_from_config({"name": "conv4", "filters": 4, "trainable": "last:5"},
                             (28, 28, 1))
    for bad in ("some", "last:0", "last:x"):
        with pytest.raises(ValueError, match="model.trainable must be all, none or last:K"):
            blocks.parse_trainable(bad)


def test_a_frozen_block_runs_batch_norm_in_inference_mode():
    """Keras's rule: a frozen batch norm normalizes with its moving statistics even when
    called with training=True, so a frozen backbone gives the same features either way."""
    model = backbone_from_config({"name": "conv4", "filters": 4, "trainable": "none"},
                                 (28, 28, 1))
    x = images(4)
    np.testing.assert_allclose(model(x, training=True), model(x, training=False), atol=1e-6)
    trainable = backbone_from_config({"name": "conv4", "filters": 4}, (28, 28, 1))
    assert not np.allclose(trainable(x, training=True), trainable(x, training=False))


# ------------------------------------------------------------------ configs
def test_a_config_names_external_backbones_and_turns_the_loader_s_normalization_off():
    config = config_lib.get_config("protonet", "folder")
    config = config_lib.apply_overrides(config, ["model.name=keras_applications:ConvNeXtTiny",
                                                 "model.trainable=last:2"])
    assert config.data.normalize is False and "filters" not in config.model
    config_lib.validate_config(config)
    bad = config_lib.apply_overrides(config, ["data.normalize=True"])
    with pytest.raises(ValueError, match="normalizes images in .0, 1. itself"):
        config_lib.validate_config(bad)
    wrong = config_lib.apply_overrides(config_lib.get_config("protonet", "omniglot"),
                                       ["model.trainable=top"])
    with pytest.raises(ValueError, match="model.trainable must be all, none or last:K"):
        config_lib.validate_config(wrong)
    with pytest.raises(ValueError, match="Unknown keras.applications model 'Nope'"):
        config_lib.validate_config(config_lib.apply_overrides(
            config_lib.get_config("protonet", "omniglot"),
            ["model.name=keras_applications:Nope"]))


def test_resolved_fields_record_the_backbone_s_own_size_and_normalization(vit_preset):
    fields = resolved_fields({"name": "keras_applications:InceptionV3", "weights": "none"},
                             (28, 28, 1))
    assert fields["image_size"] == 299 and fields["preprocessing"]["mean"] == [127.5] * 3
    relative = os.path.relpath(vit_preset)
    fields = resolved_fields({"name": f"keras_hub:{relative}"}, (28, 28, 1))
    assert fields["name"] == f"keras_hub:{vit_preset}" and fields["image_size"] == 32


# ------------------------------------------------------------------ frozen: features once
def small_dataset():
    """Six classes of five 12x12 grey images, three per split (train, val, test)."""
    data = images(30, 12).reshape(6, 5, 12, 12, 1)
    splits = {name: ClassImages.from_dense(data[2 * i:2 * i + 2],
                                           [f"{name}{k}" for k in range(2)])
              for i, name in enumerate(("train", "val", "test"))}
    return FewShotDataset("arrays", splits, (12, 12, 1), lambda x: tf.convert_to_tensor(x),
                          "six classes")


def frozen_config(path):
    config = config_lib.get_config("protonet", "omniglot")
    return config_lib.apply_overrides(config, [f"model.name=file:{path}",
                                               "model.trainable=none"])


@pytest.fixture
def saved_grey_backbone(tmp_path):
    path = str(tmp_path / "grey.keras")
    keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Conv2D(3, 3, name="block1_conv"),
                      keras.layers.GlobalAveragePooling2D()]).save(path)
    return path


def test_frozen_features_are_computed_once_cached_and_exported_with_the_backbone(
        saved_grey_backbone, tmp_path, monkeypatch):
    from tfmeta.training.export import export_learner

    monkeypatch.setenv("TFMETA_CACHE", str(tmp_path / "cache"))
    dataset, config = small_dataset(), frozen_config(saved_grey_backbone)
    seen = features.frozen_features(config, dataset)
    backbone = features.frozen_backbone(config, (12, 12, 1))
    train = dataset.split("train")
    np.testing.assert_allclose(seen.split("train").images, backbone(train.images), atol=1e-5)
    assert seen.input_shape == (3,) and config.data_source.backbone
    assert len(os.listdir(tmp_path / "cache")) == 1
    calls = []
    monkeypatch.setattr(features, "_split_features", lambda *a: calls.append(a))
    again = features.frozen_features(frozen_config(saved_grey_backbone), dataset)  # cached
    assert not calls
    np.testing.assert_array_equal(again.split("test").images, seen.split("test").images)
    # The learner (ProtoNet on the features as they are) has nothing to train; its export
    # takes raw images and runs the backbone inside.
    learner = PrototypicalNetwork(on_features((3,)))
    assert not learner.trainable_variables
    export_learner(learner, seen, str(tmp_path / "export"))
    served = tf.saved_model.load(str(tmp_path / "export"))
    test = dataset.split("test")
    support, query = test.images[[0, 5]], test.images[[1, 2, 6]]
    logits = served.adapt_and_predict(support_images=support, support_labels=np.array([0, 1]),
                                      query_images=query)["logits"]
    expected = learner.adapt_and_predict(backbone(support), np.array([0, 1]), backbone(query))
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_a_frozen_backbone_whose_weights_changed_is_refused(saved_grey_backbone):
    config = frozen_config(saved_grey_backbone)
    features.frozen_features(config, small_dataset())
    model = keras.saving.load_model(saved_grey_backbone)
    model.get_layer("block1_conv").kernel.assign(model.get_layer("block1_conv").kernel + 1.0)
    model.save(saved_grey_backbone)
    with pytest.raises(ValueError, match="has other weights than this run was trained with"):
        features.frozen_features(config, small_dataset())


def test_on_a_frozen_backbone_the_head_alone_trains():
    """ANIL (and MAML) on cached features: the backbone is a linear head over them."""
    config = frozen_config("/unused.keras")
    learner_config = features.learner_config(config)
    assert learner_config.model.to_dict() == {"name": "on_features"}
    assert config.model.name == "file:/unused.keras"  # the run's own config is unchanged
    head = backbone_from_config(learner_config.model, (3,), num_classes=5)
    anil = ANIL(head, head_layer="head")
    assert [v.path for v in anil.trainable_variables] == ["head/kernel", "head/bias"]


@pytest.mark.slow
def test_a_bad_backbone_on_the_command_line_is_one_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", "train.py"), "--algo=protonet",
         f"--workdir={workdir}", "--set=model.name=keras_applications:ResNet5"],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: model.name: Unknown keras.applications model 'ResNet5'; its models: ")
    assert not workdir.exists()


# ------------------------------------------------------------------ every learner
@pytest.fixture(scope="module")
def saved_cnn(tmp_path_factory):
    """A small grey CNN saved as a .keras file, two blocks: what a user trained elsewhere."""
    path = str(tmp_path_factory.mktemp("cnn") / "cnn.keras")
    keras.Sequential([keras.Input((14, 14, 1)),
                      keras.layers.Conv2D(4, 3, padding="same", name="block1_conv"),
                      keras.layers.BatchNormalization(name="block1_bn"),
                      keras.layers.ReLU(), keras.layers.MaxPooling2D(),
                      keras.layers.Conv2D(8, 3, padding="same", name="block2_conv"),
                      keras.layers.BatchNormalization(name="block2_bn"),
                      keras.layers.ReLU()]).save(path)
    return path


@pytest.mark.parametrize("algo, extra", [
    ("protonet", ()), ("matching", ()), ("relation", ("model.pooling=none",)),
    ("pretrain", ("learner.num_classes=10",)), ("maml", ("learner.inner_steps_test=1",)),
    ("anil", ()), ("metasgd", ("learner.inner_steps_test=1",)),
    ("maml_plusplus", ("learner.inner_steps=1", "learner.inner_steps_test=1")),
])
def test_every_learner_that_wraps_a_backbone_trains_only_its_last_block(
        algo, extra, saved_cnn, omniglot_small):
    """One meta-step of each learner around the saved CNN with `model.trainable=last:1`:
    the second block and the learner's own weights move, the first block does not."""
    from tfmeta.data import EpisodeShape, episode_dataset
    from tfmeta.training.run import build_compiled_learner

    config = config_lib.apply_overrides(config_lib.get_config(algo, "omniglot"), [
        f"model.name=file:{saved_cnn}", "model.trainable=last:1", "ways=5", *extra])
    config_lib.validate_config(config)
    learner = build_compiled_learner(config, (14, 14, 1))
    batch = next(iter(episode_dataset(omniglot_small.split("train"), EpisodeShape(5, 1, 2), 2,
                                          seed=3)))
    assert learner.query_logits(batch, training=False).shape[:2] == (2, 10)
    backbone = learner.feature_model()
    first = [v for v in backbone.variables if v.path.startswith("block1")]
    second = [v for v in backbone.trainable_variables if v.path.startswith("block2_conv")]
    assert first and second and not any(v.trainable for v in first)
    before = [v.numpy().copy() for v in first + second]
    if algo == "pretrain":
        batch = {"images": tf.reshape(batch["support_images"], (-1, 14, 14, 1)),
                 "labels": tf.reshape(batch["support_labels"], (-1,))}
    learner.train_step(batch)
    after = [v.numpy() for v in first + second]
    for value, old in zip(after[:len(first)], before):
        np.testing.assert_array_equal(value, old)
    assert any(not np.array_equal(value, old)
               for value, old in zip(after[len(first):], before[len(first):]))

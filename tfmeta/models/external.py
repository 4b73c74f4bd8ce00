"""Backbones from outside tfmeta: KerasHub presets, keras.applications and saved Keras models.

    --set=model.name=keras_hub:<preset name or local preset folder>
    --set=model.name=keras_applications:<Name>  [--set=model.weights=imagenet|none|<file>]
    --set=model.name=file:<path to a .keras model>

Each is wrapped into one plain Keras model that takes what tfmeta's datasets give (images
`[n, h, w, c]` in [0, 1]) and returns pooled features `[n, D]` (or `[n, num_classes]`
logits with a head named `head`, for the learners that want one):

    x = images                                      # [n, h, w, c] in [0, 1]
    x = grey_to_rgb(x) or rgb_to_grey(x)            # only where the channels differ
    x = resize(x, image_size)                       # bilinear, antialiased (as matrices)
    x = (255 * x[..., order] - mean) / std          # the backbone's own normalization
    f = pool(backbone(x))                           # "avg" of a CNN's feature map, a ViT's
                                                    # class token ("cls") or token "mean"
    logits = f @ W + b                              # with num_classes only

so the backbone's own input size and normalization run in the graph (in training, at
evaluation and inside the SavedModel export), and clients keep sending raw images.
`image_size` and `preprocessing` ({"mean", "std", "channel_order"}, in 0..255 units) are
the backbone's own unless given: a KerasHub preset's `ImageConverter`, a keras.applications
model's `preprocess_input` (read off by probing it: every family's is affine), a saved
model's inputs as they are (mean 0, std 255: [0, 1]). The trainer records the values it
used in the run's config.json (`resolved_fields`), so a run always reopens with them.

KerasHub is an extra (`pip install ".[hub]"`), imported only when a `keras_hub:` backbone
is asked for. Presets load from a local folder (what `Backbone.save_to_preset` or
`kagglehub.model_download` writes) or by name, which downloads them.
"""

from __future__ import annotations

import importlib
import logging
import os
import re

import keras
import numpy as np
import tensorflow as tf

from tfmeta.errors import UserError
from tfmeta.linear_images import matrix_resize

KINDS = ("keras_hub", "keras_applications", "file")
POOLINGS = ("auto", "avg", "cls", "mean", "none")
CHANNEL_ORDERS = ("rgb", "bgr")
WEIGHTS_HELP = "model.weights=imagenet (downloaded once), none (random) or <a weights file>"
# keras.applications models whose ImageNet weights were trained at another size than 224
# (each function's `default_size` in keras/src/applications).
DEFAULT_SIZES = {
    "InceptionV3": 299, "InceptionResNetV2": 299, "Xception": 299, "NASNetLarge": 331,
    "EfficientNetB1": 240, "EfficientNetB2": 260, "EfficientNetB3": 300, "EfficientNetB4": 380,
    "EfficientNetB5": 456, "EfficientNetB6": 528, "EfficientNetB7": 600,
    "EfficientNetV2B1": 240, "EfficientNetV2B2": 260, "EfficientNetV2B3": 300,
    "EfficientNetV2S": 384, "EfficientNetV2M": 480, "EfficientNetV2L": 480}
# KerasHub backbones whose token sequence starts with a class token (ViT says so itself).
CLASS_TOKEN_BACKBONES = ("DINOV2Backbone", "DINOV3Backbone", "DeiTBackbone",
                         "CLIPVisionEncoder", "MetaCLIP2VisionEncoder")
PRESET_NAMES_HINT = ("list the names with python -c \"import keras_hub; "
                     "print(sorted(keras_hub.models.Backbone.presets))\" (or "
                     "https://keras.io/keras_hub/presets/)")


def split_name(name: str) -> tuple:
    """`"keras_hub:dinov2_small"` -> ("keras_hub", "dinov2_small"); tfmeta's own -> (None, name)."""
    kind, separator, target = str(name).partition(":")
    if separator and kind in KINDS:
        if not target.strip():
            raise UserError(f"model.name={name!r} names no {kind} backbone; e.g. "
                            f"{example_name(kind)}.")
        return kind, target.strip()
    return None, name


def example_name(kind: str) -> str:
    return {"keras_hub": "keras_hub:dinov2_small or keras_hub:/models/dinov2_small",
            "keras_applications": "keras_applications:MobileNetV3Small",
            "file": "file:/models/backbone.keras"}[kind]


# ---------------------------------------------------------------- preprocessing
@keras.saving.register_keras_serializable(package="tfmeta")
class ImagePreprocessing(keras.layers.Layer):
    """Dataset images in [0, 1] -> a backbone's inputs (see the module docstring).

    Args:
      image_size: the side the backbone takes, or None to keep the images' own.
      channels: the backbone's input channels (1 or 3); grey and RGB convert either way.
      mean, std: per channel, in 0..255 units and the backbone's channel order.
      channel_order: "rgb", or "bgr" (Caffe-style backbones: VGG, keras's ResNet).
    """

    def __init__(self, image_size=None, channels=3, mean=(0.0, 0.0, 0.0),
                 std=(255.0, 255.0, 255.0), channel_order="rgb", **kwargs):
        super().__init__(**kwargs)
        self.image_size = None if image_size is None else int(image_size)
        self.channels = int(channels)
        self.mean = [float(v) for v in np.broadcast_to(mean, [self.channels])]
        self.std = [float(v) for v in np.broadcast_to(std, [self.channels])]
        self.channel_order = channel_order

    def call(self, images):
        x = tf.cast(images, tf.float32)
        present = x.shape[-1]
        if present == 1 and self.channels == 3:
            x = tf.repeat(x, 3, axis=-1)
        elif present == 3 and self.channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
            x = tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), -1, keepdims=True)
        if self.image_size is not None and tuple(x.shape[1:3]) != (self.image_size,) * 2:
            size = (self.image_size, self.image_size)
            # As matrix products where the input's size is known: the same numbers, in ops
            # LiteRT and ONNX have (`tfmeta.linear_images`; bin/export.py).
            x = (matrix_resize(x, size, antialias=True) if None not in x.shape[1:3] else
                 tf.image.resize(x, size, antialias=True))
        if self.channel_order == "bgr":
            x = x[..., ::-1]
        return (255.0 * x - tf.constant(self.mean)) / tf.constant(self.std)

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size,
                "channels": self.channels, "mean": self.mean, "std": self.std,
                "channel_order": self.channel_order}


@keras.saving.register_keras_serializable(package="tfmeta")
class FeaturePooling(keras.layers.Layer):
    """A backbone's output -> features: "avg" (feature map `[n, h, w, c]` -> `[n, c]`),
    "cls" (tokens `[n, t, d]` -> the first, a class token), "mean" (of the tokens) or
    "none" (as it is; Relation Networks compare feature maps)."""

    def __init__(self, mode="avg", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, outputs):
        if self.mode == "avg" and len(outputs.shape) == 4:
            return tf.reduce_mean(outputs, axis=[1, 2])
        if self.mode == "cls" and len(outputs.shape) == 3:
            return outputs[:, 0]
        if self.mode == "mean" and len(outputs.shape) == 3:
            return tf.reduce_mean(outputs, axis=1)
        return outputs

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def check_preprocessing(preprocessing, channels: int = 3) -> dict:
    """`model.preprocessing` as {"mean", "std", "channel_order"}: `channels` numbers each
    (or one for all), std > 0; a ValueError naming what is wrong."""
    if not hasattr(preprocessing, "items"):
        raise UserError(f"model.preprocessing must be a dict like {{'mean': [123.7, 116.3, "
                        f"103.5], 'std': [58.4, 57.1, 57.4], 'channel_order': 'rgb'}} (in "
                        f"0..255 units), or None for the backbone's own; got {preprocessing!r}.")
    preprocessing = dict(preprocessing)
    unknown = sorted(set(preprocessing) - {"mean", "std", "channel_order"})
    if unknown:
        raise UserError(f"model.preprocessing takes mean, std and channel_order; got {unknown}.")
    result = {"channel_order": preprocessing.get("channel_order", "rgb")}
    if result["channel_order"] not in CHANNEL_ORDERS:
        raise UserError(f"model.preprocessing channel_order must be one of {CHANNEL_ORDERS}; "
                        f"got {result['channel_order']!r}.")
    for key, default in (("mean", 0.0), ("std", 255.0)):
        try:
            values = np.broadcast_to(np.asarray(preprocessing.get(key, default), np.float64),
                                     [channels])
        except (TypeError, ValueError):
            values = np.array([np.nan])
        if not np.all(np.isfinite(values)) or (key == "std" and np.any(values <= 0)):
            raise UserError(f"model.preprocessing {key} must be {channels} finite numbers"
                            f"{' > 0' if key == 'std' else ''} (or one for all channels); "
                            f"got {preprocessing.get(key)!r}.")
        result[key] = [float(v) for v in values]
    return result


def affine_preprocessing(preprocess_input, label: str) -> dict:
    """{"mean", "std", "channel_order"} of a `preprocess_input(x in 0..255)` function that is
    `(x[..., order] - mean) / std` per channel, read off by probing it with a black and
    three primary pixels (and checked on a random one)."""
    probes = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.float32)
    out = np.asarray(preprocess_input(probes[None, None].copy()), np.float64)[0, 0]
    offset, gains = out[0], out[1:] - out[0]                   # gains[i, j]: input i -> j
    permutation = np.argmax(np.abs(gains), axis=0)            # output j reads input p[j]
    diagonal = gains[permutation, np.arange(3)]
    check = np.random.default_rng(0).uniform(0, 255, [1, 1, 3]).astype(np.float32)
    expected = check[0, 0, permutation] * diagonal / 255.0 + offset
    got = np.asarray(preprocess_input(check.copy()), np.float64)[0, 0]
    if sorted(permutation) != [0, 1, 2] or np.any(diagonal == 0) or \
            not np.allclose(got, expected, atol=1e-3):
        raise UserError(f"{label} is not a per-channel affine map; pass "
                        "--set=model.preprocessing={'mean': [...], 'std': [...]} instead.")
    order = "bgr" if list(permutation) == [2, 1, 0] else "rgb"
    if order == "rgb" and list(permutation) != [0, 1, 2]:
        raise UserError(f"{label} reorders the channels as {list(permutation)}; tfmeta "
                        "takes rgb or bgr only.")
    std = 255.0 / diagonal                                     # y = (x - mean) / std
    return {"channel_order": order, "mean": rounded(-offset * std), "std": rounded(std)}


def rounded(values) -> list:
    """Floats read off float32 arithmetic, to the 6 significant digits it carries."""
    return [float(f"{v:.6g}") for v in values]


# ---------------------------------------------------------------- the wrapper
def compose(core, input_shape, label: str, image_size, preprocessing: dict, pooling: str,
            num_classes=None) -> keras.Model:
    """The tfmeta backbone around `core` (see the module docstring)."""
    if len(input_shape) != 3:
        raise UserError(f"{label} takes images, but this dataset's examples have shape "
                        f"{tuple(input_shape)} (embeddings?); use an image dataset.")
    core_input, inputs_are_dict = image_input(core)
    channels = core_input.shape[-1] or 3
    present = input_shape[-1]
    if present != channels:
        if {present, channels} != {1, 3}:
            raise UserError(f"{label} takes images of {channels} channels, and this dataset "
                            f"has {present}; neither converts to the other (grey and RGB "
                            "do). Use data.channels=3 or a backbone of this dataset's channels.")
        logging.info("%s takes %s images; converting the dataset's %s images in the graph.",
                     label, "RGB" if channels == 3 else "grey", "grey" if present == 1 else "RGB")
    fixed = tuple(core_input.shape[1:3])
    if None not in fixed and fixed[0] != fixed[1]:
        raise UserError(f"{label} takes {fixed[0]}x{fixed[1]} images; tfmeta resizes to "
                        "square sides only.")
    size = fixed[0] if None not in fixed else image_size
    if image_size is not None and size != image_size:
        raise UserError(f"{label} takes {size}x{size} images, not model.image_size="
                        f"{image_size}; leave model.image_size unset.")
    if size is not None and size != input_shape[0]:
        logging.info("%s: resizing the dataset's %dx%d images to %dx%d in the graph.", label,
                     input_shape[0], input_shape[1], size, size)
    inputs = keras.Input(tuple(input_shape), name="images")
    x = ImagePreprocessing(size, channels, preprocessing["mean"], preprocessing["std"],
                           preprocessing.get("channel_order", "rgb"), name="preprocessing")(
        inputs)
    x = core({"images": x} if inputs_are_dict else x)
    if isinstance(x, dict):
        key = next((k for k in ("pooled_output", "sequence_output") if k in x), None)
        if key is None:
            raise UserError(f"{label} returns {sorted(x)}, none of them image features.")
        x = x[key]
    if len(x.shape) not in (2, 3, 4):
        raise UserError(f"{label} returns outputs of shape {x.shape}; image features are "
                        "[n, D], tokens [n, t, D] or a feature map [n, h, w, c].")
    mode = pooling_mode(core, len(x.shape), pooling, label)
    x = FeaturePooling(mode, name="pool")(x)
    if num_classes:
        if len(x.shape) != 2:
            raise UserError(f"A classification head needs pooled features; {label} with "
                            f"model.pooling={pooling!r} gives {x.shape}.")
        x = keras.layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, x, name=re.sub(r"[^A-Za-z0-9_]+", "_", label).strip("_"))


def image_input(core) -> tuple:
    """(the image input of `core`, whether it takes a dict `{"images": ...}` (KerasHub))."""
    if isinstance(core, keras.Sequential):
        return core.inputs[0], False
    structure = core.input
    if isinstance(structure, dict):
        return structure["images"], True
    return (structure[0] if isinstance(structure, list | tuple) else structure), False


def pooling_mode(core, rank: int, pooling: str, label: str) -> str:
    """What `model.pooling` means for outputs of `rank`: "auto" is "avg" for a feature map,
    "cls" for tokens that start with a class token, "mean" for other tokens."""
    if pooling not in POOLINGS:
        raise UserError(f"model.pooling must be one of {POOLINGS}; got {pooling!r}.")
    if pooling != "auto":
        wanted = {"avg": 4, "cls": 3, "mean": 3}.get(pooling)
        if wanted is not None and rank != wanted:
            raise UserError(f"model.pooling={pooling!r} pools "
                            f"{'a feature map' if wanted == 4 else 'tokens'}, but {label} "
                            f"returns outputs of rank {rank}; use model.pooling=auto.")
        return pooling
    if rank == 4:
        return "avg"
    if rank == 3:
        class_token = getattr(core, "use_class_token", None)
        if class_token is None:
            class_token = type(core).__name__ in CLASS_TOKEN_BACKBONES
        return "cls" if class_token else "mean"
    return "none"


# ---------------------------------------------------------------- keras.applications
def application_function(application: str):
    """`keras.applications.<application>`, or a ValueError listing the names."""
    names = sorted(n for n in dir(keras.applications) if n[:1].isupper())
    if application not in names:
        raise UserError(f"Unknown keras.applications model {application!r}; its models: "
                        f"{', '.join(names)} (keras.io/api/applications/).")
    return getattr(keras.applications, application)


def application_preprocessing(application: str) -> dict:
    """The application family's `preprocess_input`, as mean/std/channel order."""
    module = importlib.import_module(application_function(application).__module__)
    return affine_preprocessing(module.preprocess_input,
                                f"keras.applications {application}'s preprocess_input")


def weights_argument(weights):
    """`model.weights` -> keras.applications' `weights`: "imagenet", None, or a file path."""
    if weights is None or str(weights).strip().lower() in ("none", ""):
        return None
    if str(weights).strip().lower() == "imagenet":
        return "imagenet"
    path = os.path.abspath(os.path.expanduser(str(weights)))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.weights={weights!r}: no file {path}; use "
                                f"{WEIGHTS_HELP}.")
    return path


def keras_applications_backbone(application: str, input_shape, num_classes=None,
                                weights="imagenet", image_size=None, pooling="auto",
                                preprocessing=None) -> keras.Model:
    """`keras.applications.<application>` without its top, as a tfmeta backbone.

    Args:
      application: e.g. "MobileNetV3Small", "EfficientNetV2B0", "ConvNeXtTiny", "ResNet50".
      input_shape: the dataset's images `(h, w, c)`, values in [0, 1].
      num_classes: a linear head `head` with this many logits (learners that want one).
      weights: "imagenet", "none" or a weights file (`.weights.h5` of the model without its
        top, e.g. one a user trained).
      image_size: the side it runs at (default: its ImageNet size, 224 for most).
      pooling: "auto" (avg), "avg" or "none" (the feature map).
      preprocessing: {"mean", "std", "channel_order"} (default: its `preprocess_input`).
    """
    build = application_function(application)
    size = int(image_size or DEFAULT_SIZES.get(application, 224))
    label = f"keras_applications:{application}"
    source = weights_argument(weights)
    try:
        core = build(include_top=False, weights=source, input_shape=(size, size, 3))
    except ValueError as error:
        raise UserError(f"{label} at {size}x{size} with weights={weights!r}: "
                        f"{' '.join(str(error).split())[:300]}") from None
    except Exception as error:  # noqa: BLE001 - a failed download raises several kinds
        if source == "imagenet":
            raise OSError(f"{label}: could not fetch its ImageNet weights ({type(error).__name__}"
                          f": {' '.join(str(error).split())[:200]}). On a machine with network, "
                          f"run python -c \"import keras; keras.applications.{application}("
                          "include_top=False)\" once (Keras keeps the file in ~/.keras/models), "
                          "and copy that folder here, or pass model.weights=<the file>.") \
                from None
        raise UserError(f"{label}: model.weights={weights!r} does not load into it "
                        f"({type(error).__name__}: {' '.join(str(error).split())[:200]}); "
                        "the file must hold the weights of this model without its top.") \
            from None
    preprocessing = (check_preprocessing(preprocessing) if preprocessing is not None
                     else application_preprocessing(application))
    return compose(core, input_shape, label, size, preprocessing, pooling, num_classes)


# ---------------------------------------------------------------------- KerasHub
def import_keras_hub():
    try:
        import keras_hub
    except ImportError:
        raise ImportError("model.name=keras_hub:... needs KerasHub: pip install -e \".[hub]\" "
                          "(or pip install keras-hub).") from None
    return keras_hub


def preset_path(preset: str) -> str:
    """A local preset folder made absolute (so a run reopens it from anywhere); a name or a
    `kaggle://`, `hf://` handle as it is."""
    expanded = os.path.expanduser(preset)
    if "://" not in preset and (os.path.exists(expanded) or os.sep in preset
                                or preset.startswith(".")):
        return os.path.abspath(expanded)
    return preset


def check_preset(preset: str) -> None:
    """Refuses, before anything is built, a preset that is neither a folder holding a
    `config.json` nor a known preset name or handle."""
    if os.path.isabs(preset) or os.sep in preset:
        if not os.path.isdir(preset):
            raise FileNotFoundError(f"No KerasHub preset folder {preset}; pass a folder that "
                                    "Backbone.save_to_preset or kagglehub.model_download wrote, "
                                    f"or a preset name ({PRESET_NAMES_HINT}).")
        if not os.path.isfile(os.path.join(preset, "config.json")):
            raise UserError(f"{preset} is not a KerasHub preset folder (it has no config.json)"
                            "; pass the folder that Backbone.save_to_preset or "
                            "kagglehub.model_download wrote.")
        return
    if "://" in preset:
        return
    known = import_keras_hub().models.Backbone.presets
    if preset not in known:
        raise UserError(f"Unknown KerasHub preset {preset!r}: neither a preset name nor a "
                        f"folder; {PRESET_NAMES_HINT}.")


def download_hint(keras_hub, preset: str) -> str:
    handle = keras_hub.models.Backbone.presets.get(preset, {}).get("kaggle_handle", preset)
    handle = handle.removeprefix("kaggle://")
    return (f"on a machine with network run python -c \"import kagglehub; "
            f"print(kagglehub.model_download('{handle}'))\", copy the folder it prints here, "
            f"and pass --set=model.name=keras_hub:<that folder>")


def load_preset(preset: str, image_shape=None, load_weights: bool = True):
    """`keras_hub.models.Backbone.from_preset(preset)` (with `image_shape` where given), its
    vision tower where the preset is a two-tower model (CLIP, SigLIP)."""
    keras_hub = import_keras_hub()
    check_preset(preset)
    options = {"load_weights": load_weights}
    if image_shape is not None:
        options["image_shape"] = tuple(image_shape)
    try:
        core = keras_hub.models.Backbone.from_preset(preset, **options)
    except Exception as error:  # noqa: BLE001 - requests/kagglehub errors have many types
        name = type(error).__name__
        if isinstance(error, OSError) or any(w in name for w in ("Connection", "HTTP",
                                                                 "Timeout")):
            raise OSError(f"Could not fetch the KerasHub preset {preset!r} (no network? {name}: "
                          f"{' '.join(str(error).split())[:160]}); "
                          f"{download_hint(keras_hub, preset)}.") from None
        raise UserError(f"The KerasHub preset {preset!r} does not load ({name}: "
                        f"{' '.join(str(error).split())[:200]}).") from None
    core = getattr(core, "vision_encoder", None) or core
    inputs = core.input if isinstance(core.input, dict) else {"images": core.input}
    image_input = inputs.get("images")
    if image_input is None or len(inputs) != 1 or len(image_input.shape) != 4:
        raise UserError(f"The KerasHub preset {preset!r} is a {type(core).__name__}, not an "
                        f"image backbone (its inputs: {sorted(inputs)}); choose a vision "
                        "preset (ViT, DINOv2, ResNet, EfficientNet, CLIP, SigLIP ...).")
    return core


def preset_preprocessing(preset: str) -> tuple:
    """(image side or None, {"mean", "std", "channel_order"} or None) from the preset's
    `ImageConverter` (`x * scale + offset` on 0..255 pixels), where it has one."""
    keras_hub = import_keras_hub()
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception:  # noqa: BLE001 - a preset saved without an image converter
        return None, None
    size = converter.image_size[0] if getattr(converter, "image_size", None) else None
    scale = 1.0 if converter.scale is None else np.asarray(converter.scale, np.float64)
    offset = 0.0 if converter.offset is None else np.asarray(converter.offset, np.float64)
    return size, {"channel_order": "rgb",
                  "mean": rounded(np.broadcast_to(-offset / scale, [3])),
                  "std": rounded(np.broadcast_to(1.0 / scale, [3]))}


def keras_hub_backbone(preset: str, input_shape, num_classes=None, image_size=None,
                       pooling="auto", preprocessing=None) -> keras.Model:
    """A KerasHub vision backbone (`Backbone.from_preset`) as a tfmeta backbone.

    Args:
      preset: a preset name (downloaded once), handle or local preset folder.
      input_shape, num_classes: as `keras_applications_backbone`.
      image_size: its side; default the preset's image converter's, else its own input's,
        else the dataset's. A ViT built for another side cannot take it.
      pooling: "auto" ("cls" for ViT/DINOv2/CLIP-style tokens, "mean" for other tokens,
        "avg" for a CNN's feature map), "cls", "mean", "avg" or "none".
      preprocessing: {"mean", "std", "channel_order"}; default the preset's image converter
        (where it has none: images in [0, 1], with a warning).
    """
    return _keras_hub_backbone(preset, input_shape, num_classes, image_size, pooling,
                               preprocessing)


def _keras_hub_backbone(preset, input_shape, num_classes=None, image_size=None, pooling="auto",
                        preprocessing=None, load_weights: bool = True) -> keras.Model:
    preset = preset_path(preset)
    label = f"keras_hub:{preset}"
    own_size, own = preset_preprocessing(preset)
    core = load_preset(preset, load_weights=load_weights)
    fixed = image_input(core)[0].shape[1]
    if image_size is not None and fixed is not None and image_size != fixed:
        core = load_preset(preset, (image_size, image_size, 3), load_weights)
    if preprocessing is None and own is None:
        logging.warning("%s has no image converter: feeding it images in [0, 1]; set "
                        "model.preprocessing={'mean': [...], 'std': [...]} (0..255 units) if "
                        "it expects otherwise.", label)
    preprocessing = check_preprocessing(preprocessing if preprocessing is not None else
                                        own or {})
    return compose(core, input_shape, label, image_size or own_size, preprocessing, pooling,
                   num_classes)


# --------------------------------------------------------------- a saved model
def load_saved_model(path: str) -> keras.Model:
    """The Keras model in `path` (a `.keras` file), loaded in Keras's safe mode (no Python
    lambdas), checked to take images."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.name=file:{path}: no such file; pass a Keras model "
                                "saved with model.save('backbone.keras').")
    try:
        core = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - zip, JSON and deserialization errors alike
        raise UserError(f"model.name=file:{path} does not load as a Keras model "
                        f"({type(error).__name__}: {' '.join(str(error).split())[:200]}); "
                        "save the backbone with model.save('backbone.keras') (custom layers "
                        "need keras.saving.register_keras_serializable).") from None
    inputs = core.inputs if hasattr(core, "inputs") and core.inputs else []
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[-1] not in (1, 3):
        shapes = [tuple(i.shape) for i in inputs] or "unknown"
        raise UserError(f"model.name=file:{path} is not an image model: it takes inputs "
                        f"{shapes}; a backbone takes images [n, H, W, 1 or 3].")
    last = core.layers[-1]
    if isinstance(last, keras.layers.Dense) and getattr(last.activation, "__name__", "") == \
            "softmax":
        logging.warning("model.name=file:%s ends in a softmax classifier (%s); its features "
                        "are class probabilities. Save the backbone without its head.", path,
                        last.name)
    return core


def saved_backbone(path: str, input_shape, num_classes=None, image_size=None, pooling="auto",
                   preprocessing=None) -> keras.Model:
    """A saved Keras image model (a backbone trained elsewhere) as a tfmeta backbone.

    Args:
      path: its `.keras` file.
      input_shape, num_classes, pooling: as `keras_applications_backbone`.
      image_size: its side, where its input does not fix one (default: the dataset's).
      preprocessing: {"mean", "std", "channel_order"}; default images in [0, 1] as they
        are (mean 0, std 255).
    """
    core = load_saved_model(path)
    channels = core.inputs[0].shape[-1]
    preprocessing = check_preprocessing(preprocessing if preprocessing is not None else {},
                                        channels)
    return compose(core, input_shape, f"file:{os.path.abspath(path)}", image_size,
                   preprocessing, pooling, num_classes)


# ------------------------------------------------------------------- the registry
BUILDERS = {"keras_hub": keras_hub_backbone, "keras_applications": keras_applications_backbone,
            "file": saved_backbone}


def check_name(name: str) -> None:
    """Refuses, before anything is built, an external backbone name that cannot load (an
    unknown application or preset, a missing file or folder, KerasHub not installed)."""
    kind, target = split_name(name)
    if kind == "keras_applications":
        application_function(target)
    elif kind == "keras_hub":
        import_keras_hub()
        check_preset(preset_path(target))
    elif kind == "file":
        path = os.path.abspath(os.path.expanduser(target))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model.name=file:{path}: no such file; pass a Keras model "
                                    "saved with model.save('backbone.keras').")


def resolved_fields(model_section, input_shape) -> dict:
    """What a run records of an external backbone in config.json, so that it reopens with
    exactly these: the name with a local path made absolute, `image_size` and
    `preprocessing` (the backbone's own where the config left them None)."""
    section = dict(model_section)
    kind, target = split_name(section["name"])
    if kind is None:
        return {}
    check_name(section["name"])
    if kind == "file":
        target = os.path.abspath(os.path.expanduser(target))
    elif kind == "keras_hub":
        target = preset_path(target)
    fields = {"name": f"{kind}:{target}"}
    options = {k: v for k, v in section.items() if k in ("image_size", "pooling",
                                                         "preprocessing")}
    # Built without its pretrained weights where that is possible: only its inputs count.
    if kind == "keras_applications":
        backbone = keras_applications_backbone(target, tuple(input_shape), weights="none",
                                               **options)
    elif kind == "keras_hub":
        backbone = _keras_hub_backbone(target, tuple(input_shape), load_weights=False,
                                       **options)
    else:
        backbone = saved_backbone(target, tuple(input_shape), **options)
    layer = backbone.get_layer("preprocessing")
    fields["image_size"] = layer.image_size
    fields["preprocessing"] = {"mean": layer.mean, "std": layer.std,
                               "channel_order": layer.channel_order}
    return fields

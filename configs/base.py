"""Fields every tfmeta run has. Algorithm configs start from `get_config` here."""

import math
import re

import ml_collections
from ml_collections import config_dict


def parse_setting(setting: str):
    """'5w1s' -> (5, 1): N ways, K shots."""
    match = re.fullmatch(r"(\d+)w(\d+)s", setting or "")
    if not match:
        raise ValueError(f"A setting looks like '5w1s' (5-way 1-shot); got {setting!r}.")
    return int(match.group(1)), int(match.group(2))


def get_config(algo: str, dataset: str, setting: str = "5w1s") -> ml_collections.ConfigDict:
    ways, shots = parse_setting(setting)
    config = ml_collections.ConfigDict()
    config.algo = algo
    config.dataset = dataset
    config.setting = setting
    config.seed = 0
    # Loader options, passed to tfmeta.data.load_dataset(dataset, **data).
    config.data = ml_collections.ConfigDict()
    # Backbone: `name` in tfmeta.models.BACKBONES plus its keyword arguments ("none": the
    # learner takes the examples as they are).
    config.model = ml_collections.ConfigDict({"name": "conv4", "filters": 64})
    # The algorithm's constructor arguments.
    config.learner = ml_collections.ConfigDict()

    # Random affine augmentation of training examples (tfmeta.data.augment.RandomAffine):
    # shift as a fraction of the image size, rotation in degrees, scale as 1 +- scale.
    config.augment = ml_collections.ConfigDict(
        {"shift": 0.0, "rotation": 0.0, "scale": 0.0, "fill_mode": "constant", "fill_value": 0.0})
    # Meta-training episodes (train_shots: support examples per class while training,
    # None for `shots`; Reptile trains on more than it is tested with).
    config.ways = ways
    config.shots = shots
    config.train_shots = config_dict.placeholder(int)
    config.queries = 15
    config.meta_batch_size = 4
    # Meta-test episodes (None: same as training).
    config.eval_ways = config_dict.placeholder(int)
    config.eval_shots = config_dict.placeholder(int)
    config.eval_queries = config_dict.placeholder(int)
    config.eval_episodes = 600
    config.eval_meta_batch_size = 20
    config.val_episodes = 100
    # The episode sampler and its settings. name "fixed": the N-way K-shot episodes above.
    # "variable": Meta-Dataset's episodes for training, validation and meta-test alike (ways,
    # shots and queries drawn per episode within the bounds below, its published defaults;
    # see tfmeta.data.variable_sampling), for the learners that take them; ways, shots,
    # queries and their eval_* are then unused, as the bounds are with "fixed".
    config.episode_sampler = ml_collections.ConfigDict(
        {"name": "fixed", "min_ways": 5, "max_ways": 50, "max_queries": 10, "max_support": 500,
         "max_support_per_class": 100, "min_log_weight": math.log(0.5),
         "max_log_weight": math.log(2.0)})
    # "any": each training episode's classes are drawn from the whole split. "within": from
    # one group of classes (Omniglot's alphabets, data.class_depth=2 folders), drawn
    # uniformly among the groups with at least `ways` classes: harder, finer episodes
    # (tfmeta.data.fixed_sampling). Validation and meta-test stay "any" (bin/evaluate.py
    # --within_group asks for "within").
    config.episode_grouping = "any"

    # schedule: None (constant), "step" (x decay_rate every decay_steps) or "cosine"
    # (to 0 over decay_steps, default num_steps); see tfmeta.training.optimizer.
    config.optimizer = ml_collections.ConfigDict(
        {"name": "adam", "learning_rate": 1e-3, "clipnorm": config_dict.placeholder(float),
         "schedule": config_dict.placeholder(str), "decay_steps": config_dict.placeholder(int),
         "decay_rate": config_dict.placeholder(float)})
    config.num_steps = 60000
    config.checkpoint_every = 500  # steps between checkpoints
    config.log_every = 100  # steps per Keras epoch: validation, TensorBoard, progress line
    config.keep_checkpoints = 3
    config.strategy = "default"  # see tfmeta.training.strategy.STRATEGIES
    # multi_worker: seconds a task waits for the others to join before it stops, naming them.
    config.cluster_join_timeout = 300
    config.jit_compile = "auto"  # Keras resolves "auto" to False on CPU-only machines
    config.mixed_precision = False
    # How TensorFlow spends a CPU's cores: "ops" (each op on every core, TensorFlow's
    # default), "tasks" (each op on one core, a meta-batch's tasks side by side) or "auto"
    # (the learner's choice, logged; tfmeta.training.cpu_threads).
    config.cpu_threads = "auto"
    # Filled in by the trainer: where the data came from (resolved folder, None for the
    # loader's default), a fingerprint of its files and, where the loader chose the split
    # (a user's own data), the classes of each split, and with a frozen backbone
    # (model.trainable=none) a fingerprint of its weights, which the checkpoint does not
    # hold (tfmeta.training.features); evaluation and export use it.
    config.data_source = ml_collections.ConfigDict(
        {"data_dir": config_dict.placeholder(str), "fingerprint": config_dict.placeholder(str),
         "class_split": config_dict.placeholder(dict),
         "backbone": config_dict.placeholder(str)})
    return config

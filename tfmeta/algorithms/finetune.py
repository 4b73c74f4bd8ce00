"""Fine-tuning the backbone at test time: the "F" of P>M>F (Hu, Li, Stühmer, Kim and
Hospedales, "Pushing the Limits of Simple Pipelines for Few-Shot Learning: External Data and
Fine-Tuning Make a Difference", CVPR 2022).

https://arxiv.org/abs/2204.07305. Pre-train a backbone (P), meta-train ProtoNet from it (M),
then, for each test episode, fine-tune a copy of the backbone on that episode's support set
before classifying its queries (F). The support set is both the classifier (its prototypes,
recomputed from the current weights at every step) and, augmented, the pseudo-queries the
classifier is trained on; the queries are never seen before they are classified:

    for episode in meta_batch:                           # each from the learner's own weights
        fast, opt_state = params, optimizer.init(params) # the backbone's trainable weights
        for step in range(finetune_steps):
            pseudo_queries = augment(support_images, seed(episode, step))  # [S, H, W, C]
            logits = head(f(support_images; fast), support_labels,
                          f(pseudo_queries; fast))                         # [S, N]
            loss = query_loss(support_labels, logits)      # cross-entropy (Relation: MSE)
            fast, opt_state = optimizer.step(fast, grad(loss, fast), opt_state)
        logits = head(f(support_images; fast), support_labels, f(query_images; fast))  # [M, N]

`head` is the learner's own (`compare`: ProtoNet's prototypes, Matching's attention,
Relation's relation module; Pretrain's nearest centroid) and the loss its own `query_loss`
(cross-entropy, or Relation's regression onto one-hot targets). What the paper's code
(github.com/hushell/pmf_cvpr22, `models/deploy.py` `ProtoNet_Finetune`, `utils/args.py`,
`test_meta_dataset.py`) fixes, and what it is here:

  optimizer      Adam, betas (0.9, 0.999), no weight decay: `finetune_optimizer="adam"`
                 (`tfmeta.algorithms.inner_optimizers.InnerAdam`; "sgd" is plain steps).
  steps          `--ada_steps` 40 (its class default 50; its README runs 100):
                 `finetune_steps`, 0 (no fine-tuning) unless asked for.
  learning rate  chosen per domain from {0, 1e-4, 1e-3, 1e-2} on a few labelled episodes
                 (`LEARNING_RATE_GRID`; `bin/evaluate.py --select_finetune_lr`, on the val
                 split here); 0 means no fine-tuning. `finetune_lr` defaults to 1e-3, the
                 README's example and the middle of the grid (its argparse default, 5e-2,
                 lies outside the grid it searches).
  augmentation   DiffAugment: with probability 0.9 per step, a horizontal flip, colour jitter
                 (brightness, saturation, contrast) and a translation by up to 1/8 of the
                 side with zero fill: `finetune_augment="color_translate_flip"`. Here the
                 flip is drawn per image (the paper flips the whole batch at once), and
                 every draw is stateless, seeded by a fingerprint of the episode's support
                 images and the step: an episode is augmented alike wherever it is scored
                 (in any meta-batch, alone, by the export), every time.
  batch norm     inference mode (`training=False`) in every fine-tuning pass.

Only the backbone's trainable variables are fine-tuned (a layer with `trainable=False`,
e.g. under `model.trainable=last:K`, keeps its weights), through Keras 3 `stateless_call`
on fast weights: no variable of the learner is ever assigned, so evaluating or serving
leaves the learner as it was. Fine-tuning runs where `test_logits` is called, at meta-test
time and in serving (`meta_test`, `adapt_and_predict`, hence the SavedModel export); the
meta-validation after each training epoch and meta-training itself do not fine-tune.
Its cost: each step of each episode is a forward and a backward pass of the backbone over
2S images (the support set and its pseudo-queries); then one pass over the support set and
the queries.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta import heads, weights
from tfmeta.algorithms.episodic import EpisodicClassifier
from tfmeta.algorithms.inner_optimizers import make_inner_optimizer
from tfmeta.errors import UserError
from tfmeta.ranges import NON_NEGATIVE, NON_NEGATIVE_INT, Choice
from tfmeta.tensors import (
    absent_logit,
    embed_support_and_query,
    num_ways,
    real,
    real_positions,
    scatter_rows,
)

# What the pseudo-queries are: the support images as they are, or augmented.
FINETUNE_AUGMENTS = ("none", "translate", "translate_flip", "color_translate_flip")
FINETUNE_OPTIMIZERS = ("adam", "sgd")
# The paper's learning rates, searched per domain (test_meta_dataset.py); 0 = no fine-tuning.
LEARNING_RATE_GRID = (0.0, 1e-4, 1e-3, 1e-2)
DEFAULT_FINETUNE_LR = 1e-3
# DiffAugment's settings in the paper's code: `--aug_prob` and `rand_translation`'s ratio.
AUGMENT_PROBABILITY = 0.9
TRANSLATION = 0.125
# Adam's first-moment decay in the paper's code (PyTorch's default betas (0.9, 0.999)).
ADAM_BETA_1 = 0.9
# `test_head` for the learner's own rule (its `compare`), beside `tfmeta.heads.HEADS`.
OWN_HEAD = "own"
TEST_HEADS = (OWN_HEAD, *heads.HEADS)
# First word of every fine-tuning seed, apart from a learner's other stateless draws.
FINETUNE_SALT = 31
# The second word: a fingerprint of the support images in 0..2**62 - 1.
FINGERPRINTS = 2 ** 62


# ------------------------------------------------------------------ augmentation
def translate(images, pad: int, seed):
    """Each image `[n, H, W, C]` shifted by its own offset in -pad..pad along each axis, zero
    filled: a random crop of the zero-padded image."""
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    count = tf.shape(images)[0]
    offsets = tf.random.stateless_uniform([count, 2], seed, 0, 2 * pad + 1, tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None]                         # [n, H]
    cols = offsets[:, 1:] + tf.range(width)[None]                          # [n, W]
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2,
                     batch_dims=1)


def flip(images, seed):
    """Each image `[n, H, W, C]` flipped left-right with probability 1/2."""
    flipped = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5
    return tf.where(flipped[:, None, None, None], tf.reverse(images, [2]), images)


def color(images, seed):
    """DiffAugment's colour jitter, one draw per image and kind `u ~ U[0, 1)`:
    brightness `x + u - 0.5`, saturation `(x - mean_c x) * 2u + mean_c x` (channels),
    contrast `(x - mean x) * (u + 0.5) + mean x` (the whole image)."""
    draws = tf.random.stateless_uniform([3, tf.shape(images)[0], 1, 1, 1], seed)
    images = images + draws[0] - 0.5
    channel_mean = tf.reduce_mean(images, axis=3, keepdims=True)
    images = (images - channel_mean) * (2.0 * draws[1]) + channel_mean
    image_mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    return (images - image_mean) * (draws[2] + 0.5) + image_mean


def translation_pad(image_shape) -> int:
    """The paper's largest shift, `int(side * 1/8 + 0.5)` pixels (of the shorter side)."""
    return int(min(image_shape[0], image_shape[1]) * TRANSLATION + 0.5)


def augment(images, kind: str, seed):
    """Pseudo-queries from support images `[S, H, W, C]`: with probability
    `AUGMENT_PROBABILITY`, colour jitter (kind "color_..."), a translation and a flip
    ("..._flip"); else the images as they are. `kind` "none": the images as they are."""
    if kind == "none":
        return images
    draw = [tf.random.experimental.stateless_fold_in(seed, i) for i in range(4)]
    augmented = color(images, draw[0]) if kind.startswith("color") else images
    augmented = translate(augmented, translation_pad(images.shape[1:3]), draw[1])
    if kind.endswith("flip"):
        augmented = flip(augmented, draw[2])
    applied = tf.random.stateless_uniform([], draw[3]) < AUGMENT_PROBABILITY
    return tf.where(applied, augmented, images)


def episode_seed(support_images):
    """A `[2]` int64 seed that is a function of an episode's support images `[S, ...]`
    alone (their bytes, fingerprinted), so the same episode draws the same augmentations
    wherever it is fine-tuned."""
    fingerprint = tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(support_images),
                                                 FINGERPRINTS)
    return tf.stack([tf.constant(FINETUNE_SALT, tf.int64), fingerprint])


# --------------------------------------------------------------------- learners
class FineTuningClassifier(EpisodicClassifier):
    """A few-shot classifier on the features of a `backbone` that can fine-tune a
    copy of the backbone on each test episode's support set (see the module docstring).
    `EmbeddingLearner` (ProtoNet, Matching, Relation, Siamese) and `Pretrain` are; they
    write `compare`, their head, and this base writes the rest.

    Args:
      backbone: a built Keras model, images -> features `[n, *F]`.
      finetune_steps: fine-tuning steps per test episode; 0: none (the learner as trained).
      finetune_lr: the fine-tuning learning rate; 0: none.
      finetune_augment: the pseudo-queries: "none" (the support images) or the support
        images augmented ("translate", "translate_flip", "color_translate_flip": the
        paper's), each step with probability 0.9.
      finetune_optimizer: "adam" (the paper's) or "sgd".
      test_head: how the support set's features classify the queries at meta-test time and
        in serving: "own" (the learner's `compare`, as trained) or a head of
        `tfmeta.heads.HEADS` (SimpleShot, logistic regression, BD-CSPN, LaplacianShot, TIM,
        alpha-TIM, PT-MAP); training and meta-validation always use `compare`.
      open_set_threshold: the distance (`tfmeta.heads.open_set_distance`) beyond which a
        served query is "none of these" (`unknown`); calibrated on validation episodes by
        `bin/evaluate.py --calibrate`, None (no rejection) until then.
    """

    argument_ranges = {"finetune_steps": NON_NEGATIVE_INT, "finetune_lr": NON_NEGATIVE,
                       "finetune_augment": Choice(FINETUNE_AUGMENTS),
                       "finetune_optimizer": Choice(FINETUNE_OPTIMIZERS),
                       "test_head": Choice(TEST_HEADS)}

    def __init__(self, backbone: keras.Model, finetune_steps: int = 0,
                 finetune_lr: float = DEFAULT_FINETUNE_LR,
                 finetune_augment: str = "color_translate_flip",
                 finetune_optimizer: str = "adam", test_head: str = OWN_HEAD,
                 open_set_threshold: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.check_arguments({"finetune_steps": finetune_steps, "finetune_lr": finetune_lr,
                              "finetune_augment": finetune_augment,
                              "finetune_optimizer": finetune_optimizer,
                              "test_head": test_head})
        if open_set_threshold is not None:
            NON_NEGATIVE.check("open_set_threshold", open_set_threshold)
        if not backbone.built:
            raise UserError(f"{type(self).__name__} needs a built backbone; build "
                            f"{backbone.name!r} with an input shape.")
        self.backbone = backbone
        self.finetune_steps = int(finetune_steps)
        self.finetune_lr = float(finetune_lr)
        self.finetune_augment = finetune_augment
        self.finetune_optimizer = finetune_optimizer
        self.test_head = test_head
        self.open_set_threshold = None if open_set_threshold is None else \
            float(open_set_threshold)
        # The training classes' mean feature `[D]` (numpy), for the heads that centre on it
        # and the open-set distance: set by `tfmeta.training.run.open_run` from the run's
        # data where `needs_feature_mean` (features.train_feature_mean); None: not centred.
        self.feature_mean = None
        self.check_finetuning()

    @property
    def needs_feature_mean(self) -> bool:
        """Whether serving this learner reads the training classes' mean feature: its test
        head centres on it, or a calibrated open-set threshold was measured with it."""
        return self.open_set_threshold is not None or (
            self.test_head != OWN_HEAD and heads.HEADS[self.test_head].needs_feature_mean)

    @property
    def transductive(self) -> bool:
        """Whether the test head reads the query set as a whole (`tfmeta.heads`)."""
        return self.test_head != OWN_HEAD and heads.HEADS[self.test_head].transductive

    def check_finetuning(self) -> None:
        """Raises a ValueError, in one line, where fine-tuning is asked of a backbone it
        cannot fine-tune: one without trainable weights, or augmentation of inputs that are
        not images."""
        if not self.finetune_steps:
            return
        if not self.backbone.trainable_variables:
            raise UserError(
                f"learner.finetune_steps={self.finetune_steps} fine-tunes the backbone's "
                "trainable weights, but this backbone has none (model.trainable=none); use "
                "model.trainable=all or last:K, or finetune_steps=0.")
        if self.finetune_augment != "none" and len(self.backbone.input_shape) != 4:
            raise UserError(
                f"learner.finetune_augment={self.finetune_augment} augments images, but this "
                f"backbone takes inputs of shape {self.backbone.input_shape[1:]}; use "
                "learner.finetune_augment=none.")

    # ------------------------------------------------------------------- hooks
    def compare(self, support_features, support_labels, query_features, training):
        """Query logits `[B, M, N]` from support features `[B, S, *F]`, labels `[B, S]` and
        query features `[B, M, *F]`: the learner's head."""
        raise NotImplementedError(f"{type(self).__name__} must implement compare().")

    def finetune_loss(self, support_features, support_labels, pseudo_query_features):
        """Per-episode loss `[B]` of a fine-tuning step: the head's `query_loss` on the
        pseudo-queries `[B, S, *F]` (the augmented support set, labelled as it)."""
        logits = self.compare(support_features, support_labels, pseudo_query_features,
                              training=False)
        return self.query_loss({"query_labels": support_labels}, logits)

    def test_logits(self, episodes):
        """Query logits `[B, M, N]` at meta-test time and in serving: fine-tuned per episode
        where `finetune_steps` and `finetune_lr` are both positive, classified by the test
        head (`classify`)."""
        return self.test_outputs(episodes)["logits"]

    def test_outputs(self, episodes) -> dict:
        """{"logits" `[B, M, N]`, "distance" `[B, M]`}: the test head's query logits (after
        fine-tuning, where the learner fine-tunes) and each query's open-set distance
        (`tfmeta.heads.open_set_distance`, on the learner's own features, not fine-tuned)."""
        support, queries = embed_support_and_query(
            self.backbone, episodes["support_images"], episodes["query_images"], False,
            episodes["support_labels"], episodes.get("query_labels"))
        labels = tf.cast(episodes["support_labels"], tf.int32)
        if self.finetune_steps and self.finetune_lr:
            self.check_finetuning()  # (a layer may have been frozen since construction)
            logits = self.finetuned_query_logits(episodes)
        else:
            query_mask = (real(episodes["query_labels"]) if "query_labels" in episodes else
                          tf.ones(tf.shape(queries)[:2], tf.bool))
            logits = self.classify(support, labels, queries, query_mask)
        return {"logits": logits, "distance": heads.open_set_distance(
            support, labels, queries, self.feature_mean)}

    def classify(self, support_features, support_labels, query_features, query_mask):
        """Query logits `[B, M, N]` of the test head: the learner's `compare`, or the head of
        `tfmeta.heads` that `test_head` names (`query_mask` `[B, M]`: the real queries)."""
        if self.test_head == OWN_HEAD:
            return self.compare(support_features, support_labels, query_features,
                                training=False)
        return heads.head_logits(self.test_head, support_features, support_labels,
                                 query_features, query_mask, self.feature_mean)

    def episode_checks(self, support_images, support_labels, query_images):
        ways = super().episode_checks(support_images, support_labels, query_images)
        if not self.transductive:
            return ways
        with tf.control_dependencies([tf.debugging.assert_greater(
                tf.shape(query_images)[0], 1, message=(
                    f"the {self.test_head} head is transductive: it classifies the queries "
                    "together, from their statistics, and a single query has none; send "
                    "the queries together, or use an inductive head"))]):
            return tf.identity(ways)

    # ------------------------------------------------------------ the method
    def portable_refusal(self) -> str | None:
        """None (the learner's classifier converts), unless it fine-tunes at test time or
        classifies with a head of `tfmeta.heads` (which the SavedModel serves)."""
        if self.test_head != OWN_HEAD:
            return (f"learner.test_head={self.test_head} classifies with a head the portable "
                    "converters are not checked on")
        if self.finetune_steps and self.finetune_lr:
            return (f"learner.finetune_steps={self.finetune_steps} fine-tunes the backbone "
                    "with gradient steps on each support set")
        return None

    def backbone_features(self, fast, state, images):
        """Features `[n, *F]` float32 of images `[n, ...]` under fast weights `fast` (one
        tensor per trainable variable of the backbone), batch norm in inference mode."""
        features, _ = self.backbone.stateless_call(fast, state, images, training=False)
        return tf.cast(features, tf.float32)

    def finetune(self, params, state, support_images, support_labels, seed):
        """Fast weights after `finetune_steps` steps on one episode's support set.

        Args:
          params: the backbone's trainable values, the starting point.
          state: its non-trainable values (frozen layers, batch-norm statistics).
          support_images: `[S, ...]`, the real support examples of one episode.
          support_labels: `[S]` int32, 0..N-1.
          seed: `[2]` int64, the episode's seed (`episode_seed`; each step folds in its
            index).
        """
        optimizer = make_inner_optimizer(self.finetune_optimizer, self.finetune_lr,
                                         beta_1=ADAM_BETA_1)
        size = tf.shape(support_images)[0]

        def step(i, fast, optimizer_state):
            pseudo_queries = augment(support_images, self.finetune_augment,
                                     tf.random.experimental.stateless_fold_in(seed, i))
            with tf.GradientTape() as tape:
                tape.watch(fast)
                # One pass over both: in inference mode batch norm does not mix them.
                features = self.backbone_features(
                    fast, state, tf.concat([support_images, pseudo_queries], 0))
                loss = self.finetune_loss(features[None, :size], support_labels[None],
                                          features[None, size:])[0]
            gradients = tape.gradient(loss, fast,
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)
            fast, optimizer_state = optimizer.step(fast, gradients, optimizer_state)
            return i + 1, fast, optimizer_state

        _, fast, _ = tf.while_loop(lambda i, *_: i < self.finetune_steps, step,
                                   (tf.constant(0), list(params), optimizer.init(params)))
        return fast

    def finetuned_episode_logits(self, params, state, episode, width):
        """One episode's query logits `[M, width]` from a copy of `params` fine-tuned on its
        support set. `episode`: `support_images [S, ...]`, `support_labels [S]`,
        `query_images [M, ...]` and, where evaluated, `query_labels [M]`; padding (label
        -1) is left out of everything and its logit rows are 0."""
        support = real_positions(episode["support_labels"])
        support_images = tf.gather(episode["support_images"], support)
        support_labels = tf.gather(tf.cast(episode["support_labels"], tf.int32), support)
        query_images = episode["query_images"]
        if "query_labels" in episode:
            queries = real_positions(episode["query_labels"])
            query_images = tf.gather(query_images, queries)
        fast = self.finetune(params, state, support_images, support_labels,
                             episode_seed(support_images))
        features = self.backbone_features(fast, state,
                                          tf.concat([support_images, query_images], 0))
        size = tf.shape(support_images)[0]
        logits = self.classify(features[None, :size], support_labels[None],
                               features[None, size:],
                               tf.ones([1, tf.shape(query_images)[0]], tf.bool))[0]  # [m, n]
        # The episode's own n ways, widened to the meta-batch's (absent classes at -1e9).
        logits = tf.pad(logits, [[0, 0], [0, width - tf.shape(logits)[1]]],
                        constant_values=absent_logit(logits.dtype))
        if "query_labels" in episode:
            logits = scatter_rows(logits, queries, tf.shape(episode["query_images"])[0])
        return logits

    def finetuned_query_logits(self, episodes):
        """Query logits `[B, M, N]`, each episode classified by its own fine-tuned copy of
        the backbone, every copy starting from the learner's weights."""
        params = weights.values(self.backbone.trainable_variables)
        state = weights.values(self.backbone.non_trainable_variables)
        keys = [k for k in self.batch_keys if k in episodes]
        width = num_ways(tf.cast(episodes["support_labels"], tf.int32))

        def one_episode(values):
            return self.finetuned_episode_logits(params, state, dict(zip(keys, values)), width)

        return tf.map_fn(one_episode, [episodes[k] for k in keys],
                         fn_output_signature=tf.TensorSpec([None, None], tf.float32))

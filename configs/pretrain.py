"""Supervised pre-training (`tfmeta.algorithms.pretrain`): the backbone as a classifier over
all training classes, evaluated on few-shot episodes by an in-graph classifier.

Paper settings, from Tian et al. 2020 ("Rethinking Few-Shot Image Classification", Section
4.1 and their `train_supervised.py`): SGD with momentum 0.9, learning rate 0.05, weight
decay 5e-4, batch 64, 100 epochs with the rate x0.1 at epochs 60 and 80 on mini-ImageNet
(Chen et al. 2019 use Adam at 1e-3; MetaOptNet/LEO's classifier pre-training is similar
SGD). Deviations: the schedule here is cosine decay over `num_steps` (Keras' staircase
decay cannot drop at 60 and 80 only; `--set=optimizer.schedule=step` with `decay_steps`,
`decay_rate` for a step schedule), and `num_steps` counts batches, not epochs
(mini-ImageNet: 38400 images / 64 = 600 per epoch, so 100 epochs = 60000 steps).
Augmentation: random crop of the padded image and horizontal flip for colour images
(in the learner); on Omniglot `config.augment` (random affine, as the metric learners).
Backbone: ResNet-12 on image datasets, Conv4 on Omniglot.
`learner.num_classes` is the head's size: the training split's class count (the bundled
Omniglot: 161 characters x 4 rotations = 644; None, on a dataset this file does not know,
is filled in from the data by the trainer).
"""

from . import base

# dataset -> classes in its training split (the head's outputs).
TRAIN_CLASSES = {"omniglot": 644, "mini_imagenet": 64, "tiered_imagenet": 351,
                 "cifar_fs": 64, "fc100": 60}


def get_config(dataset: str = "omniglot", setting: str = "5w1s"):
    config = base.get_config("pretrain", dataset, setting)
    config.learner.update(num_classes=TRAIN_CLASSES.get(dataset),
                          classifier="nearest_centroid", weight_decay=5e-4)
    if dataset in ("omniglot", "mnist"):
        config.model.update(name="conv4", filters=64)
        config.augment.update(shift=0.07, rotation=10.0, scale=0.1)
        config.num_steps = 5000
    else:
        config.model.update(name="resnet12", filters=64, drop_rate=0.1)
        config.num_steps = 60000
    config.batch_size = 64  # examples per training batch
    config.queries = 15
    config.optimizer.update(name="sgd", learning_rate=0.05, momentum=0.9, schedule="cosine")
    config.checkpoint_every = 1000
    return config


TINY = ("model.filters=4", "learner.logistic_steps=5")  # (where classifier="logistic")

"""What the algorithm configs need to know about datasets: which ones are natural images."""

# Natural-image benchmarks (tfmeta.data.mini_imagenet, tiered_imagenet, cifar): 84x84
# (ImageNet) or 32x32 (CIFAR-100) RGB, normalized per channel. Omniglot-only settings
# (rotations, augmentation, train_on_val) never apply to them.
NATURAL_IMAGES = ("mini_imagenet", "tiered_imagenet", "cifar_fs", "fc100")
IMAGENET = ("mini_imagenet", "tiered_imagenet")


def own_data(dataset: str) -> bool:
    """A user's own images (`folder`, `tfds:NAME`, or `records` converted from any dataset):
    datasets a config has never heard of."""
    return dataset in ("folder", "records") or dataset.startswith("tfds:")


def natural_images(dataset: str) -> bool:
    """Whether `dataset` takes the natural-image settings (mini-ImageNet's where a paper has
    them): the benchmarks above, and a user's own images, which are 84x84 RGB by default."""
    return dataset in NATURAL_IMAGES or own_data(dataset)

"""What the algorithm configs need to know about datasets: which ones are natural images."""

# Natural-image benchmarks (tfmeta.data.mini_imagenet, tiered_imagenet, cifar): 84x84
# (ImageNet) or 32x32 (CIFAR-100) RGB, normalized per channel. Omniglot-only settings
# (rotations, augmentation, train_on_val) never apply to them.
NATURAL_IMAGES = ("mini_imagenet", "tiered_imagenet", "cifar_fs", "fc100")
IMAGENET = ("mini_imagenet", "tiered_imagenet")

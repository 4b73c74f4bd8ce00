"""tfmeta: few-shot meta-learning for TensorFlow 2 and Keras 3.

Algorithms live in `tfmeta.algorithms` and wrap ordinary Keras backbones from
`tfmeta.models`; episodes come from `tfmeta.data`; `tfmeta.training` runs,
evaluates and exports them.
"""

__version__ = "0.1.0"

"""mini-ImageNet as the LEO paper's released WRN-28-10 embeddings (`center` or `multiview`).

The reader is `tfmeta.data.leo_embeddings`; this module binds its dataset name.
"""

import functools

from tfmeta.data.leo_embeddings import load_published

load = functools.partial(load_published, "miniImageNet")

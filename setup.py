"""tfmeta: few-shot meta-learning for TensorFlow 2 and Keras 3."""

import setuptools

setuptools.setup(
    name="tfmeta",
    version="0.1.0",
    description="Meta-learning (MAML, Reptile, LEO, metric learners, ...) for TensorFlow 2 and Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["tfmeta", "tfmeta.*"]),
    package_data={"tfmeta.data": ["bundled/*/*"]},
    include_package_data=True,
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3",
        "tensorflow-datasets",
        "numpy",
        "absl-py",
        "tensorboard",
        "ml_collections",
    ],
    # pillow writes the test images (and docs/scripts/omniglot_as_folders.py's) in every
    # format and mode; tfmeta itself decodes with TensorFlow only.
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3", "ruff", "pillow"]},
)

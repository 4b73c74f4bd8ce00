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
    # configs/ (the algorithm configs) is installed inside the package as tfmeta.configs.
    packages=setuptools.find_packages(include=["tfmeta", "tfmeta.*"]) + ["tfmeta.configs"],
    package_dir={"tfmeta.configs": "configs"},
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
    entry_points={"console_scripts": [
        f"tfmeta-{name}=tfmeta.commands.{module}:run" for name, module in (
            ("train", "train"), ("evaluate", "evaluate"), ("predict", "predict"),
            ("benchmark", "benchmark"), ("report", "report"), ("embed", "embed"),
            ("convert", "convert"), ("export", "export"))]},
    # bench: the PyTorch peer of bin/compare_torch.py, never a runtime dependency.
    # hub: KerasHub, for --set=model.name=keras_hub:<preset> (imported only then); the tests
    # build small presets with it.
    # litert, onnx: bin/export.py's converters' runtimes (tf2onnx converts; tfmeta.lite serves
    # with the interpreter or onnxruntime); the tests convert and serve with both.
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3", "ruff", "pillow", "keras-hub",
                             "ai-edge-litert", "tf2onnx", "onnxruntime"],
                    "bench": ["torch>=2.3"],
                    "hub": ["keras-hub"],
                    "litert": ["ai-edge-litert"],
                    "onnx": ["tf2onnx", "onnxruntime"]},
)

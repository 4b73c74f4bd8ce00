"""The command-line tools, one module each: `tfmeta-<name>` after `pip install .`, or
`python bin/<script>.py` from a checkout (bin/ holds thin wrappers of these).

    tfmeta-train      bin/train.py              tfmeta-predict    bin/predict.py
    tfmeta-evaluate   bin/evaluate.py           tfmeta-benchmark  bin/benchmark.py
    tfmeta-embed      bin/write_embeddings.py   tfmeta-report     bin/report.py
    tfmeta-convert    bin/convert.py

Each module defines its absl flags, `main(argv)` and `run()`; `run` is the console entry
point.
"""

"""Adapts an exported model to a folder of examples and classifies a folder of images.

    python bin/predict.py --workdir=runs/protonet --support_dir=support --query_dir=queries \
        [--output=predictions.csv]

`--support_dir` holds one folder per class (the folder name is the class name) with its
few examples; `--query_dir` the images to classify (nested folders allowed). Prints a
table (and, when each query sits in a folder named like a support class, the accuracy
against those names) and, with `--output`, writes CSV `file,predicted_class,probability`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfmeta.commands.predict import run  # noqa: E402

if __name__ == "__main__":
    run()

"""Streaming episodes from per-class records (`--dataset=records`,
`tfmeta.data.record_stream`):

  records_vs_memory_84    episodes per second at mini-ImageNet's size (84x84x3, 5-way
                          1-shot 15-query, meta-batch 4; 64 classes of 100 noise images),
                          sampled from memory and streamed from records of the same images
                          (PNG), after as many batches of warm-up as are timed, and their
                          ratio.
  records_rss_3gb         peak resident memory while training ProtoNet (Conv4) for a few
                          steps on records whose decoded size is 3 GB (224x224x3 images),
                          beside that decoded size.

  records_rss_by_classes  the same peak for 50, 150 and 450 classes of 260 84x84 noise PNGs
                          at the default shuffle buffer: flat, since the stream holds record
                          numbers and reads records on demand.

The images are synthetic (noise at 84x84, smooth gradients at 224x224): rates do not depend
on the pixels, except through the PNG decoder's work, which noise makes the largest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from tfmeta.benchmarking.common import sampler_rate
from tfmeta.benchmarking.images import synthetic_dataset
from tfmeta.data import EpisodeShape, episode_dataset, record_format, record_store, record_writer


def records_vs_memory(steps: int) -> dict:
    dataset = synthetic_dataset(classes=64, per_class=100)
    with tempfile.TemporaryDirectory() as folder:
        record_writer.convert(dataset, folder)
        streamed = record_store.load(folder)
        batches = max(5 * steps, 100)
        rates = {}
        for name, source in (("memory", dataset), ("records", streamed)):
            # Warmed up for as many batches as are timed: every class stream has filled
            # its first window by then (steady state, not start-up).
            episodes = episode_dataset(source.split("train"), EpisodeShape(5, 1, 15), 4, seed=0)
            rates[name] = sampler_rate(episodes.skip(batches), batches, 4)
    return {"memory_episodes_per_s": rates["memory"], "records_episodes_per_s": rates["records"],
            "records_over_memory": rates["records"] / rates["memory"], "batches": batches}


def write_synthetic_records(folder: str, classes: int, per_class: int, size: int,
                            variants: int = 4, noise: bool = False) -> int:
    """Writes `classes` classes of `per_class` smooth (or, with `noise`, random: the largest
    PNGs) `size`x`size` RGB images straight to records (each class cycles through `variants`
    encoded images, so writing is fast) with their spec; returns the decoded size in
    bytes."""
    os.makedirs(os.path.join(folder, "train"), exist_ok=True)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    entries = []
    for c in range(classes):
        encoded = []
        for v in range(variants):
            angle = 2 * np.pi * (c * variants + v) / (classes * variants)
            image = np.stack([np.add.outer(ramp * np.cos(angle), ramp * np.sin(angle)),
                              np.add.outer(ramp, ramp) / 2, np.outer(ramp, ramp)], -1)
            image = (255 * (image - image.min()) / (np.ptp(image) + 1e-6)).astype(np.uint8)
            if noise:
                image = np.random.RandomState(c * variants + v).randint(
                    0, 256, image.shape).astype(np.uint8)
            encoded.append(record_writer.record_bytes(image, c, "png"))
        name = f"train/class_{c:05d}.tfrecord"
        record_writer.write_records(os.path.join(folder, name),
                                    (encoded[i % variants] for i in range(per_class)))
        entries.append({"name": f"c{c}", "split": split_of(c, classes), "count": per_class,
                        "file": name})
    spec = {"format": record_format.FORMAT, "version": record_format.VERSION,
            "name": "synthetic", "description": "synthetic gradients", "source_fingerprint": "",
            "encoding": "png",
            "stored_shape": [size, size, 3], "stored_dtype": "uint8",
            "transform": {"size": [size, size], "scale": [1.0] * 3, "offset": [0.0] * 3},
            "raw_shape": [size, size, 3], "value_range": [0.0, 1.0],
            "decoding": {"image_size": size, "channels": 3, "crop_to_aspect_ratio": False},
            "shuffle_seed": 0, "classes": entries}
    with open(os.path.join(folder, record_format.SPEC_FILE), "w", encoding="utf-8") as f:
        json.dump(spec, f)
    return classes * per_class * size * size * 3


def split_of(c: int, classes: int) -> str:
    """The first 80% of the classes train, then 10% each validate and test."""
    return "train" if c < 0.8 * classes else "val" if c < 0.9 * classes else "test"


def train_streamed(folder: str, workdir: str, steps: int, buffer: int = 64) -> float:
    """Peak resident memory (MB) of `bin/train.py` training ProtoNet on records in
    `folder` for `steps` steps, in a child process."""
    command = [sys.executable, "-m", "tfmeta.commands.train", "--algo=protonet",
               "--dataset=records", f"--data_dir={folder}", f"--workdir={workdir}",
               f"--num_steps={steps}", "--export=false", "--set=model.filters=8",
               f"--set=log_every={steps}", "--set=val_episodes=4", "--set=meta_batch_size=1",
               "--set=ways=5", "--set=queries=2", f"--set=data.shuffle_buffer={buffer}"]
    # A parent of its own, whose only child is the trainer: RUSAGE_CHILDREN is then its peak.
    measure = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
               "capture_output=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", measure, *command], check=True,
                          capture_output=True, text=True)
    return int(done.stdout.split()[-1]) / 1024


def records_rss(steps: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        decoded = write_synthetic_records(os.path.join(folder, "records"), classes=50,
                                          per_class=400, size=224)
        peak = train_streamed(os.path.join(folder, "records"), os.path.join(folder, "run"),
                              max(steps, 5))
    return {"decoded_gb": decoded / 1e9, "peak_rss_mb": peak,
            "peak_over_decoded": peak * 2 ** 20 / decoded}


def records_rss_by_classes(steps: int) -> dict:
    """Peak resident memory of training on records against the number of classes: 84x84
    noise PNGs (about 21 KB a record), 260 a class (more than a window), the default shuffle
    buffer (256); 80% of the classes train."""
    peaks = {}
    for classes in (50, 150, 450):
        with tempfile.TemporaryDirectory() as folder:
            write_synthetic_records(os.path.join(folder, "records"), classes=classes,
                                    per_class=260, size=84, noise=True)
            record_kb = os.path.getsize(os.path.join(
                folder, "records", "train", "class_00000.tfrecord")) / 260 / 1024
            peaks[f"peak_rss_mb_{classes}_classes"] = train_streamed(
                os.path.join(folder, "records"), os.path.join(folder, "run"), max(steps, 5),
                buffer=record_format.DEFAULT_SHUFFLE_BUFFER)
    return {**peaks, "record_kb": record_kb, "records_per_class": 260}


CASES = {"records_vs_memory_84": records_vs_memory, "records_rss_3gb": records_rss,
         "records_rss_by_classes": records_rss_by_classes}

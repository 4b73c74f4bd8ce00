"""Adapting an exported model to a folder of examples and classifying a folder of queries:
what `bin/predict.py` runs.

    support/<class name>/*.jpg      a few labelled examples of each class (any image files)
    queries/**/*.png                the images to classify (nested folders allowed)

Images are decoded and resized exactly as the run's dataset decoded its files (the
export's `tfmeta.json`: `FewShotDataset.file_decoding`, through
`tfmeta.data.images.decode_image`), scaled to [0, 1], and sent to the export's
`adapt_and_predict`, which preprocesses, adapts to the support set and scores the
queries in the graph. The probability is the softmax of the served logits at the run's
calibrated temperature (1 where `bin/evaluate.py --calibrate` has not fitted one). Where the
run has a calibrated open-set threshold, a query farther from every support class than it
(the served "distance") is `unknown`, "none of these".

When every query sits in a folder named like a support class, the share predicted as that
class is reported too (`folder_accuracy`), a check of an export on labelled new classes.

Queries go in chunks of `batch_size`, each with the whole support set; a transductive
learner (MAML with batch statistics) or head (`tfmeta.heads`: BD-CSPN, LaplacianShot,
TIM, alpha-TIM, PT-MAP) reads each chunk's statistics, so a last chunk of one query joins
the one before.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np
import tensorflow as tf

from tfmeta import heads, html_report, lite
from tfmeta.algorithms import any_ways_algorithms, prototype_head_algorithms
from tfmeta.data import folder
from tfmeta.data import images as image_utils
from tfmeta.errors import UserError
from tfmeta.files import atomic_write, check_output_file
from tfmeta.training.export import METADATA_FILE

SIGNATURE = "adapt_and_predict"


# The predicted class of a query farther from every support class than the threshold.
UNKNOWN = html_report.UNKNOWN


@dataclasses.dataclass
class Prediction:
    file: str               # relative to the query folder
    predicted_class: str    # a support class, or UNKNOWN: farther than the open-set threshold
    probability: float     # of the top class: softmax(logits / the calibrated temperature)
    top_class: str = ""     # the most probable support class (also where UNKNOWN)
    distance: float | None = None   # from the nearest support class (open-set score)


@dataclasses.dataclass
class Export:
    """A loaded SavedModel and what it says of itself (`tfmeta.json`)."""

    path: str
    module: object
    metadata: dict

    @property
    def max_ways(self):
        return self.metadata.get("max_ways")

    @property
    def head(self) -> str:
        """The head it classifies with (`tfmeta.heads`; "own": the learner's rule)."""
        return self.metadata.get("head") or "own"

    @property
    def temperature(self) -> float:
        """Its calibrated temperature (1: not calibrated)."""
        return float(self.metadata.get("temperature") or 1.0)

    @property
    def threshold(self) -> float | None:
        """Its calibrated open-set threshold, or None."""
        return self.metadata.get("open_set_threshold")


def export_path(workdir: str | None = None, export: str | None = None) -> str:
    """The export folder: `--export`, or `<workdir>/export`; exactly one must be given."""
    if (workdir is None) == (export is None):
        raise UserError("Give exactly one of --workdir=<a run folder> and --export=<a "
                        "SavedModel folder>.")
    path = export if export is not None else os.path.join(workdir, "export")
    if lite.is_portable(path):
        return path  # (`lite.load` says where the file is missing)
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        hint = (f"{workdir} has no export/: rerun its bin/train.py command (a finished run "
                "only exports)" if workdir is not None and os.path.isdir(workdir) else
                "pass the export/ folder bin/train.py wrote")
        raise FileNotFoundError(f"No SavedModel at {os.path.abspath(path)}; {hint}.")
    return path


def open_export(path: str) -> Export:
    """Loads the export and its metadata (for an export without `tfmeta.json`, what its
    signature says: the raw image shape, decoded without cropping); a `.tflite` or `.onnx`
    file through `tfmeta.lite`."""
    if lite.is_portable(path):
        portable = lite.load(path)
        return _images_export(Export(path, portable, portable.metadata))
    metadata = read_metadata(path)  # (before the load: a damaged export is told at once)
    module = tf.saved_model.load(path)
    if SIGNATURE not in getattr(module, "signatures", {}):
        served = sorted(getattr(module, "signatures", {}))
        raise UserError(f"The export at {path} serves {served}, not {SIGNATURE}: it is not a "
                        "classifier (a generator or a regression or RL policy).")
    if metadata is None:
        spec = module.signatures[SIGNATURE].structured_input_signature[1]["support_images"]
        shape = [int(d) for d in spec.shape[1:]]
        square = len(shape) == 3 and shape[0] == shape[1] and shape[2] in (1, 3)
        metadata = {"raw_shape": shape, "max_ways": None, "decoding": {
            "image_size": shape[0], "channels": shape[2], "crop_to_aspect_ratio": False}
            if square else None}
    return _images_export(Export(path, module, metadata))


def read_metadata(path: str) -> dict | None:
    """The `tfmeta.json` of the SavedModel folder `path` (None where it has none), or a
    one-line ValueError naming the file when it is damaged (`lite.parse_metadata`)."""
    metadata_file = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(metadata_file):
        return None
    with open(metadata_file, "rb") as f:
        return lite.parse_metadata(
            f.read(), os.path.abspath(metadata_file),
            f"export the run again: bin/export.py --workdir=<the run> --output={path} "
            "(bin/train.py writes <workdir>/export when training ends)")


def _images_export(export: Export) -> Export:
    if not export.metadata.get("decoding"):
        raise UserError(f"The export at {export.path} takes inputs of shape "
                        f"{export.metadata['raw_shape']} (e.g. embeddings), not images; "
                        "bin/predict.py classifies image files.")
    return export


def export_outputs(export: Export, support, labels, queries) -> dict:
    """The export's outputs for one request ("logits", "probabilities" and, where it
    measures them, "distance" and "unknown"), as numpy, or a ValueError with its refusal. A
    LiteRT or ONNX file serves logits: the probabilities are their softmax at the
    export's temperature."""
    if isinstance(export.module, lite.PortableExport):
        try:
            logits = export.module.adapt_and_predict(support, labels, queries)["logits"]
        except lite.RequestError as error:
            raise UserError(f"The export refused the request: {error}") from None
        return {"logits": logits, "probabilities": tf.nn.softmax(
            np.asarray(logits, np.float32) / export.temperature, axis=-1).numpy()}
    try:
        outputs = export.module.adapt_and_predict(
            support_images=tf.constant(support), support_labels=tf.constant(labels),
            query_images=tf.constant(queries))
    except tf.errors.InvalidArgumentError as error:
        raise UserError(f"The export refused the request: "
                        f"{error.message.strip().splitlines()[0]}") from None
    outputs = {name: value.numpy() for name, value in outputs.items()}
    if "probabilities" not in outputs:  # an export written before calibration existed
        outputs["probabilities"] = tf.nn.softmax(outputs["logits"], axis=-1).numpy()
    return outputs


def export_logits(export: Export, support, labels, queries) -> np.ndarray:
    """The export's logits for one request, or a ValueError with its refusal."""
    return export_outputs(export, support, labels, queries)["logits"]


def check_head(export: Export, head: str | None, workdir: str | None = None) -> None:
    """A one-line ValueError unless `head` (None: any) is the head the export serves, or
    where an open-set threshold is asked of an export with none."""
    if head is None or head == export.head:
        return
    if head != "own" and head not in heads.HEADS:
        raise UserError(f"Unknown --head={head!r}; the heads: own (the learner's rule), "
                        f"{heads.describe_heads()}.")
    run = workdir or "<the run>"
    raise UserError(f"The export at {export.path} serves the {export.head} head, not {head}; "
                    f"export the run with that head first: bin/export.py --workdir={run} "
                    f"--set=learner.test_head={head} (or bin/evaluate.py --workdir={run} "
                    f"--head={head} --calibrate, which also calibrates it).")


def check_open_set(export: Export, open_set: bool | None) -> bool:
    """Whether predictions say `unknown` for far queries: `open_set` (None: where the export
    has a calibrated threshold); asked of an export without one, a one-line ValueError."""
    if open_set is None:
        return export.threshold is not None
    if open_set and export.threshold is None:
        raise UserError(f"--open_set: the export at {export.path} has no calibrated open-set "
                        "threshold; calibrate the run first (bin/evaluate.py --workdir=<the "
                        "run> --calibrate, for an embedding learner), or drop --open_set.")
    return open_set


def query_chunks(count: int, batch_size: int, transductive: bool) -> list:
    """(start, stop) of the chunks of `batch_size` queries; for a transductive head, a last
    chunk of a single query joins the one before (it has no query statistics alone), and a
    single query in all is a one-line ValueError."""
    chunks = [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    if transductive and count == 1:
        raise UserError("The export's head is transductive: it classifies the queries "
                        "together, from their statistics, and one query has none; give at "
                        "least 2 queries, or export with an inductive head.")
    if transductive and len(chunks) > 1 and chunks[-1][1] - chunks[-1][0] == 1:
        chunks[-2:] = [(chunks[-2][0], count)]
    return chunks


def support_classes(support_dir: str) -> dict:
    """{class name: [image files]}: one folder per class, each with at least one image."""
    if not os.path.isdir(support_dir):
        raise FileNotFoundError(f"No support folder {os.path.abspath(support_dir)}; "
                                "--support_dir must hold one folder of example images per "
                                "class.")
    classes, _ = folder.class_folders(support_dir, links_out=True)
    empty = [e.name for e in os.scandir(support_dir) if e.is_dir() and
             not e.name.startswith(".") and e.name not in classes]
    if empty:
        raise UserError(f"Class folder {os.path.join(support_dir, sorted(empty)[0])} has no "
                        "JPEG, PNG, BMP or GIF image; every class needs at least one example.")
    if not classes:
        raise UserError(f"{os.path.abspath(support_dir)} has no class folders; --support_dir "
                        "must hold one folder of example images per class (the folder name "
                        "is the class name).")
    if len(classes) == 1:
        raise UserError(f"{os.path.abspath(support_dir)} has one class folder "
                        f"({next(iter(classes))}), so every query would be given it with "
                        "probability 1; add a folder of examples for each other class the "
                        "queries may belong to.")
    return classes


def query_files(query_dir: str) -> list:
    """The image files under `query_dir`, nested folders included."""
    if not os.path.isdir(query_dir):
        raise FileNotFoundError(f"No query folder {os.path.abspath(query_dir)}; --query_dir "
                                "must be a folder of images to classify.")
    files, _ = folder.list_images(query_dir)
    if not files:
        raise UserError(f"{os.path.abspath(query_dir)} holds no JPEG, PNG, BMP or GIF images "
                        "to classify.")
    return files


def read_images(files, decoding: dict) -> np.ndarray:
    """float32 `[n, s, s, c]` in [0, 1]: the files decoded as the run's dataset decoded its
    own; an unreadable file is an error naming it."""
    pixels = image_utils.decode_images(
        files, int(decoding["image_size"]), lambda i: files[i], from_files=True,
        channels=int(decoding["channels"]),
        crop_to_aspect_ratio=bool(decoding.get("crop_to_aspect_ratio", False)))
    return pixels.astype(np.float32) / 255.0


def predict(export: Export, support_dir: str, query_dir: str, batch_size: int = 256,
            open_set: bool | None = None, keep_images: bool = False) -> tuple:
    """Adapts `export` to the classes of `support_dir` and classifies every image of
    `query_dir`: (a `Prediction` per query file, in file order; the class names; and with
    `keep_images` {"support": {name: images}, "queries": images} as uint8, for a report).
    With `open_set` (`check_open_set`), a query farther than the export's threshold is
    `unknown`."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise UserError(f"--batch_size must be a positive integer; got {batch_size!r}.")
    asked, open_set = open_set, check_open_set(export, open_set)
    classes = support_classes(support_dir)
    names = sorted(classes)
    if export.max_ways is not None and len(names) > export.max_ways:
        raise UserError(
            f"{support_dir} has {len(names)} classes, but this {export.metadata.get('learner')} "
            f"export serves at most {export.max_ways}. Use at most {export.max_ways} classes, "
            f"or train a learner that serves any number: {', '.join(any_ways_algorithms())}, or "
            f"{' or '.join(prototype_head_algorithms())} with --set=learner.head=prototypes.")
    support_files = [f for n in names for f in classes[n]]
    labels = np.repeat(np.arange(len(names), dtype=np.int32), [len(classes[n]) for n in names])
    support = read_images(support_files, export.metadata["decoding"])
    queries = query_files(query_dir)
    chunks = query_chunks(len(queries), batch_size, bool(export.metadata.get("transductive")))
    outputs, images = [], []
    for start, stop in chunks:
        chunk = read_images(queries[start:stop], export.metadata["decoding"])
        outputs.append(export_outputs(export, support, labels, chunk))
        if keep_images:
            images.append(to_uint8(chunk))
    probabilities = np.concatenate([o["probabilities"] for o in outputs])
    distances = (np.concatenate([o["distance"] for o in outputs]) if "distance" in outputs[0]
                 else None)
    if open_set and distances is None and not asked:
        open_set = False  # (a calibrated run's LiteRT or ONNX file: no distance served)
    elif open_set and distances is None:
        raise UserError(f"--open_set: the export at {export.path} measures no distance from "
                        "the support classes (a LiteRT or ONNX file serves logits only); use "
                        "its SavedModel.")
    predictions = []
    for i, (path, p) in enumerate(zip(queries, probabilities)):
        top = names[int(p.argmax())]
        distance = None if distances is None else float(distances[i])
        far = open_set and distance > export.threshold
        predictions.append(Prediction(os.path.relpath(path, query_dir), UNKNOWN if far else top,
                                      float(p.max()), top, distance))
    if not keep_images:
        return predictions, names
    kept = {"support": {n: to_uint8(support[labels == i]) for i, n in enumerate(names)},
            "queries": np.concatenate(images)}
    return predictions, names, kept


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in [0, 1] as uint8."""
    return np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)


def query_truths(predictions: list) -> list | None:
    """The class each query's top folder names, where every query sits in a folder (a
    labelled check); None where some query sits in the query folder itself."""
    truths = [p.file.split(os.sep)[0] if os.sep in p.file else None for p in predictions]
    return None if not truths or any(t is None for t in truths) else truths


def folder_accuracy(predictions: list, class_names, open_set: bool = False) -> float | None:
    """The share of queries whose top folder is named like the class predicted for them,
    when every query sits in a folder named like a support class (a labelled check of an
    export on new classes); else None. With `open_set`, a folder named like no support class
    holds queries of other classes, right when predicted `unknown`."""
    truths = query_truths(predictions)
    if truths is None or (not open_set and any(t not in class_names for t in truths)):
        return None
    return float(np.mean([p.predicted_class == (t if t in class_names else UNKNOWN)
                          for t, p in zip(truths, predictions)]))


# A cell that begins with one of these is a formula to a spreadsheet program (OWASP, "CSV
# Injection"): it is written after a single quote, which shows as text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """`text` as a CSV cell no spreadsheet program runs as a formula."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def check_output(path: str) -> None:
    """A ValueError unless the CSV can be written at `path` (`files.check_output_file`)."""
    check_output_file(path, "predictions.csv")


def write_csv(predictions: list, path: str) -> str:
    """Writes `file,predicted_class,probability,top_class,distance` rows to `path`
    (atomically; `distance` empty where the export measures none); names and classes that
    begin like a formula are written as text (`csv_cell`)."""
    check_output(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "predicted_class", "probability", "top_class", "distance"])
        for p in predictions:
            writer.writerow([csv_cell(p.file), csv_cell(p.predicted_class),
                             f"{p.probability:.6f}", csv_cell(p.top_class),
                             "" if p.distance is None else f"{p.distance:.6f}"])
    return path


def format_table(predictions: list) -> str:
    """The predictions as an aligned text table (an `unknown` query with its closest class)."""
    rows = [("file", "predicted_class", "probability")] + [
        (p.file, p.predicted_class if p.predicted_class != UNKNOWN else
         f"{UNKNOWN} (closest: {p.top_class})", f"{p.probability:.3f}") for p in predictions]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"
                     for r in rows)


def write_report(path: str, export: Export, predictions: list, images: dict) -> str:
    """Writes `tfmeta.html_report`'s page of `predictions` (with `predict(...,
    keep_images=True)`'s images) to `path`; the truth of each query where every query sits
    in a folder (`query_truths`)."""
    truths = query_truths(predictions) or [None] * len(predictions)
    queries = [html_report.ReportQuery(p.file, image, p.predicted_class, p.probability,
                                       p.top_class, p.distance, truth)
               for p, image, truth in zip(predictions, images["queries"], truths)]
    notes = [f"export: {export.path} ({export.metadata.get('learner')}, {export.head} head)",
             f"confidence: softmax at temperature {export.temperature:.3g}"
             + ("" if export.metadata.get("temperature") not in (None, 1.0) else
                " (not calibrated: bin/evaluate.py --calibrate)"),
             f"unknown: farther than {export.threshold:.4g} from every support class"
             if export.threshold is not None else "unknown: no open-set threshold calibrated"]
    return html_report.write_report(path, queries, images["support"], notes=notes)

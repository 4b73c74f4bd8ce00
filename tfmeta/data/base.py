"""What every dataset loader returns, the on-disk cache and the download helper."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import urllib.request
from collections.abc import Callable

import numpy as np

from tfmeta import files
from tfmeta.data.classes import ClassStore
from tfmeta.errors import UserError

# Files up to this size that are not images count by their contents in the fingerprint.
HASHED_FILE_BYTES = 64 << 20
IMAGE_FILE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")


def file_digest(path: str, algorithm: str = "sha1") -> str:
    """The hex digest of a file's contents, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TaskSource:
    """What the trainer, evaluation and export read of any dataset: a `FewShotDataset` of
    files, or a generator of tasks (`tfmeta.data.sinusoid.SinusoidTasks`,
    `tfmeta.rl.navigation.NavigationTasks`) with no files and no classes, whose values these
    defaults are.

    Attributes: `name`, `raw_shape` (one raw input), `input_shape` (one model input),
    `preprocess` (raw inputs -> model inputs), `description`, `value_range` (None:
    unbounded), `data_dir` and `source_files` (none for a generator), `chosen_split` (the
    split a loader chose, which config.json records; None).
    """

    name: str
    raw_shape: tuple
    description: str = ""
    value_range: tuple | None = None
    data_dir: str | None = None
    source_files: tuple = ()
    chosen_split: dict | None = None

    def fingerprint(self) -> str:
        """A key of the source files (empty: no files)."""
        return ""

    def same_files(self, recorded: str) -> bool:
        """Whether `recorded` (a fingerprint config.json holds) is this dataset's."""
        return recorded == self.fingerprint()

    def file_decoding(self) -> dict | None:
        """How an image file becomes one raw input (None: inputs are not image files)."""
        return None


class RegressionTasks(TaskSource):
    """A generator of regression tasks, what `MAMLRegression` learns
    (`tfmeta.algorithms.regression_protocol`): episodes of support and query points of one
    function each, under the classifiers' keys (`support_images` the inputs x `[K, D]`,
    `support_labels` the targets y `[K, 1]`, and the same for the queries).
    `tfmeta.data.sinusoid.SinusoidTasks` is one."""

    def sample_episode(self, seed, shots: int, queries: int, with_parameters=False) -> dict:
        """One episode from a `[2]` int seed (with the task's parameters if asked)."""
        raise NotImplementedError(f"{type(self).__name__} must implement sample_episode().")

    def episodes(self, shots: int, queries: int, meta_batch_size: int | None = None,
                 seed: int = 0, num_episodes: int | None = None, start_step: int = 0,
                 worker: int = 0, workers: int = 1, with_parameters: bool = False):
        """A `tf.data.Dataset` of episodes (meta-batches of them with `meta_batch_size`),
        episode `start_step + i` a pure function of (`seed`, its number); worker `worker`
        of `workers` draws its share."""
        raise NotImplementedError(f"{type(self).__name__} must implement episodes().")


@dataclasses.dataclass
class FewShotDataset(TaskSource):
    """A dataset split into disjoint sets of classes, ready for episode sampling.

    Attributes:
      name: the registry name (`omniglot`, ...).
      splits: split name -> `ClassStore` (`ClassImages` in memory, or `RecordClasses`)
        whose model inputs are the *preprocessed* examples.
      raw_shape: the shape of one example as decoded from the dataset's own files
        (105x105x1 for Omniglot). Exported models take inputs of this shape.
      preprocess: maps a float32 batch `[n, *raw_shape]` of decoded examples (images
        in [0, 1]) to model inputs. The cache was built with this same function, so
        a served model and the trainer see identical inputs.
      description: one line on what was loaded and how it was split.
      value_range: (low, high) of raw inputs (images in [0, 1]); None for unbounded
        inputs such as embeddings. Exported models reject inputs outside it.
      data_dir: the folder read, resolved (None: the loader's default location).
      source_files: the files read; `fingerprint()` identifies their contents.
      chosen_split: {"train", "val", "test": class names} where the loader chose the split
        (a user's own data, split by seeded fractions); the trainer records it in
        config.json so evaluation and export use the same classes. None: the dataset's
        own split.
      decoding: how an image file becomes a raw input, `{"image_size", "channels",
        "crop_to_aspect_ratio"}` (`tfmeta.data.images.decode_image`, then / 255), where the
        loader decoded files that way; see `file_decoding()`.

    A user's own data, in one call each (see `tfmeta.data.own_data`):

        tfmeta.data.from_folder("photos/")        # one subfolder per class
        tfmeta.data.from_arrays(images, labels)
        tfmeta.data.from_tf_dataset(tf.data.Dataset.from_tensor_slices((x, y)))
    """

    name: str
    splits: dict
    raw_shape: tuple
    preprocess: Callable
    description: str = ""
    value_range: tuple | None = (0.0, 1.0)
    data_dir: str | None = None
    source_files: tuple = ()
    chosen_split: dict | None = None
    decoding: dict | None = None

    def file_decoding(self) -> dict | None:
        """How an image file becomes one raw input of this dataset (`decoding`, or for a
        benchmark whose raw inputs are square images in [0, 1], its files' size and
        channels), or None when its inputs are not images (embeddings, regression)."""
        if self.decoding is not None:
            return dict(self.decoding)
        shape = tuple(self.raw_shape)
        if (len(shape) == 3 and shape[0] == shape[1] and shape[2] in (1, 3)
                and self.value_range is not None and tuple(self.value_range) == (0.0, 1.0)):
            return {"image_size": int(shape[0]), "channels": int(shape[2]),
                    "crop_to_aspect_ratio": False}
        return None

    def fingerprint(self, legacy: bool = False) -> str:
        """A key of the source files, the same for a copy of the data elsewhere: each file's
        name (relative to their folder) and size, and the full contents of every file of at
        most `HASHED_FILE_BYTES` that is not an image (split CSVs, label pickles, metadata,
        zips of Omniglot's size), so swapping two labels in a CSV changes it. Large files
        (image pickles, archives) and images count by name and size only. "v2:"-prefixed;
        `legacy=True` gives the names-and-sizes key config.json held before (no prefix).
        Empty when the loader read no files (e.g. generated tasks)."""
        if not self.source_files:
            return ""
        root = os.path.commonpath([os.path.abspath(p) for p in self.source_files])
        root = root if os.path.isdir(root) else os.path.dirname(root)
        digest = hashlib.sha1()
        for path in sorted(os.path.abspath(p) for p in self.source_files):
            size = os.path.getsize(path)
            digest.update(f"{os.path.relpath(path, root)}|{size}\n".encode())
            if not legacy and size <= HASHED_FILE_BYTES and os.path.isfile(path) and \
                    os.path.splitext(path)[1].lower() not in IMAGE_FILE_EXTENSIONS:
                digest.update(file_digest(path).encode())
        return digest.hexdigest()[:16] if legacy else "v2:" + digest.hexdigest()[:16]

    def same_files(self, recorded: str) -> bool:
        """Whether `recorded` (a fingerprint config.json holds, of either version) is this
        dataset's."""
        return recorded == self.fingerprint(legacy=not recorded.startswith("v2:"))

    def split(self, name: str) -> ClassStore:
        if name not in self.splits:
            raise UserError(
                f"Dataset {self.name!r} has no split {name!r}; it has {sorted(self.splits)}.")
        return self.splits[name]

    @property
    def input_shape(self) -> tuple:
        return next(iter(self.splits.values())).example_shape


def cache_dir() -> str:
    """Where decoded datasets are cached: $TFMETA_CACHE or ~/.cache/tfmeta."""
    return os.environ.get("TFMETA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "tfmeta"))


def source_fingerprint(paths, *extra) -> str:
    """A key that changes when any source file (path, size, mtime) or option changes."""
    digest = hashlib.sha1()
    for path in sorted(paths):
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    for item in extra:
        digest.update(repr(item).encode())
    return digest.hexdigest()[:16]


def read_npz(path: str, fix: str = "get the file again.") -> dict:
    """Every array of a NumPy `.npz`, read with pickles disabled; a truncated, corrupt or
    unreadable file (a bad zip, a short member) is a ValueError naming it and `fix`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - zipfile, zlib, numpy and OS errors alike
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise UserError(f"{path} is not a readable .npz file ({type(error).__name__}: "
                        f"{reason}); {fix}") from None


def load_cached_arrays(key: str, build: Callable[[], dict]) -> dict:
    """Returns the arrays cached under `key`, building and caching them on a miss.

    The cache file is written to a temporary name and renamed, so a killed run
    never leaves a truncated cache behind.
    """
    path = os.path.join(cache_dir(), f"{key}.npz")
    if os.path.exists(path):
        try:
            return read_npz(path)
        except (OSError, ValueError):
            os.remove(path)  # unreadable cache: rebuild it
    arrays = build()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # (a part of this process's own: workers may build the same cache at once)
        with files.atomic_write(path, "wb", suffix=f".{os.getpid()}.part") as f:
            np.savez(f, **arrays)
    except OSError:
        pass  # a read-only cache only costs speed
    return arrays


def md5_of(path: str) -> str:
    return file_digest(path, "md5")


def download_file(url: str, destination: str, md5: str | None = None) -> str:
    """Downloads `url` to `destination` atomically and checks its MD5 if given.

    Works with `file://` URLs too, which is how it is tested offline.
    """
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    with files.atomic_path(destination) as partial:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as error:
            raise OSError(
                f"Could not download {url} to {destination}: {error}. Check the network, or "
                f"fetch the file by hand and put it at {destination}.") from error
        if md5 is not None and (got := md5_of(partial)) != md5:
            raise OSError(f"Downloaded {url} has MD5 {got}, expected {md5}; the file is corrupt "
                          "or has changed upstream. Try again, or fetch it by hand.")
    return destination


def safe_member_path(target: str, name: str, archive: str = "the archive") -> str:
    """Where archive member `name` goes under `target`; a ValueError if it would land
    outside it (an absolute path, a drive, or a `..` component)."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or os.path.splitdrive(name)[0] or ".." in parts:
        raise UserError(f"{archive} holds the member {name!r}, which would be written outside "
                        f"{target}; refusing to unpack it. Get the file again from its "
                        "official source.")
    root = os.path.realpath(target)
    path = os.path.realpath(os.path.join(root, *[p for p in parts if p not in ("", ".")]))
    if os.path.commonpath([root, path]) != root:
        raise UserError(f"{archive} member {name!r} resolves to {path}, outside {target}; "
                        "refusing to unpack it.")
    return path


def extract_archive(archive: str, target: str, strip_prefix: str = "") -> list:
    """Unpacks a zip or tar(.gz) `archive` into `target`, refusing any member that would land
    outside it and, in tars, links and special files. `strip_prefix` (e.g. "embeddings/")
    is removed from member names that start with it. Returns the files written."""
    import tarfile
    import zipfile

    def destination(name):
        if strip_prefix and name.startswith(strip_prefix):
            name = name[len(strip_prefix):]
        return safe_member_path(target, name, archive) if name.strip("/") else None

    def write(members, open_member) -> list:
        """Every name is checked (by `destination`) before anything is written."""
        members = [(m, path) for m, path in members if path is not None]
        for member, path in members:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open_member(member) as source, open(path, "wb") as out:
                shutil.copyfileobj(source, out)
        return [path for _, path in members]

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            return write([(info, destination(info.filename)) for info in z.infolist()
                          if not info.is_dir()], z.open)
    try:
        tar = tarfile.open(archive)
    except tarfile.TarError as error:
        raise UserError(f"{archive} is neither a zip nor a tar archive ({error}); delete it "
                        "and download it again.") from None
    with tar:
        for member in tar.getmembers():
            if not (member.isfile() or member.isdir()):
                raise UserError(f"{archive} holds {member.name!r}, a link or special file; "
                                "refusing to unpack it. Get the file from its official source.")
        return write([(m, destination(m.name)) for m in tar.getmembers() if m.isfile()],
                     tar.extractfile)

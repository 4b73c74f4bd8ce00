"""Reading the pickle files of the datasets' official releases without running their code.

Several formats tfmeta reads are Python pickles: LEO's embedding files, the mini-ImageNet
caches, tieredImageNet's image and label files, CIFAR-100's python archive. A pickle may
name any importable function and call it while it loads (that is how `pickle.load` can
run `os.system`). Data files are data, so every pickle from `--data_dir` goes through
`load`, whose unpickler resolves only the globals these formats need:

    numpy arrays, dtypes and scalars  numpy(._core|.core).multiarray._reconstruct, .scalar,
                                      numpy(._core|.core).numeric._frombuffer (protocol 5),
                                      numpy.ndarray, numpy.dtype
    bytes under pickle protocol 2     _codecs.encode (Python 3 writes bytes this way)
    containers                        builtins set, frozenset, bytearray; collections.OrderedDict

Plain dicts, lists, tuples, strings and numbers need no global. Anything else is refused
with `UnsafePickleError`, naming the file and the global, before any of it runs.
"""

from __future__ import annotations

import io
import pickle

ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"), ("__builtin__", "bytearray"),
    ("collections", "OrderedDict"),
})


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global that the data formats never need."""


class DataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `ALLOWED_GLOBALS`."""

    def __init__(self, file, path: str = "<pickle>", **kwargs):
        super().__init__(file, **kwargs)
        self.path = path

    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.path} asks to load the global {module}.{name}, which a data file never "
                "needs (it could run code); refusing to read it. Data pickles may hold only "
                "numpy arrays and Python containers: get the file again from its official "
                "source.")
        return super().find_class(module, name)


def load(path: str, encoding: str = "ASCII"):
    """Unpickles the file at `path` with `DataUnpickler` (`encoding="latin1"` for Python 2
    pickles holding numpy arrays, as LEO's and CIFAR's are)."""
    with open(path, "rb") as f:
        return DataUnpickler(f, path=path, encoding=encoding).load()


def load_data_file(path: str, encoding: str = "ASCII", fix: str = "get the file again."):
    """`load`, with a file that is not a readable pickle (truncated, corrupt, unreadable)
    reported as a ValueError naming it and `fix`; an unsafe one stays an UnsafePickleError."""
    try:
        return load(path, encoding)
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, OSError) as error:
        raise ValueError(f"{path} is not a readable pickle ({error}); {fix}") from None


def loads(data: bytes, path: str = "<bytes>", encoding: str = "ASCII"):
    return DataUnpickler(io.BytesIO(data), path=path, encoding=encoding).load()

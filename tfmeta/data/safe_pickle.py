"""Reading the pickle files of the datasets' official releases without running their code.

Several formats tfmeta reads are Python pickles: LEO's embedding files, the mini-ImageNet
caches, tieredImageNet's image and label files, CIFAR-100's python archive. A pickle may
name any importable function and call it while it loads (that is how `pickle.load` can
run `os.system`). Data files are data, so every pickle from `--data_dir` goes through
`load`, whose unpickler resolves only the globals these formats need:

    numpy arrays, dtypes and scalars  numpy(._core|.core).multiarray._reconstruct, .scalar,
                                      numpy(._core|.core).numeric._frombuffer (protocol 5),
                                      numpy.ndarray, numpy.dtype
    bytes under pickle protocol 2     _codecs.encode (Python 3 writes bytes this way),
                                      builtins.bytes (empty bytes)
    containers                        builtins set, frozenset, bytearray; collections.OrderedDict

Plain dicts, lists, tuples, strings and numbers need no global. Anything else is refused
with `UnsafePickleError`, naming the file and the global, before any of it runs.

Allowed callables cannot allocate more than the file holds: `bytearray` and `bytes` take
only bytes or text (never a size), and `numpy.ndarray` is handed to numpy's
`_reconstruct` (which pickles call with an empty shape, then fill from the file's bytes)
but cannot be called itself; `_reconstruct` refuses a shape of more than
`MAX_RECONSTRUCT_ELEMENTS` elements. Every other failure of a malformed file (a wrong
argument, a truncated stream) is a ValueError naming the file (`load_data_file`).
"""

from __future__ import annotations

import io
import math
import pickle

from tfmeta.errors import UserError

ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    ("builtins", "bytes"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"), ("__builtin__", "bytearray"),
    ("__builtin__", "bytes"),
    ("collections", "OrderedDict"),
})
# numpy's own pickles reconstruct with shape (0,) and fill the array from the file.
MAX_RECONSTRUCT_ELEMENTS = 1 << 16


class UnsafePickleError(pickle.UnpicklingError, UserError):
    """A pickle names a global that the data formats never need, or asks an allowed one to
    do what a data file never does (allocate from a number)."""


class _NdarrayType:
    """What a pickle gets for `numpy.ndarray`: `_reconstruct` takes it for the class, and
    calling it (an allocation of any size from a shape) is refused."""

    def __init__(self, path):
        self.path = path

    def __call__(self, *args, **kwargs):
        raise UnsafePickleError(f"{self.path} calls numpy.ndarray directly, which numpy's own "
                                "pickles never do (it allocates from a shape); refusing it.")


def _guarded(module, name, path):
    """The object `find_class` returns for an allowed global (see the module docstring)."""
    import numpy as np

    target = pickle.Unpickler.find_class(pickle.Unpickler(io.BytesIO()), module, name)
    if name in ("bytearray", "bytes"):
        def from_data(*args):
            if args and not isinstance(args[0], (bytes, bytearray, str)):
                raise UnsafePickleError(f"{path} calls {name}({type(args[0]).__name__}), which "
                                        "allocates from a number; a data file holds its bytes.")
            return target(*args)

        return from_data
    if name == "ndarray":
        return _NdarrayType(path)
    if name == "_reconstruct":
        def reconstruct(subtype, shape, dtype):
            if isinstance(subtype, _NdarrayType):
                subtype = np.ndarray
            if subtype is not np.ndarray:
                raise UnsafePickleError(f"{path} reconstructs a {subtype!r}, not a numpy array.")
            count = math.prod(shape) if isinstance(shape, tuple) else shape
            if not isinstance(count, int) or count > MAX_RECONSTRUCT_ELEMENTS:
                raise UnsafePickleError(f"{path} asks numpy to allocate {count} elements before "
                                        "reading them, which numpy's own pickles never do.")
            return target(subtype, shape, dtype)

        return reconstruct
    return target


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
        return _guarded(module, name, self.path)


def load(path: str, encoding: str = "ASCII"):
    """Unpickles the file at `path` with `DataUnpickler` (`encoding="latin1"` for Python 2
    pickles holding numpy arrays, as LEO's and CIFAR's are)."""
    with open(path, "rb") as f:
        return DataUnpickler(f, path=path, encoding=encoding).load()


def load_data_file(path: str, encoding: str = "ASCII", fix: str = "get the file again."):
    """`load`, with a file that is not a readable pickle (truncated, corrupt, unreadable,
    malformed calls) reported as a ValueError naming it and `fix`; an unsafe one is an
    UnsafePickleError (a ValueError too)."""
    try:
        return load(path, encoding)
    except UnsafePickleError:
        raise
    except FileNotFoundError:
        raise
    except (Exception, MemoryError) as error:  # noqa: BLE001 - any failure of a data file
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise UserError(f"{path} is not a readable pickle ({type(error).__name__}: "
                        f"{reason}); {fix}") from None


def loads(data: bytes, path: str = "<bytes>", encoding: str = "ASCII"):
    return DataUnpickler(io.BytesIO(data), path=path, encoding=encoding).load()

"""insightface verification `.bin` files (LFW, CFP-FP, AgeDB-30, ...): a pickle of `(bins, issame_list)`.

`bins` holds 2N encoded images (bytes, or uint8 numpy arrays as `cv2.imencode` returns), pair i
being `(bins[2i], bins[2i+1])`; `issame_list` holds N booleans (formats.md 3.2). The released files
were pickled under Python 2, so loading retries with `encoding="bytes"` as insightface does.

The pickle is read by an Unpickler that can build only byte strings, lists, tuples, bools, ints
and uint8 numpy arrays; any other global in the file is refused, so a crafted `.bin` cannot run code.
The two constructors that could allocate more than the file holds are bounded by the file's size:
`bytearray` only copies bytes or text that are in the file (never `bytearray(n)`), and an array
called for directly may not have more elements than the file has bytes.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facekd.data.codec import decode_image, encode_jpeg
from facekd.errors import DataError
from facekd.fileio import atomic_write_bytes


class _Refused(pickle.UnpicklingError):
    """The pickle asks for something a .bin never needs."""


def _uint8_dtype(name, *args):
    """numpy.dtype, but only for uint8: the one array type a .bin holds."""
    if isinstance(name, bytes):
        name = name.decode("ascii", errors="replace")
    if name != "u1":
        raise _Refused(f"numpy dtype {name!r}, expected uint8 ('u1')")
    return np.dtype(name, *args)


def _numpy_global(module: str, name: str):
    """The numpy internals that rebuild an ndarray (both numpy 1 and numpy 2 module paths)."""
    if (module, name) == ("numpy", "dtype"):
        return _uint8_dtype
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
        from numpy._core.multiarray import _reconstruct

        return _reconstruct
    if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
        from numpy._core.numeric import _frombuffer

        return _frombuffer
    return None


class _PairsUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, **kwargs) -> None:
        super().__init__(io.BytesIO(data), **kwargs)
        self.limit = len(data)

    def find_class(self, module: str, name: str):
        # Python 3 writes bytes under protocol 2 as _codecs.encode(text, "latin1").
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        if (module, name) in (("builtins", "bytearray"), ("__builtin__", "bytearray")):
            return _copying_bytearray
        if (module, name) == ("numpy", "ndarray"):
            return _bounded_array_type(self.limit)
        found = _numpy_global(module, name)
        if found is not None and name == "_reconstruct":
            return _bounded(found, self.limit)
        if found is None:
            raise _Refused(
                f"global {module}.{name}, expected only bytes, lists, bools and uint8 numpy arrays"
            )
        return found


def _copying_bytearray(source=b"", *encoding):
    """bytearray of bytes or text held in the file (protocol 2 writes it so); never a size."""
    if not isinstance(source, (bytes, str)):
        raise _Refused(f"bytearray({type(source).__name__}), expected bytes or text from the file")
    return bytearray(source, *encoding) if encoding else bytearray(source)


def _refuse_larger_than(shape, limit: int) -> None:
    count = int(np.prod(shape, dtype=np.float64))  # float: a crafted shape must not overflow
    if count > limit:
        raise _Refused(f"an array of {count} elements from a {limit}-byte file")


def _bounded(reconstruct, limit: int):
    """numpy's `_reconstruct(type, shape, dtype)`, for shapes no larger than the file."""
    def bounded(subtype, shape, dtype):
        _refuse_larger_than(shape, limit)
        return reconstruct(subtype, shape, dtype)

    return bounded


def _bounded_array_type(limit: int) -> type:
    """ndarray for `_reconstruct` (which builds an empty array, then fills it from the file's
    bytes); a direct call may not ask for more elements than the file has bytes."""

    class BoundedArray(np.ndarray):
        def __new__(cls, shape, *args, **kwargs):
            _refuse_larger_than(shape, limit)
            return np.ndarray.__new__(np.ndarray, shape, *args, **kwargs)

    return BoundedArray


def _unpickle(data: bytes, path: Path) -> object:
    def load(**kwargs) -> object:
        return _PairsUnpickler(data, **kwargs).load()

    try:
        try:
            return load()
        except UnicodeDecodeError:  # a Python 2 pickle of byte strings
            return load(encoding="bytes")
    except DataError:
        raise
    except _Refused as exc:
        raise DataError(f"{path}: refused to unpickle: {exc}") from None
    except Exception as exc:  # a truncated or garbled pickle fails in many ways
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None


class EncodedImages(Sequence):
    """A list of encoded images that decodes on access: `images[i]` is uint8 HxWx3 RGB."""

    def __init__(self, encoded: list[bytes], source: str):
        self.encoded = encoded
        self.source = source

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if not -len(self.encoded) <= index < len(self.encoded):
            raise IndexError(f"image {index} out of range for {len(self.encoded)} images")
        return decode_image(self.encoded[index], f"{self.source} image {index % len(self.encoded)}")


def load_pairs_bin(path: str | os.PathLike) -> tuple[EncodedImages, np.ndarray]:
    """Load a verification `.bin`: (images, issame).

    `images` holds the 2N encoded images and decodes one per access; `issame` is a bool array of N.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found, expected a verification .bin") from None
    loaded = _unpickle(data, path)
    if not isinstance(loaded, (tuple, list)) or len(loaded) != 2:
        raise DataError(f"{path}: unpickled a {type(loaded).__name__}, expected the tuple (bins, issame_list)")
    bins, issame_list = loaded
    if not isinstance(bins, (list, tuple)) or not isinstance(issame_list, (list, tuple, np.ndarray)):
        raise DataError(
            f"{path}: found ({type(bins).__name__}, {type(issame_list).__name__}), expected (list, list)"
        )
    encoded = [_as_bytes(item, path, index) for index, item in enumerate(bins)]
    if not encoded:
        raise DataError(f"{path}: no images, expected two encoded images per pair")
    if len(encoded) % 2:
        raise DataError(f"{path}: {len(encoded)} images, expected an even number (two per pair)")
    issame = np.asarray(issame_list)
    if issame.ndim != 1 or not (issame.dtype == bool or np.isin(issame, (0, 1)).all()):
        raise DataError(f"{path}: issame_list of dtype {issame.dtype} shape {issame.shape}, expected N booleans")
    if len(issame) != len(encoded) // 2:
        raise DataError(
            f"{path}: {len(issame)} issame labels for {len(encoded)} images, expected {len(encoded) // 2}"
        )
    return EncodedImages(encoded, str(path)), issame.astype(bool)


def _as_bytes(item: object, path: Path, index: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise DataError(f"{path}: image {index} is a {type(item).__name__}, expected encoded bytes or a uint8 array")


def write_pairs_bin(
    path: str | os.PathLike,
    images: Sequence[np.ndarray | bytes],
    issame: Sequence[bool] | np.ndarray,
    quality: int = 95,
) -> None:
    """Write a verification `.bin` that insightface's `load_bin` reads, atomically.

    images: 2N items, each encoded image bytes (stored as they are) or a uint8 HxWx3 RGB array
        (JPEG-encoded at `quality`); pair i is (images[2i], images[2i+1]).
    issame: N booleans. Pickled with protocol 4 as `(list_of_bytes, list_of_bool)`.
    """
    issame_list = [bool(value) for value in np.asarray(issame).ravel()]
    if len(images) != 2 * len(issame_list):
        raise DataError(f"{path}: {len(images)} images for {len(issame_list)} pairs, expected {2 * len(issame_list)}")
    bins = [bytes(item) if isinstance(item, (bytes, bytearray)) else encode_jpeg(item, quality) for item in images]
    atomic_write_bytes(path, pickle.dumps((bins, issame_list), protocol=4))

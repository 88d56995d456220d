"""Verification .bin reader and writer (formats.md 3.2), against pickles built here independently."""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from facekd.data import load_pairs_bin, write_pairs_bin
from facekd.errors import DataError


def jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), (value, 255 - value, 60)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


IMAGES = [jpeg(v) for v in (0, 50, 100, 150)]


def assert_decodes_to(image: np.ndarray, value: int) -> None:
    assert image.dtype == np.uint8 and image.shape == (12, 12, 3)
    assert np.abs(image.reshape(-1, 3).mean(axis=0) - (value, 255 - value, 60)).max() < 3


def python2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """Protocol-2 opcodes as Python 2 writes `pickle.dump((bins, issame), f, protocol=2)` of str items."""
    out = b"\x80\x02]q\x00("  # PROTO 2, EMPTY_LIST, BINPUT, MARK
    for item in bins:
        out += b"U" + bytes([len(item)]) + item if len(item) < 256 else b"T" + struct.pack("<i", len(item)) + item
    out += b"e](" + b"".join(b"\x88" if same else b"\x89" for same in issame) + b"e\x86q\x01."
    return out


@pytest.mark.parametrize("protocol", [2, 4])
def test_python3_pickle_of_bytes(tmp_path, protocol):
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((IMAGES, [True, False]), protocol=protocol))
    images, issame = load_pairs_bin(path)
    assert len(images) == 4 and issame.dtype == bool and issame.tolist() == [True, False]
    assert images.encoded[1] == IMAGES[1]
    assert_decodes_to(images[3], 150)
    assert_decodes_to(images[-4], 0)


def test_python2_pickle_needs_bytes_encoding(tmp_path):
    data = python2_pickle(IMAGES, [False, True])
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)  # the default ASCII decoding fails, as in insightface's load_bin
    path = tmp_path / "py2.bin"
    path.write_bytes(data)
    images, issame = load_pairs_bin(path)
    assert issame.tolist() == [False, True]
    assert images.encoded == IMAGES
    assert_decodes_to(images[2], 100)


def python2_numpy_array(data: bytes) -> bytes:
    """Opcodes of a Python 2 numpy uint8 array of shape (n, 1), as cv2.imencode returns, pickled with protocol 2."""
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"  # _reconstruct(ndarray, (0,), 'b')
        b"(K\x01K" + bytes([len(data)]) + b"K\x01\x86"  # state: version 1, shape (n, 1)
        b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        b"\x89T" + struct.pack("<i", len(data)) + data + b"tb"  # not Fortran order, raw bytes as a py2 str
    )


def test_python2_pickle_of_numpy_arrays(tmp_path):
    small = [bytes(range(200, 255)), bytes(range(100, 155))]
    path = tmp_path / "py2np.bin"
    path.write_bytes(b"\x80\x02](" + b"".join(python2_numpy_array(d) for d in small) + b"e](\x88e\x86.")
    images, issame = load_pairs_bin(path)
    assert images.encoded == small and issame.tolist() == [True]


@pytest.mark.parametrize("protocol", [2, 5])
def test_numpy_uint8_items_as_cv2_imencode_returns(tmp_path, protocol):
    bins = [np.frombuffer(item, dtype=np.uint8).reshape(-1, 1) for item in IMAGES]
    path = tmp_path / "np.bin"
    path.write_bytes(pickle.dumps((bins, [True, True]), protocol=protocol))
    images, issame = load_pairs_bin(path)
    assert images.encoded == IMAGES and issame.tolist() == [True, True]
    assert_decodes_to(images[1], 50)


class RunsCommand:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "payload, found",
    [
        ((RunsCommand(), [True]), "system"),
        (([np.zeros(4, dtype=np.float64), IMAGES[0]], [True]), "dtype"),
        ((IMAGES, {True, False}), "set, expected only bytes"),
    ],
)
def test_refuses_anything_but_bytes_and_uint8_arrays(tmp_path, payload, found):
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match="refused to unpickle") as excinfo:
        load_pairs_bin(path)
    assert found in str(excinfo.value) and str(path) in str(excinfo.value)


def test_odd_image_count(tmp_path):
    path = tmp_path / "odd.bin"
    path.write_bytes(pickle.dumps((IMAGES[:3], [True]), protocol=2))
    with pytest.raises(DataError, match="3 images, expected an even number"):
        load_pairs_bin(path)


def test_issame_length_mismatch(tmp_path):
    path = tmp_path / "mismatch.bin"
    path.write_bytes(pickle.dumps((IMAGES, [True, False, True]), protocol=2))
    with pytest.raises(DataError, match="3 issame labels for 4 images, expected 2"):
        load_pairs_bin(path)


def test_truncated_missing_and_wrong_shape(tmp_path):
    path = tmp_path / "cut.bin"
    path.write_bytes(pickle.dumps((IMAGES, [True, False]), protocol=4)[:-50])
    with pytest.raises(DataError, match="not a readable pickle"):
        load_pairs_bin(path)
    with pytest.raises(DataError, match="file not found"):
        load_pairs_bin(tmp_path / "absent.bin")
    path.write_bytes(pickle.dumps([IMAGES], protocol=4))
    with pytest.raises(DataError, match="expected the tuple"):
        load_pairs_bin(path)


def test_undecodable_image_is_named(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(([IMAGES[0], b"garbage!"], [True]), protocol=4))
    images, _ = load_pairs_bin(path)
    with pytest.raises(DataError, match=r"bad\.bin image 1: undecodable"):
        images[1]


def test_writer_output_reads_with_plain_pickle(tmp_path):
    arrays = [np.full((12, 12, 3), (v, 255 - v, 60), np.uint8) for v in (10, 200)]
    path = tmp_path / "out.bin"
    write_pairs_bin(path, [IMAGES[0], arrays[0], arrays[1], IMAGES[1]], np.array([1, 0]))
    with open(path, "rb") as handle:
        assert handle.read(2)[0] == 0x80  # a pickle protocol >= 2
    bins, issame = pickle.loads(path.read_bytes())  # what insightface's load_bin does
    assert issame == [True, False] and bins[0] == IMAGES[0] and bins[3] == IMAGES[1]
    assert_decodes_to(np.asarray(Image.open(io.BytesIO(bins[2]))), 200)
    with pytest.raises(DataError, match="3 images for 2 pairs"):
        write_pairs_bin(tmp_path / "x.bin", IMAGES[:3], [True, False])


class Calls:
    """Pickles as `func(*args)` (a crafted file: nothing runs when it is written)."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    "bomb",
    [
        Calls(bytearray, 1_500_000_000),  # the 60-byte .bin that allocated 3 GB
        Calls(np.ndarray, (1_500_000_000,), np.uint8),
        Calls(np.ndarray, (2**40, 2**40), np.uint8),
    ],
)
def test_a_small_file_cannot_allocate_more_than_it_holds(tmp_path, bomb):
    import resource

    path = tmp_path / "bomb.bin"
    path.write_bytes(pickle.dumps(([bomb, IMAGES[0]], [True]), protocol=2))
    assert path.stat().st_size < 1000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match="refused to unpickle") as excinfo:
        load_pairs_bin(path)
    assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing big was touched


def test_reconstruct_with_a_huge_shape_is_refused(tmp_path):
    from numpy._core.multiarray import _reconstruct

    path = tmp_path / "bomb.bin"
    path.write_bytes(pickle.dumps(([Calls(_reconstruct, np.ndarray, (1_500_000_000,), b"B"), IMAGES[0]], [True]),
                                  protocol=2))
    with pytest.raises(DataError, match="elements from a"):
        load_pairs_bin(path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_uint8_arrays_and_bytearrays_of_real_bytes_still_load(tmp_path, protocol):
    arrays = [np.frombuffer(item, dtype=np.uint8).copy() for item in IMAGES]
    path = tmp_path / f"p{protocol}.bin"
    path.write_bytes(pickle.dumps(([arrays[0], bytearray(IMAGES[1]), *arrays[2:]], [True, False]), protocol=protocol))
    images, issame = load_pairs_bin(path)
    assert [images.encoded[i] for i in range(len(IMAGES))] == [bytes(item) for item in IMAGES]
    assert issame.tolist() == [True, False]

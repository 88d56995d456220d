"""Fuzzing facekd's readers: build a small valid file set, mutate it, classify what the reader does.

A reader may only (a) read the data correctly, or (b) stop with facekd's own one-line error.
Outcomes:
  same      the read equals the unmutated file's (the mutation was harmless, e.g. a pixel byte)
  changed   a text format read as another valid file (a deleted list line is a smaller list)
  error     a FacekdError
  silent    a RecordIO set or .bin read with a different image count or labels, without an error:
            their structure is redundant (framing, index, header ranges; pairs and labels), so a
            corruption must be caught. This is the failure the fuzzer hunts.
  crash     any other exception (a traceback from inside a library)
  hang      the read did not finish within the time limit

`tests/test_fuzz.py` drives it with hypothesis for a short run; `benchmarks/bench_fuzz.py` runs
100,000+ cases and counts the outcomes.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import random
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.errors import FacekdError

OUTCOMES = ("same", "changed", "error", "silent", "crash", "hang")


@dataclass(frozen=True)
class Target:
    """A reader and the files it reads: `files` (name -> bytes) are written under a folder."""

    name: str
    files: dict[str, bytes]
    read: Callable[[Path], object]  # folder -> a comparable summary of what was read
    redundant: bool  # True: any change of the summary is a silent corruption

    def __repr__(self) -> str:
        return f"Target({self.name})"


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `Hang` after `seconds` (main thread, Unix)."""
    def stop(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def classify(target: Target, folder: Path, files: dict[str, bytes], expected: object,
             seconds: float = 5.0) -> tuple[str, str]:
    """Write `files` to `folder`, read them, and return (outcome, detail)."""
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    try:
        with time_limit(seconds):
            found = target.read(folder)
    except Hang:
        return "hang", f"over {seconds} s"
    except FacekdError as error:
        return "error", str(error)
    except Exception as error:  # anything else is a crash: the case to fix
        return "crash", f"{type(error).__name__}: {error}"
    if found == expected:
        return "same", ""
    return ("silent" if target.redundant else "changed"), f"read {found!r}"


# -- mutations ----------------------------------------------------------------------------------

def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One random edit: flip, overwrite, insert, delete, duplicate a range, or truncate."""
    if not data:
        return bytes([rng.randrange(256)])
    data = bytearray(data)
    at = rng.randrange(len(data))
    span = rng.randint(1, min(16, len(data) - at))
    kind = rng.randrange(6)
    if kind == 0:
        data[at] ^= 1 << rng.randrange(8)
    elif kind == 1:
        data[at:at + span] = bytes(rng.randrange(256) for _ in range(span))
    elif kind == 2:
        data[at:at] = bytes(rng.randrange(256) for _ in range(span))
    elif kind == 3:
        del data[at:at + span]
    elif kind == 4:
        data[at:at] = data[at:at + span]
    else:
        del data[at:]
    return bytes(data)


def mutate_lines(data: bytes, rng: random.Random) -> bytes:
    """One line edit: delete, duplicate, swap, blank, or rewrite a number in a line."""
    lines = data.split(b"\n")
    at = rng.randrange(len(lines))
    kind = rng.randrange(5)
    if kind == 0:
        del lines[at]
    elif kind == 1:
        lines.insert(at, lines[at])
    elif kind == 2:
        other = rng.randrange(len(lines))
        lines[at], lines[other] = lines[other], lines[at]
    elif kind == 3:
        lines[at] = b""
    else:
        words = lines[at].split()
        if words:
            pick = rng.randrange(len(words))
            words[pick] = str(rng.choice([0, -1, 1, 2, 7, 10 ** 12, rng.randrange(10 ** 6)])).encode()
            lines[at] = b" ".join(words)
    return b"\n".join(lines)


def mutate(target: Target, rng: random.Random) -> dict[str, bytes]:
    """The target's files with one random edit to one of them (line edits for text files)."""
    files = dict(target.files)
    name = rng.choice(sorted(files))
    text = not name.endswith((".rec", ".bin"))
    files[name] = mutate_lines(files[name], rng) if text and rng.random() < 0.5 else mutate_bytes(files[name], rng)
    return files


# -- the targets --------------------------------------------------------------------------------

def _images(count: int, size: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def _recordio(scratch: Path) -> Target:
    from facekd.data import RecordIODataset
    from facekd.data.face_rec import write_face_rec

    write_face_rec(scratch / "rec", [(image, k // 3) for k, image in enumerate(_images(9))])
    files = {name: (scratch / "rec" / name).read_bytes() for name in ("train.rec", "train.idx", "property")}

    def read(folder: Path):
        dataset = RecordIODataset(folder)
        for index in range(len(dataset)):
            dataset[index]
        return len(dataset), tuple(int(label) for label in dataset.labels)

    return Target("recordio", files, read, redundant=True)


def _pairs_bin(scratch: Path) -> Target:
    from facekd.data import load_pairs_bin
    from facekd.data.codec import encode_jpeg

    images = [encode_jpeg(image) for image in _images(6)]
    data = pickle.dumps((images, [True, False, True]), protocol=4)

    def read(folder: Path):
        pairs, issame = load_pairs_bin(folder / "pairs.bin")
        for index in range(len(pairs)):
            pairs[index]
        return len(pairs), len(issame)  # the labels of a .bin carry no redundancy; the count does

    return Target("pairs_bin", {"pairs.bin": data}, read, redundant=True)


def _list_file(scratch: Path) -> Target:
    from facekd.data.codec import encode_jpeg
    from facekd.data.folders import ListFileDataset

    files = {f"img/{k}.jpg": encode_jpeg(image) for k, image in enumerate(_images(4))}
    files["list.txt"] = b"".join(f"img/{k}.jpg {k // 2}\n".encode() for k in range(4))

    def read(folder: Path):
        dataset = ListFileDataset(folder / "list.txt")
        for index in range(len(dataset)):
            dataset[index]
        return len(dataset), tuple(int(label) for label in dataset.labels)

    return Target("list_file", files, read, redundant=False)


def _celeba(scratch: Path) -> Target:
    from facekd.data import celeba

    names = [f"{k:06d}.jpg" for k in range(3)]
    celeba.write_attributes(scratch / "a.txt", names, ["Smiling", "Male"], np.array([[1, -1], [-1, 1], [1, 1]]))
    celeba.write_landmarks(scratch / "l.txt", names, np.arange(30, dtype=float).reshape(3, 5, 2) + 10)
    celeba.write_identities(scratch / "i.txt", names, np.array([4, 4, 9]))
    files = {name: (scratch / name).read_bytes() for name in ("a.txt", "l.txt", "i.txt")}

    def read(folder: Path):
        attributes = celeba.read_attributes(folder / "a.txt")
        landmarks = celeba.read_landmarks(folder / "l.txt")
        identities = celeba.read_identities(folder / "i.txt")
        return (tuple(attributes.names), attributes.values.tobytes(), landmarks.points.tobytes(),
                tuple(identities.ids.tolist()))

    return Target("celeba", files, read, redundant=False)


def _ijb_meta(scratch: Path) -> Target:
    from facekd.evaluate.ijb import read_ijb_meta

    faces = "".join(f"{k}.jpg {1 + k // 2} {10 + k}\n" for k in range(4))
    pairs = "1 2 0\n1 1 1\n2 2 1\n"
    points = "".join(f"{k}.jpg " + " ".join(str(30 + j) for j in range(10)) + " 0.9\n" for k in range(4))
    files = {"IJBC/meta/ijbc_face_tid_mid.txt": faces.encode(),
             "IJBC/meta/ijbc_template_pair_label.txt": pairs.encode(),
             "IJBC/meta/ijbc_name_5pts_score.txt": points.encode()}

    def read(folder: Path):
        meta = read_ijb_meta(folder, "IJBC")
        return tuple(value.tobytes() for value in vars(meta).values() if isinstance(value, np.ndarray))

    return Target("ijb_meta", files, read, redundant=False)


def _config(scratch: Path) -> Target:
    from facekd.distill.config import DistillExperimentConfig
    from facekd.train.config import load_config, to_dict

    text = (b"model: {backbone: r18, input_size: 48, kwargs: {width: 0.25}}\n"
            b"optim: {lr: 0.1, weight_decay: 5e-4}\ntrain: {epochs: 2, batch_size: 32, workers: 0}\n"
            b"distill: {method: margin, cache: off, options: {m_max: 0.5, m_min: 0.2}}\n")

    def read(folder: Path):
        config = load_config(folder / "c.yaml", schema=DistillExperimentConfig, check_paths=False)
        return repr(to_dict(config))

    return Target("config", {"c.yaml": text}, read, redundant=False)


BUILDERS = {"recordio": _recordio, "pairs_bin": _pairs_bin, "list_file": _list_file, "celeba": _celeba,
            "ijb_meta": _ijb_meta, "config": _config}


def build_targets(scratch: Path, names: tuple[str, ...] = tuple(BUILDERS)) -> dict[str, tuple[Target, object]]:
    """Each target with the summary of its unmutated read (which must succeed)."""
    targets = {}
    for name in names:
        folder = scratch / f"{name}-source"
        folder.mkdir(parents=True, exist_ok=True)
        target = BUILDERS[name](folder)
        clean = scratch / f"{name}-clean"
        outcome, detail = classify(target, clean, target.files, None)
        if outcome not in ("changed", "silent"):  # a summary differing from None: it read
            raise RuntimeError(f"fuzz target {name}: the unmutated files do not read ({outcome}: {detail})")
        targets[name] = (target, target.read(clean))
    return targets


def quiet() -> contextlib.AbstractContextManager:
    """Silence readers' warnings (skipped records) during a long run."""
    return contextlib.redirect_stderr(io.StringIO())

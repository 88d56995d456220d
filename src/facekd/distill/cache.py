"""Teacher outputs cached on disk, so a frozen teacher runs once per data set, not once per epoch.

This is the MarginDistillation recipe (its teacher embeddings are computed offline). Training
augments only by horizontal flip, applied per batch, so the cache stores every output twice:
`[i, 0]` for image i as stored and `[i, 1]` for its mirror; `lookup` picks per sample.

Under torchrun every rank runs the teacher on its contiguous share of the data set and writes its
part; rank 0 marks the cache complete once every part is there. A reader of any world size maps
the parts that meta.json lists. The folder must be one that every rank sees (a shared file system
across nodes).

Layout of ROOT:
    meta.json                  fingerprint, fields, shapes, dtype, the parts and their sample
                               ranges (written last: its presence means the cache is complete)
    part-R-of-W/<field>.npy    rank R's samples [start, stop), shape (stop - start, 2, ...), read
                               as a memory map
    part-R-of-W/done.json      that part's fingerprint, fields and range (written last: a killed
                               build keeps its finished parts, and redoes the others)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from facekd.distill.teacher import CACHEABLE_OUTPUTS, Teacher, TeacherOutputs
from facekd.errors import ConfigError, DataError
from facekd.fileio import atomic_write_text
from facekd.train.distributed import barrier

META_NAME = "meta.json"
CACHE_VERSION = 3  # 2: the key covers centres, kwargs, pixel convention and labels; 3: per-rank parts
FULL_HASH_BYTES = 64 << 20
HASH_SAMPLE_BYTES = 1 << 20
# How images reach the teacher (resize to its input size, then its own normalisation); bump it
# when that code changes, so caches built by the old code are rebuilt.
NETWORK_INPUT = "distill.base.network_input v1"


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a file cheaply: resolved path, size and modification time."""
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def content_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """`file_fingerprint` plus a digest of the bytes: all of them up to FULL_HASH_BYTES, else the
    first and last HASH_SAMPLE_BYTES (a rewritten checkpoint changes both ends: header and tensors)."""
    path = Path(path)
    found = file_fingerprint(path)
    digest = hashlib.sha1()
    with path.open("rb") as handle:
        if found["size"] <= FULL_HASH_BYTES:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(handle.read(HASH_SAMPLE_BYTES))
            handle.seek(-HASH_SAMPLE_BYTES, os.SEEK_END)
            digest.update(handle.read(HASH_SAMPLE_BYTES))
    return {**found, "sha1": digest.hexdigest()}


def dataset_fingerprint(data: str | os.PathLike, labels: np.ndarray) -> dict[str, Any]:
    """The training set: its RecordIO pair (or list file / folder) and every sample's label."""
    data = Path(data)
    if (data / "train.rec").is_file():
        files = [data / "train.rec", data / "train.idx"]
    else:
        files = [data]
    return {
        "files": [file_fingerprint(f) for f in files if f.exists()],
        "num_samples": int(len(labels)),
        "labels_sha1": hashlib.sha1(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest(),
    }


def teacher_fingerprint(teacher_config: Any, input_size: int) -> dict[str, Any]:
    """Everything in the teacher's config (weights, centres, architecture, kwargs, ONNX pixel
    convention, ...) with its files identified by content, plus the input size in use."""
    fields = dataclasses.asdict(teacher_config)
    for name in ("path", "head"):
        if fields.get(name):
            fields[name] = content_fingerprint(fields[name])
    return {**fields, "input_size": input_size, "network_input": NETWORK_INPUT}


def part_range(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank's contiguous share of the samples (the first num_samples % world_size get one more)."""
    base, extra = divmod(num_samples, world_size)
    start = base * rank + min(rank, extra)
    return start, start + base + int(rank < extra)


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable {what} ({exc}); delete {path.parent} to rebuild") from exc


class TeacherCache:
    def __init__(self, root: Path, parts: list[dict[str, np.ndarray]], starts: np.ndarray,
                 meta: dict[str, Any]) -> None:
        self.root = root
        self.parts = parts  # per part: field -> (stop - start, 2, ...) memory map
        self.starts = starts  # first sample of each part, ascending
        self.meta = meta

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.meta["fields"])

    def __len__(self) -> int:
        return int(self.meta["num_samples"])

    @classmethod
    def open(cls, root: str | os.PathLike, fingerprint: dict[str, Any]) -> "TeacherCache | None":
        """The cache at `root` if it is complete and was built for `fingerprint`, else None."""
        root = Path(root)
        meta = _read_json(root / META_NAME, "teacher-cache metadata")
        if meta is None or meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != fingerprint:
            return None
        parts = []
        for part in meta["parts"]:
            arrays = {}
            for field in meta["fields"]:
                path = root / part["name"] / f"{field}.npy"
                try:
                    array = np.load(path, mmap_mode="r")
                except (OSError, ValueError) as exc:
                    raise DataError(f"{path}: unreadable teacher-cache array ({exc}); delete {root} to rebuild") from exc
                expected = (part["stop"] - part["start"], 2, *meta["shapes"][field])
                if array.shape != expected:
                    raise DataError(f"{path}: found shape {array.shape}, expected {expected}; delete {root} to rebuild")
                arrays[field] = array
            parts.append(arrays)
        starts = np.array([part["start"] for part in meta["parts"]], dtype=np.int64)
        return cls(root, parts, starts, meta)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        root: str | os.PathLike,
        teacher: Teacher,
        samples,
        fields: frozenset[str],
        fingerprint: dict[str, Any],
        *,
        batch_size: int = 256,
        num_workers: int = 0,
        dtype: str = "float16",
        device: torch.device | None = None,
        progress: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> "TeacherCache":
        """Run the teacher over this rank's share of `samples` (TrainSamples: dicts with
        image/label/index) and store its part; collective when world_size > 1."""
        unknown = set(fields) - CACHEABLE_OUTPUTS
        if unknown:
            raise ConfigError(f"teacher cache: cannot cache {sorted(unknown)}; cacheable outputs are {sorted(CACHEABLE_OUTPUTS)}")
        if dtype not in ("float16", "float32"):
            raise ConfigError(f"teacher cache dtype: found {dtype!r}, expected float16 or float32")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        num_samples = len(samples)
        if rank == 0:
            (root / META_NAME).unlink(missing_ok=True)  # an interrupted rebuild must not look complete
        expected = _part_marker(fingerprint, fields, dtype, num_samples, rank, world_size)
        folder = root / expected["name"]
        if _finished_part(folder) != expected:
            start, stop = expected["start"], expected["stop"]
            shapes = _write_part(folder, teacher, samples, fields, start, stop, batch_size=batch_size,
                                 num_workers=num_workers, dtype=dtype, device=device or torch.device("cpu"),
                                 progress=progress and rank == 0)
            atomic_write_text(folder / "done.json", json.dumps({**expected, "shapes": shapes}))
        barrier()  # every rank's part is written
        if rank == 0:
            _mark_complete(root, fingerprint, fields, dtype, num_samples, world_size)
        barrier()  # meta.json is there for every rank
        cache = cls.open(root, fingerprint)
        assert cache is not None
        return cache

    def lookup(self, index: Tensor, flipped: Tensor, needs: frozenset[str], device: torch.device) -> TeacherOutputs:
        """Teacher outputs for a batch, given dataset indices and which images were mirrored."""
        rows = index.cpu().numpy().astype(np.int64)
        mirror = flipped.cpu().numpy().astype(np.int64)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        out = TeacherOutputs()
        for field in needs:
            values = np.empty((len(rows), *self.meta["shapes"][field]), dtype=np.float32)
            for part in np.unique(which):
                chosen = which == part
                values[chosen] = self.parts[part][field][rows[chosen] - self.starts[part], mirror[chosen]]
            setattr(out, field, torch.from_numpy(values).to(device))
        return out


def _write_part(folder: Path, teacher: Teacher, samples, fields: frozenset[str], start: int, stop: int, *,
                batch_size: int, num_workers: int, dtype: str, device: torch.device,
                progress: bool) -> dict[str, list[int]]:
    """The teacher's outputs for samples [start, stop), both orientations; returns their shapes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "done.json").unlink(missing_ok=True)
    loader = DataLoader(Subset(samples, range(start, stop)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    arrays: dict[str, np.ndarray] = {}
    tmp_paths: dict[str, Path] = {}
    seen = np.zeros(stop - start, dtype=bool)
    for batch in tqdm(loader, desc="teacher cache", unit="batch", disable=not progress):
        images = batch["image"].to(device)
        labels = torch.as_tensor(batch["label"]).to(device)
        index = torch.as_tensor(batch["index"]).numpy() - start
        both = [teacher.outputs(images, labels, frozenset(fields)),
                teacher.outputs(images.flip(-1), labels, frozenset(fields))]
        for field in fields:
            values = [getattr(out, field).float().cpu().numpy() for out in both]
            if field not in arrays:
                tmp_paths[field] = folder / f".{field}.npy.tmp"
                arrays[field] = np.lib.format.open_memmap(
                    tmp_paths[field], mode="w+", dtype=dtype, shape=(stop - start, 2, *values[0].shape[1:]))
            arrays[field][index, 0] = values[0]
            arrays[field][index, 1] = values[1]
        seen[index] = True
    if not seen.all():
        raise DataError(f"teacher cache {folder}: {int((~seen).sum())} of samples [{start}, {stop}) "
                        "were never produced by the data set")
    shapes = {}
    for field, array in arrays.items():
        array.flush()
        shapes[field] = list(array.shape[2:])
        del array
        os.replace(tmp_paths[field], folder / f"{field}.npy")
    return shapes


def _part_marker(fingerprint: dict[str, Any], fields: frozenset[str], dtype: str, num_samples: int,
                 rank: int, world_size: int) -> dict[str, Any]:
    """What a finished part of rank `rank` records in its done.json (besides the shapes)."""
    start, stop = part_range(num_samples, rank, world_size)
    return {"name": f"part-{rank}-of-{world_size}", "start": start, "stop": stop, "fingerprint": fingerprint,
            "fields": sorted(fields), "dtype": dtype}


def _finished_part(folder: Path) -> dict[str, Any] | None:
    """The part's done.json without its shapes; None while the part is unfinished."""
    marker = _read_json(folder / "done.json", "teacher-cache part marker")
    return None if marker is None else {key: value for key, value in marker.items() if key != "shapes"}


def _mark_complete(root: Path, fingerprint: dict[str, Any], fields: frozenset[str], dtype: str,
                   num_samples: int, world_size: int) -> None:
    """Rank 0, once every part is written: check the parts, drop stale ones, write meta.json."""
    parts = []
    for rank in range(world_size):
        expected = _part_marker(fingerprint, fields, dtype, num_samples, rank, world_size)
        if _finished_part(root / expected["name"]) != expected:
            raise DataError(f"teacher cache {root}: part {expected['name']} is missing or stale after every rank "
                            "finished; is distill.cache_dir on a file system all ranks share?")
        parts.append({key: expected[key] for key in ("name", "start", "stop")})
    shapes = _read_json(root / parts[0]["name"] / "done.json", "teacher-cache part marker")["shapes"]
    names = {part["name"] for part in parts}
    for folder in root.glob("part-*-of-*"):
        if folder.name not in names:
            shutil.rmtree(folder, ignore_errors=True)  # another world size's parts: superseded
    meta = {"version": CACHE_VERSION, "fingerprint": fingerprint, "fields": sorted(fields), "shapes": shapes,
            "dtype": dtype, "num_samples": num_samples, "parts": parts}
    atomic_write_text(root / META_NAME, json.dumps(meta, indent=2))

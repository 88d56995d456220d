"""Teacher outputs cached on disk, so a frozen teacher runs once per data set, not once per epoch.

This is the MarginDistillation recipe (its teacher embeddings are computed offline). Training
augments only by horizontal flip, applied per batch, so the cache stores every output twice:
`[i, 0]` for image i as stored and `[i, 1]` for its mirror; `lookup` picks per sample.

Layout of ROOT:
    meta.json                  fingerprint, fields, shapes, dtype (written last: its presence
                               means the cache is complete)
    <field>.npy                one array per field, shape (N, 2, ...), read as a memory map
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from facekd.distill.teacher import CACHEABLE_OUTPUTS, Teacher, TeacherOutputs
from facekd.errors import ConfigError, DataError
from facekd.fileio import atomic_write_text

META_NAME = "meta.json"
CACHE_VERSION = 2  # 2: the key covers centres, kwargs, pixel convention and labels
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


class TeacherCache:
    def __init__(self, root: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.root = root
        self.arrays = arrays
        self.meta = meta

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.arrays)

    def __len__(self) -> int:
        return int(self.meta["num_samples"])

    @classmethod
    def open(cls, root: str | os.PathLike, fingerprint: dict[str, Any]) -> "TeacherCache | None":
        """The cache at `root` if it is complete and was built for `fingerprint`, else None."""
        root = Path(root)
        meta_path = root / META_NAME
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{meta_path}: unreadable teacher-cache metadata ({exc}); delete the folder to rebuild") from exc
        if meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != fingerprint:
            return None
        arrays = {}
        for field in meta["fields"]:
            path = root / f"{field}.npy"
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: unreadable teacher-cache array ({exc}); delete {root} to rebuild") from exc
            expected = (meta["num_samples"], 2, *meta["shapes"][field])
            if array.shape != tuple(expected):
                raise DataError(f"{path}: found shape {array.shape}, expected {tuple(expected)}; delete {root} to rebuild")
            arrays[field] = array
        return cls(root, arrays, meta)

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
    ) -> "TeacherCache":
        """Run the teacher over `samples` (TrainSamples: dicts with image/label/index) and store the outputs."""
        unknown = set(fields) - CACHEABLE_OUTPUTS
        if unknown:
            raise ConfigError(f"teacher cache: cannot cache {sorted(unknown)}; cacheable outputs are {sorted(CACHEABLE_OUTPUTS)}")
        if dtype not in ("float16", "float32"):
            raise ConfigError(f"teacher cache dtype: found {dtype!r}, expected float16 or float32")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        (root / META_NAME).unlink(missing_ok=True)  # an interrupted rebuild must not look complete
        device = device or torch.device("cpu")
        loader = DataLoader(samples, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        num_samples = len(samples)
        arrays: dict[str, np.ndarray] = {}
        tmp_paths: dict[str, Path] = {}
        seen = np.zeros(num_samples, dtype=bool)
        for batch in tqdm(loader, desc="teacher cache", unit="batch", disable=not progress):
            images = batch["image"].to(device)
            labels = torch.as_tensor(batch["label"]).to(device)
            index = torch.as_tensor(batch["index"]).numpy()
            both = [teacher.outputs(images, labels, frozenset(fields)),
                    teacher.outputs(images.flip(-1), labels, frozenset(fields))]
            for field in fields:
                values = [getattr(out, field).float().cpu().numpy() for out in both]
                if field not in arrays:
                    tmp_paths[field] = root / f".{field}.npy.tmp"
                    arrays[field] = np.lib.format.open_memmap(
                        tmp_paths[field], mode="w+", dtype=dtype, shape=(num_samples, 2, *values[0].shape[1:])
                    )
                arrays[field][index, 0] = values[0]
                arrays[field][index, 1] = values[1]
            seen[index] = True
        if not seen.all():
            raise DataError(f"teacher cache {root}: {int((~seen).sum())} of {num_samples} samples were never produced by the data set")
        shapes = {}
        for field, array in arrays.items():
            array.flush()
            shapes[field] = list(array.shape[2:])
            del array
            os.replace(tmp_paths[field], root / f"{field}.npy")
        meta = {
            "version": CACHE_VERSION,
            "fingerprint": fingerprint,
            "fields": sorted(fields),
            "shapes": shapes,
            "dtype": dtype,
            "num_samples": num_samples,
        }
        atomic_write_text(root / META_NAME, json.dumps(meta, indent=2))
        cache = cls.open(root, fingerprint)
        assert cache is not None
        return cache

    def lookup(self, index: Tensor, flipped: Tensor, needs: frozenset[str], device: torch.device) -> TeacherOutputs:
        """Teacher outputs for a batch, given dataset indices and which images were mirrored."""
        rows = index.cpu().numpy()
        mirror = flipped.cpu().numpy().astype(np.int64)
        out = TeacherOutputs()
        for field in needs:
            values = torch.from_numpy(np.asarray(self.arrays[field][rows, mirror], dtype=np.float32))
            setattr(out, field, values.to(device))
        return out

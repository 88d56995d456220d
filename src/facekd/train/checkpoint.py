"""facekd checkpoints: one `torch.save` dict that loads with `weights_only=True`.

Keys: facekd (format version), backbone_name, backbone_kwargs, backbone, task, optimizer,
scheduler, scaler, step, epoch, epoch_step, rng, config, world_size, shards, best.

Row-sharded parameters (Partial FC centres) are gathered into full matrices, together with
their optimiser state, and `shards` records the layout they were gathered from; loading slices
them for the current layout, so a run resumes on any number of processes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facekd.errors import CheckpointError
from facekd.fileio import atomic_open
from facekd.models.loading import read_weights_file
from facekd.train import distributed as dist
from facekd.train.task import Task

FORMAT_VERSION = 1
REQUIRED_KEYS = ("facekd", "backbone_name", "backbone_kwargs", "backbone", "task", "optimizer",
                 "scheduler", "scaler", "step", "epoch", "epoch_step", "rng", "config", "world_size", "shards")


def capture_rng() -> dict[str, Any]:
    """This process's random states, in types that `weights_only` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _param_index(task: Task, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Parameter name -> its id in `optimizer.state_dict()` (ids follow the group order)."""
    ids = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    return {name: ids[id(p)] for name, p in task.named_parameters() if id(p) in ids}


def _gather_rows(local: torch.Tensor, rows_per_rank: list[int]) -> torch.Tensor:
    """Concatenate every rank's row block (blocks may differ in size by one)."""
    if len(rows_per_rank) == 1:
        return local.detach().cpu().clone()
    padded = local.new_zeros((max(rows_per_rank),) + tuple(local.shape[1:]))
    padded[: local.shape[0]] = local.detach()
    blocks = dist.all_gather(padded)
    return torch.cat([b[:n] for b, n in zip(blocks, rows_per_rank)]).cpu()


def training_state(task: Task, optimizer: torch.optim.Optimizer) -> tuple[dict, dict, dict]:
    """The task and optimiser state with sharded rows gathered (collective: call on every rank)."""
    live = task.state_dict()
    task_state = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in live.items()}
    optim_state = optimizer.state_dict()
    layout = task.shard_layout()
    shards = {}
    index = _param_index(task, optimizer)
    for name, spec in sorted(layout.items()):
        rows = dist.all_gather_objects(spec["rows"])
        shards[name] = {"rows": rows, "total": spec["total"]}
        task_state[name] = _gather_rows(live[name], rows)
        slot_id = index.get(name)
        if slot_id in optim_state["state"]:
            # state_dict() shares the live per-parameter dicts: build new ones, never mutate those.
            optim_state["state"][slot_id] = {
                key: _gather_rows(value, rows)
                if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == spec["rows"] else value
                for key, value in optim_state["state"][slot_id].items()
            }
    return task_state, optim_state, shards


def _slice_rows(full: torch.Tensor, spec: dict[str, int], name: str, source: str) -> torch.Tensor:
    if full.shape[0] != spec["total"]:
        raise CheckpointError(f"{source}: {name} has {full.shape[0]} rows, this run expects {spec['total']} classes")
    return full[spec["offset"]: spec["offset"] + spec["rows"]]


def load_training_state(checkpoint: dict, task: Task, optimizer: torch.optim.Optimizer, source: str) -> None:
    """Load task and optimiser state, slicing gathered shards for this process's layout."""
    task_state = dict(checkpoint["task"])
    optim_state = checkpoint["optimizer"]
    layout = task.shard_layout()
    index = _param_index(task, optimizer)
    for name, spec in layout.items():
        if name not in task_state:
            continue
        task_state[name] = _slice_rows(task_state[name], spec, name, source)
        slot = optim_state["state"].get(index.get(name), {})
        for key, value in slot.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == spec["total"]:
                slot[key] = _slice_rows(value, spec, f"{name} ({key})", source)
    # A sharded module's extra state describes the saving process's shard: use this process's.
    current = task.state_dict()
    for key in current:
        if key.endswith("._extra_state") and any(name.startswith(key[: -len("_extra_state")]) for name in layout):
            task_state[key] = current[key]
    try:
        missing, unexpected = task.load_state_dict(task_state, strict=False)
    except RuntimeError as exc:  # shape mismatches: report the first, on one line
        mismatch = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise CheckpointError(f"{source}: task state does not fit this config: {mismatch}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: task state does not fit this config: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    try:
        optimizer.load_state_dict(optim_state)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{source}: optimiser state does not fit this config: {exc}") from exc


def save(path: str | Path, payload: dict[str, Any]) -> None:
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    checkpoint = read_weights_file(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a facekd checkpoint dict, found {type(checkpoint).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: not a resumable facekd checkpoint, missing keys {missing}")
    if checkpoint["facekd"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {checkpoint['facekd']}, expected {FORMAT_VERSION}")
    return checkpoint

"""Load backbones from facekd checkpoints or insightface `backbone.pth` files, and save them."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from facekd.errors import CheckpointError, ConfigError
from facekd.fileio import atomic_open, atomic_write_text, read_utf8
from facekd.models.backbone import Backbone, backbone_spec, build_backbone
from facekd.models.manifest import best_fit, build_manifest, compare, head_options, manifest_of
from facekd.models.registry import BACKBONES

DDP_PREFIX = "module."


def sidecar_path(path: str | os.PathLike) -> Path:
    """`backbone.json` beside `backbone.pth`: what facekd writes so the weights describe themselves."""
    return Path(path).with_suffix(".json")


def read_sidecar(path: str | os.PathLike) -> tuple[str, dict[str, Any]] | None:
    """(architecture, kwargs) from the side-car of a weights file, or None when there is none."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        content = json.loads(read_utf8(sidecar, "facekd's backbone side-car JSON", CheckpointError))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{sidecar}: not JSON ({exc.msg} at line {exc.lineno}); expected facekd's "
                              "backbone side-car, or delete it to recognise the weights by their keys") from None
    if not isinstance(content, dict) or not isinstance(content.get("architecture"), str) \
            or not isinstance(content.get("kwargs"), dict):
        raise CheckpointError(f"{sidecar}: expected {{\"architecture\": name, \"kwargs\": {{...}}}}, found {content!r:.200}")
    return content["architecture"], dict(content["kwargs"])


def read_weights_file(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True; every failure is one CheckpointError line naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot be read as weights ({_load_failure(exc)})") from None


def _load_failure(exc: Exception) -> str:
    """The useful part of torch.load's long multi-line message."""
    text = str(exc)
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if detail and "Unsupported global" in detail.group(1):
        # Never pass on torch's advice to retry with weights_only=False: that runs the file's code.
        refused = detail.group(1).split(" was not")[0].replace("Unsupported global: GLOBAL ", "")
        return (f"refused global {refused}: the file holds pickled objects, which may be unsafe to load; "
                f"expected only tensors (save model.state_dict())")
    if detail:
        return f"not a torch.save file: {detail.group(1).strip()}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _is_facekd_checkpoint(content: Any) -> bool:
    return isinstance(content, Mapping) and "backbone_name" in content and "backbone" in content


def _plain_state_dict(path: str | os.PathLike, content: Any) -> dict[str, Tensor]:
    """Unwrap `{"state_dict": ...}` and strip a DDP `module.` prefix."""
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    if not isinstance(content, Mapping) or not content:
        raise CheckpointError(
            f"{path}: found {type(content).__name__}, expected a state_dict (a dict of tensors)"
        )
    not_tensors = [key for key, value in content.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{path}: entry {not_tensors[0]!r} is not a tensor, expected a state_dict of tensors"
        )
    if all(str(key).startswith(DDP_PREFIX) for key in content):
        return {key[len(DDP_PREFIX):]: value for key, value in content.items()}
    return dict(content)


def kwargs_flag(text: str | None) -> dict[str, Any]:
    """The `--kwargs` flag: a YAML mapping of build_backbone options, e.g. "{width: 0.125, input_size: 56}"."""
    if not text:
        return {}
    import yaml

    from facekd.train.config import load_yaml

    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError(f"--kwargs: found {text!r}, expected a YAML mapping such as "
                          "\"{width: 0.125, num_features: 128, input_size: 56}\"")
    return value


def load_backbone(path: str | os.PathLike, name: str | None = None, **kwargs: Any) -> Backbone:
    """Build the backbone a weights file describes and load it strictly; returned in eval mode.

    `path` is a facekd checkpoint (with `backbone_name`, `backbone_kwargs`, `backbone`) or
    an insightface `backbone.pth`. For a plain state_dict without `name` the architecture
    is recognised from its keys and shapes. `kwargs` override the stored or recognised
    options (e.g. `fp16=False`).
    """
    content = read_weights_file(path)
    if _is_facekd_checkpoint(content):
        stored = str(content["backbone_name"])
        if name is not None and name != stored:
            raise CheckpointError(f"{path}: holds a {stored} backbone, but {name} was requested")
        name = stored
        kwargs = {**dict(content.get("backbone_kwargs") or {}), **kwargs}
        state_dict = _plain_state_dict(path, content["backbone"])
    elif (described := read_sidecar(path)) is not None and name in (None, described[0]):
        name = described[0]
        kwargs = {**described[1], **kwargs}
        state_dict = _plain_state_dict(path, content)
    else:
        state_dict = _plain_state_dict(path, content)
        found = manifest_of(state_dict)
        kwargs = {**head_options(found), **kwargs}
        if name is None:
            name, diff = best_fit(found, **kwargs)
            if diff.count:
                raise CheckpointError(
                    f"{path}: no known backbone fits these {len(found)} keys; closest is {name} "
                    f"({diff.describe()}); pass the name and options it was built with"
                )
    BACKBONES.get(name)  # an unknown name is a ConfigError naming the known ones
    _check_fits(path, state_dict, name, kwargs)
    model = build_backbone(name, **kwargs)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def load_weights_into(path: str | os.PathLike, model: Backbone) -> None:
    """Copy the backbone weights of `path` (facekd checkpoint or `backbone.pth`) into `model`, strictly.

    The file must fit the model's own architecture and options; a mismatch names what differs.
    """
    content = read_weights_file(path)
    if _is_facekd_checkpoint(content):
        content = content["backbone"]
    state_dict = _plain_state_dict(path, content)
    name, kwargs = backbone_spec(model)
    _check_fits(path, state_dict, name, kwargs)
    model.load_state_dict(state_dict, strict=True)


def _check_fits(path: str | os.PathLike, state_dict: Mapping[str, Tensor], name: str,
                kwargs: dict[str, Any]) -> None:
    found = manifest_of(state_dict)
    wanted = build_manifest(name, **kwargs)
    diff = compare(found, wanted)
    if not diff.count:
        return
    fitting, fitting_diff = best_fit(found, **kwargs)
    hint = (f"keys fit {fitting}, not {name}" if not fitting_diff.count
            else f"no known backbone fits (closest: {fitting})")
    options = ", ".join(f"{key}={value}" for key, value in sorted(kwargs.items()))
    raise CheckpointError(
        f"{path}: weights do not fit {name}({options}): {len(found)} keys in file, "
        f"{len(wanted)} in model; {diff.describe()}; {hint}"
    )


def save_backbone(path: str | os.PathLike, model: nn.Module) -> None:
    """Write the backbone's state_dict as an insightface-style `backbone.pth`, atomically, and its
    side-car `backbone.json` (architecture, kwargs with the input size, embedding size)."""
    model = getattr(model, "module", model)  # unwrap DDP so keys carry no `module.` prefix
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    with atomic_open(path, "wb") as handle:
        torch.save(state_dict, handle)
    if getattr(model, "spec", None) is None:  # not built by build_backbone: nothing to describe
        return
    name, kwargs = backbone_spec(model)
    sidecar = {"architecture": name, "kwargs": kwargs, "input_size": kwargs.get("input_size"),
               "embedding_size": kwargs.get("num_features"), "weights": Path(path).name}
    atomic_write_text(sidecar_path(path), json.dumps(sidecar, indent=1) + "\n")


def checkpoint_fields(model: nn.Module) -> dict[str, Any]:
    """The `backbone_name`, `backbone_kwargs` and `backbone` entries of a facekd checkpoint."""
    name, kwargs = backbone_spec(model)
    model = getattr(model, "module", model)
    return {"backbone_name": name, "backbone_kwargs": kwargs, "backbone": model.state_dict()}

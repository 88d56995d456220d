"""Device choice, shared by training, evaluation and deployment."""

from __future__ import annotations

import itertools

import torch

from facekd.errors import ConfigError


def module_device(network: object) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for tensor-less or non-torch networks."""
    if isinstance(network, torch.nn.Module):
        for tensor in itertools.chain(network.parameters(), network.buffers()):
            return tensor.device
    return torch.device("cpu")


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; `cpu`, `cuda` and `cuda:N` are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device: found {name!r}, expected auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device: found {name!r}, but no CUDA device is available on this machine")
    return device

"""Weights files that carry pickled objects are refused by every load path, in one line that names
the refused global and says the file may be unsafe, never passing on torch's weights_only=False advice;
and nothing in them runs."""

from __future__ import annotations

import pytest
import torch

from facekd.distill.loading import load_centres
from facekd.errors import CheckpointError
from facekd.models.loading import load_backbone
from facekd.train import checkpoint as ckpt

RAN = []


class Payload:
    """Would record that it ran, if it were ever unpickled with code execution."""

    def __reduce__(self):
        return RAN.append, ("code ran",)


@pytest.mark.parametrize("load", [ckpt.load, load_backbone, load_centres], ids=["checkpoint", "backbone", "centres"])
def test_pickled_objects_are_refused_by_every_load_path(tmp_path, load):
    path = tmp_path / "evil.pt"
    torch.save({"backbone": {"w": torch.ones(1)}, "trap": Payload()}, path)
    with pytest.raises(CheckpointError) as excinfo:
        load(path)
    message = str(excinfo.value)
    assert str(path) in message and "refused global" in message and "may be unsafe" in message
    assert "weights_only" not in message and "\n" not in message
    assert RAN == []

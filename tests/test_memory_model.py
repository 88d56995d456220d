"""The memory model against hand counts and against the bytes PyTorch really holds at small sizes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from facekd.train.memory import MemoryModel, saved_activation_bytes


def test_saved_activations_by_hand():
    # conv (no bias) saves its input, 3 x 8 x 8 floats; ReLU saves its output, 4 x 8 x 8 floats.
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU())
    assert saved_activation_bytes(net, 8, batch=2) == (3 + 4) * 8 * 8 * 4


def test_backbone_part_equals_what_sgd_holds_after_a_step():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(16))
    net(torch.zeros(2, 3, 8, 8))
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    optimiser.step()
    held = sum(p.numel() * p.element_size() + p.grad.numel() * p.grad.element_size()
               + optimiser.state[p]["momentum_buffer"].numel() * 4 for p in net.parameters())
    model = MemoryModel(sum(p.numel() for p in net.parameters()), 0, 16, 10, 1, 2, amp=False)
    assert model.parts()["backbone"] == held


def test_shard_logits_and_teacher_by_hand():
    model = MemoryModel(backbone_parameters=0, activation_bytes_per_image=1000, embedding=512, classes=2_000_001,
                        world=8, batch=128, teacher_parameters=65_000_000, amp=True)
    shard = math.ceil(2_000_001 / 8)
    parts = model.parts()
    assert parts["classifier shard"] == shard * 512 * 4 * 3
    assert parts["logits"] == 128 * 8 * shard * 4 * 3
    assert parts["activations"] == 128 * 1000 * 0.5 and parts["teacher"] == 65_000_000 * 2
    assert model.total() == pytest.approx(sum(parts.values()))
    cached = MemoryModel(0, 1000, 512, 2_000_001, 8, 128, teacher_parameters=65_000_000, teacher_cached=True)
    assert cached.parts()["teacher"] == 0

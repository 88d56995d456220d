"""Partial FC: shard layout, equality with the full classifier, sampling, re-sharding, 2-process gloo."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from facekd.errors import CheckpointError
from facekd.models.heads import CombinedMargin, MarginClassifier
from facekd.models.partial_fc import (
    PartialFC,
    ShardLayout,
    full_centres_from_shards,
    shard_state,
)


def test_shard_layout_gives_remainder_to_first_ranks():
    layouts = [ShardLayout.of(10, rank, 3) for rank in range(3)]
    assert [(l.class_start, l.num_local) for l in layouts] == [(0, 4), (4, 3), (7, 3)]


def hand_margin_cross_entropy(embeddings, centres, labels, s, m):
    """Mean ArcFace cross-entropy written out with the math module."""
    total = 0.0
    for e, y in zip(embeddings, labels.tolist()):
        e = e / e.norm()
        cos = [max(-1.0, min(1.0, float(e @ (w / w.norm())))) for w in centres]
        z = [s * (math.cos(math.acos(c) + m) if j == y else c) for j, c in enumerate(cos)]
        top = max(z)
        total += top + math.log(sum(math.exp(v - top) for v in z)) - z[y]
    return total / len(labels)


def test_single_process_equals_full_classifier():
    torch.manual_seed(0)
    margin = CombinedMargin(s=64.0, m2=0.5)
    pfc = PartialFC(8, 10, margin)
    full = MarginClassifier(8, 10, margin)
    full.weight.data.copy_(pfc.weight.data)
    embeddings = torch.randn(6, 8, requires_grad=True)
    labels = torch.tensor([0, 3, 9, 3, 5, 1])

    loss = pfc(embeddings, labels)["loss"]
    loss.backward()
    grad_embeddings, embeddings.grad = embeddings.grad.clone(), None
    full_loss = full(embeddings, labels)["loss"]
    full_loss.backward()

    assert loss.item() == pytest.approx(hand_margin_cross_entropy(embeddings.detach(), pfc.weight.detach(),
                                                                  labels, 64.0, 0.5), rel=1e-5)
    torch.testing.assert_close(loss, full_loss)
    torch.testing.assert_close(grad_embeddings, embeddings.grad)
    torch.testing.assert_close(pfc.weight.grad, full.weight.grad)


def test_sampling_keeps_positives_and_scores_only_the_sample():
    torch.manual_seed(1)
    pfc = PartialFC(8, 20, CombinedMargin(s=16.0, m2=0.3), sample_rate=0.4)
    embeddings = torch.randn(5, 8)
    labels = torch.tensor([2, 2, 11, 17, 5])
    loss = pfc(embeddings, labels, generator=torch.Generator().manual_seed(7))["loss"]
    loss.backward()
    sampled = torch.nonzero(pfc.weight.grad.abs().sum(dim=1)).squeeze(1)
    assert sampled.numel() == 8  # int(0.4 * 20)
    assert set(labels.tolist()) <= set(sampled.tolist())
    remapped = torch.searchsorted(sampled, labels)
    hand = hand_margin_cross_entropy(embeddings, pfc.weight.detach()[sampled], remapped, 16.0, 0.3)
    assert loss.item() == pytest.approx(hand, rel=1e-5)


def test_reshard_between_world_sizes():
    full = torch.randn(11, 4)
    three = [shard_state(full, rank, 3) for rank in range(3)]
    assert [s["weight"].shape[0] for s in three] == [4, 4, 3]
    torch.testing.assert_close(full_centres_from_shards(list(reversed(three))), full)
    two = [shard_state(full_centres_from_shards(three), rank, 2) for rank in range(2)]
    torch.testing.assert_close(two[1]["weight"], full[6:])
    with pytest.raises(CheckpointError, match="do not make up one 3-way split"):
        full_centres_from_shards(three[:2])


def test_loading_a_shard_of_another_layout_is_refused():
    pfc = PartialFC(4, 11)
    pfc.load_state_dict(shard_state(torch.randn(11, 4), 0, 1))
    with pytest.raises(CheckpointError, match=r"saved classes \[0, 6\) of 11 on rank 0/2, this process holds"):
        pfc.load_state_dict(shard_state(torch.randn(11, 4), 0, 2))


# --- two processes ------------------------------------------------------------------------------

WORLD, BATCH, DIM, EMBED, CLASSES = 2, 3, 5, 6, 7


def problem():
    generator = torch.Generator().manual_seed(42)
    inputs = torch.randn(WORLD * BATCH, DIM, generator=generator)
    labels = torch.tensor([0, 6, 3, 4, 4, 1])  # classes on both shards ([0, 4) and [4, 7))
    projection = torch.randn(DIM, EMBED, generator=generator)
    centres = torch.randn(CLASSES, EMBED, generator=generator)
    return inputs, labels, projection, centres


def margin():
    return CombinedMargin(s=8.0, m2=0.5)


def sharded_worker(rank: int, init_file: str, results: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        inputs, labels, projection, centres = problem()
        projection = projection.clone().requires_grad_(True)  # a one-layer "backbone"
        pfc = PartialFC(EMBED, CLASSES, margin())
        pfc.load_full_centres(centres)
        rows = slice(rank * BATCH, (rank + 1) * BATCH)
        loss = pfc(inputs[rows] @ projection, labels[rows])["loss"]
        loss.backward()
        dist.all_reduce(projection.grad)  # what DDP does: average over ranks
        projection.grad /= WORLD
        result = {"loss": loss.detach(), "projection_grad": projection.grad,
                  "centre_grad": pfc.gather_shard_rows(pfc.weight.grad),
                  "centres": pfc.full_centres(), "layout": pfc.get_extra_state()}
        torch.save(result, f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_process_sharded_loss_and_gradients_equal_full_classifier(tmp_path):
    results = str(tmp_path / "result")
    mp.spawn(sharded_worker, args=(str(tmp_path / "init"), results), nprocs=WORLD, join=True)
    inputs, labels, projection, centres = problem()
    projection.requires_grad_(True)
    full = MarginClassifier(EMBED, CLASSES, margin())
    full.weight.data.copy_(centres)
    loss = full(inputs @ projection, labels)["loss"]
    loss.backward()
    for rank in range(WORLD):
        got = torch.load(f"{results}.{rank}", weights_only=True)
        torch.testing.assert_close(got["loss"], loss.detach())
        torch.testing.assert_close(got["projection_grad"], projection.grad)
        torch.testing.assert_close(got["centre_grad"], full.weight.grad)
        torch.testing.assert_close(got["centres"], centres)
        assert got["layout"] == {"num_classes": 7, "world_size": 2, "rank": rank,
                                 "class_start": 4 * rank, "num_local": 4 - rank}

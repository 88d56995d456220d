"""Distillers under Partial FC: with 2 gloo processes, each holding its rows of the class centres,
one step's losses and gradients equal the one-classifier form in one process within 1e-5.

Gradients follow Partial FC's convention: a rank's backbone gradient is world_size x its share, so
the mean over ranks (what DDP applies) is the full gradient; a shard's centre gradient is exact.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from facekd.distill.losses import FrozenCentreMarginLoss
from facekd.distill.logit_kd import LogitOptions
from facekd.distill.methods.adadistill import AdaDistill, AdaptiveCentreLoss
from facekd.distill.methods.arcdistill import ArcDistill
from facekd.distill.methods.gkd import GKD, GKDLoss, GKDOptions
from facekd.distill.methods.kd import HintonKD
from facekd.distill.losses import HintonKDLoss
from facekd.distill.methods.margin import AdaptiveMarginLoss, MarginDistillation
from facekd.distill.teacher import Teacher, TeacherOutputs
from facekd.models.heads import CombinedMargin, MarginClassifier
from facekd.models.partial_fc import ClassShard, PartialFC, ShardLayout
from facekd.train import distributed as world_ops
from test_collectives import free_port

CLASSES, FEATURES, EMBEDDING, BATCH, WORLD = 7, 12, 6, 8, 2  # 7 classes: 4 rows on rank 0, 3 on rank 1


def problem():
    """One global batch: inputs, labels (repeats included), teacher embeddings and centres."""
    gen = torch.Generator().manual_seed(11)
    inputs = torch.randn(BATCH, FEATURES, generator=gen)
    labels = torch.tensor([0, 5, 3, 5, 6, 1, 3, 4])
    teacher_embeddings = torch.randn(BATCH, EMBEDDING, generator=gen)
    centres = torch.nn.functional.normalize(torch.randn(CLASSES, EMBEDDING, generator=gen), dim=1)
    # Pull each teacher embedding towards its centre, so margins and cosines are not all alike.
    teacher_embeddings = teacher_embeddings + 2.0 * centres[labels]
    return inputs, labels, teacher_embeddings, centres


def student() -> nn.Module:
    torch.manual_seed(5)
    network = nn.Linear(FEATURES, EMBEDDING)
    network.spec = SimpleNamespace(name="linear", kwargs={"num_features": EMBEDDING})
    return network


def teacher(centres: torch.Tensor) -> Teacher:
    return Teacher(nn.Identity(), input_size=8, centres=centres)


def distillers(centres: torch.Tensor, shard: ClassShard | None) -> dict[str, nn.Module]:
    """Each method built as its create() builds it, on `shard` (None: one full classifier)."""
    spec = {"backbone_spec": ("linear", {}), "input_size": 8}
    margin = CombinedMargin(16.0, 1.0, 0.3, 0.0)
    kd_head = PartialFC(EMBEDDING, CLASSES, margin) if shard else MarginClassifier(EMBEDDING, CLASSES, margin)
    torch.manual_seed(9)
    full_head = torch.randn(CLASSES, EMBEDDING)
    (kd_head.load_full_centres(full_head) if shard else kd_head.weight.data.copy_(full_head))
    torch.manual_seed(21)  # AdaDistill draws its centres whole, then cuts this shard's rows
    ada_loss = AdaptiveCentreLoss(CLASSES, EMBEDDING, CombinedMargin(16.0, 1.0, 0.45, 0.0), shard=shard)
    return {
        "margin": MarginDistillation(student(), AdaptiveMarginLoss(centres, s=16.0, shard=shard),
                                     teacher(centres), **spec),
        "arcdistill": ArcDistill(student(), FrozenCentreMarginLoss(centres, margin, shard=shard),
                                 teacher(centres), **spec),
        "adadistill": AdaDistill(student(), ada_loss, teacher(centres), **spec),
        "kd": HintonKD(student(), kd_head, HintonKDLoss(3.0, sharded=shard is not None), teacher(centres),
                       options=LogitOptions(), input_size=8, num_classes=CLASSES, shard=shard),
        # tau 0.1: K = 1, the primary group is the forced ground truth; tau 0.93: K = every class.
        **{name: GKD(student(), gkd_head(full_head, shard), GKDLoss(2.0, tau, shard=shard), teacher(centres),
                     options=GKDOptions(tau=tau), input_size=8, num_classes=CLASSES, shard=shard)
           for name, tau in (("gkd_k1", 0.1), ("gkd", 0.93))},
    }


def gkd_head(full: torch.Tensor, shard: ClassShard | None) -> nn.Module:
    margin = CombinedMargin(16.0, 1.0, 0.0, 0.2)  # CosFace, as the paper
    head = PartialFC(EMBEDDING, CLASSES, margin) if shard else MarginClassifier(EMBEDDING, CLASSES, margin)
    (head.load_full_centres(full) if shard else head.weight.data.copy_(full))
    return head


def teacher_outputs(embeddings: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor) -> TeacherOutputs:
    cosine = torch.nn.functional.normalize(embeddings, dim=1) @ centres.t()
    return TeacherOutputs(embedding=embeddings, cosine=cosine,
                          centre_cosine=cosine.gather(1, labels.view(-1, 1)).squeeze(1))


def step(distiller: nn.Module, inputs, labels, teacher_embeddings, centres) -> dict[str, torch.Tensor]:
    """One forward and backward; the losses, the gradients and the class rows the step changed."""
    losses = distiller.forward_train(inputs, labels, teacher_outputs(teacher_embeddings, labels, centres))
    total = sum(value for name, value in losses.items() if name.startswith("loss"))
    total.backward()
    out = {f"value.{name}": value.detach() for name, value in losses.items()}  # losses and metrics
    out.update({f"grad.{name}": p.grad.clone() for name, p in distiller.named_parameters()})
    for name, buffer in distiller.named_buffers():
        if name.endswith("centres") and "teacher" not in name:
            out[f"rows.{name}"] = buffer.clone()
    return out


def run_rank(rank: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    world = world_ops.init_world("cpu")
    inputs, labels, teacher_embeddings, centres = problem()
    mine = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    shard = ClassShard.of_process_group(CLASSES)
    results = {name: step(distiller, inputs[mine], labels[mine], teacher_embeddings[mine], centres)
               for name, distiller in distillers(centres, shard).items()}
    logits, wide_labels = wide_problem()
    wide = ClassShard.of_process_group(WIDE)
    columns = slice(wide.layout.class_start, wide.layout.class_start + wide.layout.num_local)
    mask = GKDLoss(tau=WIDE_TAU, shard=wide).sharded_primary_mask(logits[:, columns],
                                                                 wide.local_labels(wide_labels))
    torch.save({"results": results, "start": shard.layout.class_start, "wide_mask": mask},
               f"{root}/rank{rank}.pt")
    world_ops.close_world(world)


WIDE, WIDE_TAU = 230, 0.5  # GKD steps K by 100 classes: this gives a K strictly between 1 and 230


def wide_problem() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(BATCH, WIDE, generator=gen) * 3, torch.randint(0, WIDE, (BATCH,), generator=gen)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    mp.spawn(run_rank, args=(free_port(), str(root)), nprocs=WORLD, join=True)
    return [torch.load(root / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def reference():
    inputs, labels, teacher_embeddings, centres = problem()
    return {name: step(distiller, inputs, labels, teacher_embeddings, centres)
            for name, distiller in distillers(centres, None).items()}


@pytest.mark.parametrize("method", ["margin", "arcdistill", "adadistill", "kd", "gkd_k1", "gkd"])
def test_two_processes_equal_the_full_classifier(ranks, reference, method):
    assert [rank["start"] for rank in ranks] == [0, ShardLayout.of(CLASSES, 0, WORLD).num_local]
    full = reference[method]
    shards = [rank["results"][method] for rank in ranks]
    assert set(shards[0]) == set(full), "the sharded and full forms report different tensors"
    for name, expected in full.items():
        if name.startswith("value."):  # the same global loss (or metric) on every rank
            for shard in shards:
                torch.testing.assert_close(shard[name], expected, rtol=0, atol=1e-5)
        elif name.startswith("grad.backbone"):  # DDP averages the ranks' backbone gradients
            torch.testing.assert_close(sum(s[name] for s in shards) / WORLD, expected, rtol=0, atol=1e-5)
        else:  # class rows: each rank holds its own, exactly
            torch.testing.assert_close(torch.cat([s[name] for s in shards]), expected, rtol=0, atol=1e-5)
    assert any(value.abs().sum() > 0 for name, value in full.items() if name.startswith("grad.backbone"))


def test_one_process_shard_is_the_full_classifier(reference):
    """head.partial_fc in one process: one shard of every class, the same numbers."""
    inputs, labels, teacher_embeddings, centres = problem()
    for name, distiller in distillers(centres, ClassShard.of_process_group(CLASSES)).items():
        found = step(distiller, inputs, labels, teacher_embeddings, centres)
        for key, expected in reference[name].items():
            torch.testing.assert_close(found[key], expected, rtol=0, atol=1e-5, msg=f"{name}: {key}")


def test_sharded_tensors_are_named_for_ddp_and_checkpoints():
    _, _, _, centres = problem()
    built = distillers(centres, ClassShard.of_process_group(CLASSES))
    assert built["adadistill"].shard_layout() == {"centre_loss.centres": {"offset": 0, "rows": CLASSES,
                                                                          "total": CLASSES}}
    assert built["kd"].shard_layout() == {"head.weight": {"offset": 0, "rows": CLASSES, "total": CLASSES}}
    # The teacher's frozen centres are rebuilt from the teacher, never checkpointed.
    assert built["margin"].shard_layout() == {} and "margin_loss.centres" in built["margin"].sharded_tensors()
    assert set(built["kd"].sharded_tensors()) == {"head.weight", "teacher_centres"}
    assert distillers(centres, None)["kd"].sharded_tensors() == {}


def test_gkd_primary_groups_across_shards_equal_the_full_top_k(ranks):
    from facekd.distill.methods.gkd import primary_size

    logits, labels = wide_problem()
    k = primary_size(logits, WIDE_TAU)
    assert 1 < k < WIDE
    full = GKDLoss(tau=WIDE_TAU).primary_mask(logits, labels)
    sharded = torch.cat([rank["wide_mask"] for rank in ranks], dim=1)
    assert torch.equal(sharded, full)
    assert (full.sum(1) == k).all()

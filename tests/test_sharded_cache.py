"""The teacher cache under torchrun: each of 2 gloo ranks runs the teacher on its share and writes its
part; the cache is complete only with every part; a killed part is redone alone; a reader of another
world size gets the same outputs as a one-process build."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from facekd.data import RecordIODataset
from facekd.data.face_rec import write_face_rec
from facekd.data.training import TrainSamples
from facekd.distill.cache import META_NAME, TeacherCache, part_range
from facekd.distill.teacher import CENTRE_COSINE, EMBEDDING, Teacher
from facekd.models import build_backbone
from facekd.train import distributed as world_ops
from test_collectives import free_port

TINY = {"width": 0.125, "depth": 0.25, "fcn": True, "num_features": 16, "input_size": 16}
FIELDS = frozenset({EMBEDDING, CENTRE_COSINE})
FINGERPRINT = {"teacher": "tiny", "seed": 1}
NUM_SAMPLES = 23  # odd: the parts differ in size


class CountingTeacher(Teacher):
    """Counts the images it is run on (each image is run twice: as stored and mirrored)."""

    def __init__(self) -> None:
        torch.manual_seed(1)
        super().__init__(build_backbone("r18", **TINY), input_size=16, centres=torch.randn(4, 16))
        self.images = 0

    def outputs(self, images, labels, needs):
        self.images += images.shape[0]
        return super().outputs(images, labels, needs)


def build(root, teacher: Teacher, rank: int = 0, world_size: int = 1) -> TeacherCache:
    samples = TrainSamples(RecordIODataset(root / "train"))
    return TeacherCache.build(root / "cache", teacher, samples, FIELDS, FINGERPRINT, batch_size=4,
                              dtype="float32", progress=False, rank=rank, world_size=world_size)


def run_rank(rank: int, port: int, root: str) -> None:
    from pathlib import Path

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    world = world_ops.init_world("cpu")
    root = Path(root)
    teacher = CountingTeacher()
    build(root, teacher, rank, 2)
    first = teacher.images
    complete_after_first = (root / "cache" / META_NAME).is_file()
    # A kill of rank 1 after its arrays but before its marker, and before rank 0 marked the cache.
    world_ops.barrier()
    if rank == 1:
        (root / "cache" / "part-1-of-2" / "done.json").unlink()
    else:
        (root / "cache" / META_NAME).unlink()
    world_ops.barrier()
    incomplete = TeacherCache.open(root / "cache", FINGERPRINT) is None
    world_ops.barrier()
    build(root, teacher, rank, 2)
    (root / f"rank{rank}.json").write_text(json.dumps({
        "first": first, "second": teacher.images - first, "complete": complete_after_first,
        "incomplete": incomplete}))
    world_ops.close_world(world)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache2")
    rng = np.random.default_rng(0)
    write_face_rec(root / "train", [(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), k * 4 // NUM_SAMPLES)
                                    for k in range(NUM_SAMPLES)])
    mp.spawn(run_rank, args=(free_port(), str(root)), nprocs=2, join=True)
    return root, [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]


def test_each_rank_runs_the_teacher_on_its_share_only(two_ranks):
    _, reports = two_ranks
    shares = [part_range(NUM_SAMPLES, rank, 2) for rank in range(2)]
    assert shares == [(0, 12), (12, 23)]
    for report, (start, stop) in zip(reports, shares):
        assert report["first"] == 2 * (stop - start)  # as stored and mirrored
        assert report["complete"]


def test_a_killed_part_leaves_the_cache_incomplete_and_is_redone_alone(two_ranks):
    root, reports = two_ranks
    assert all(report["incomplete"] for report in reports)
    assert reports[0]["second"] == 0  # rank 0's finished part is kept
    assert reports[1]["second"] == 2 * 11  # rank 1 redoes its own part only
    meta = json.loads((root / "cache" / META_NAME).read_text())
    assert [part["name"] for part in meta["parts"]] == ["part-0-of-2", "part-1-of-2"]


def test_another_world_size_reads_the_outputs_of_a_one_process_build(two_ranks, tmp_path):
    root, _ = two_ranks
    sharded = TeacherCache.open(root / "cache", FINGERPRINT)  # one process reads 2 parts
    (tmp_path / "train").symlink_to(root / "train")
    single = build(tmp_path, CountingTeacher())
    assert len(single.parts) == 1 and len(sharded.parts) == 2
    index = torch.tensor([22, 0, 11, 12, 5, 13])  # both sides of the part boundary, out of order
    flipped = torch.tensor([True, False, True, False, False, True])
    got = sharded.lookup(index, flipped, FIELDS, torch.device("cpu"))
    want = single.lookup(index, flipped, FIELDS, torch.device("cpu"))
    torch.testing.assert_close(got.embedding, want.embedding, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.centre_cosine, want.centre_cosine, rtol=0, atol=1e-6)
    assert not torch.equal(got.embedding[0], got.embedding[1])


def test_rebuilding_on_another_world_size_drops_the_old_parts(tmp_path):
    rng = np.random.default_rng(0)
    write_face_rec(tmp_path / "train", [(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), k // 2) for k in range(8)])
    (tmp_path / "cache" / "part-1-of-2").mkdir(parents=True)  # left by an earlier 2-process build
    build(tmp_path, CountingTeacher())
    assert sorted(p.name for p in (tmp_path / "cache").glob("part-*")) == ["part-0-of-1"]

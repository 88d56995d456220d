"""Identity-balanced batches: P identities x K images, resumable and independent of the world size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facekd.errors import ConfigError
from facekd.train.balanced import IdentityGroups
from facekd.train.distributed import GlobalBatchSampler, World
from facekd.train.engine import Trainer, seed_everything
from train_helpers import TinyTask, samples, tiny_config

CPU = torch.device("cpu")
# identity 2 has a single image, so it can never form a positive pair
LABELS = np.array([3, 0, 1, 0, 3, 2, 1, 0, 3, 3, 4, 4, 4])


def test_draw_groups_distinct_identities_and_skips_singletons():
    groups = IdentityGroups(LABELS)
    assert len(groups) == 4
    for seed in range(20):
        drawn = groups.draw(3, 2, torch.Generator().manual_seed(seed))
        labels = LABELS[drawn].reshape(3, 2)
        assert (labels == labels[:, :1]).all()  # each pair of rows is one identity
        assert len(set(labels[:, 0])) == 3 and 2 not in labels
        for row in np.asarray(drawn).reshape(3, 2):
            assert row[0] != row[1]  # every identity has >= 2 images: drawn without replacement


def test_short_identities_are_drawn_with_replacement():
    groups = IdentityGroups(LABELS)
    drawn = groups.draw(4, 5, torch.Generator().manual_seed(0))
    by_identity = {}
    for index in drawn:
        by_identity.setdefault(int(LABELS[index]), []).append(index)
    assert {k: len(v) for k, v in by_identity.items()} == {0: 5, 1: 5, 3: 5, 4: 5}
    # five draws from identities of 2, 3 and 4 images: with replacement, from their own images only
    assert set(by_identity[1]) <= {2, 6} and set(by_identity[0]) <= {1, 3, 7}
    assert set(by_identity[3]) <= {0, 4, 8, 9} and set(by_identity[4]) <= {10, 11, 12}


def test_no_positive_pair_or_too_few_identities_is_a_config_error():
    with pytest.raises(ConfigError, match="no identity with 2 or more images"):
        IdentityGroups(np.arange(10))
    with pytest.raises(ConfigError, match="needs 5 identities with 2 or more images, but the training set has 4"):
        IdentityGroups(LABELS).require(5)


def sampler(rank: int, world_size: int, batch_size: int, identities: int, start: int = 0, epoch: int = 1):
    result = GlobalBatchSampler(len(LABELS), batch_size, world=World(rank, world_size, CPU), seed=7, batches=3,
                                groups=IdentityGroups(LABELS), balanced_identities=identities, balanced_images=2)
    result.set_epoch(epoch, start)
    return list(result)


def test_sampler_appends_the_balanced_part_and_resumes():
    batches = sampler(0, 1, batch_size=2, identities=2)
    assert len(batches) == 3 and all(len(b) == 2 + 2 * 2 for b in batches)
    random_part = [i for b in batches for i in b[:2]]
    assert len(set(random_part)) == 6  # the random part is a permutation, as without balance
    for b in batches:
        balanced = LABELS[b[2:]].reshape(2, 2)
        assert (balanced == balanced[:, :1]).all() and balanced[0, 0] != balanced[1, 0]
    assert sampler(0, 1, batch_size=2, identities=2, start=1) == batches[1:]
    assert sampler(0, 1, batch_size=2, identities=2, epoch=2) != batches


def test_global_batch_does_not_depend_on_the_world_size():
    whole = sampler(0, 1, batch_size=4, identities=4)
    ranks = [sampler(r, 2, batch_size=2, identities=2) for r in range(2)]
    for k, batch in enumerate(whole):
        assert ranks[0][k][:2] + ranks[1][k][:2] == batch[:4]
        assert ranks[0][k][2:] + ranks[1][k][2:] == batch[4:]


def test_engine_trains_on_balanced_batches(tmp_path):
    seen = []

    class Recording(TinyTask):
        def forward(self, batch):
            seen.append(batch["label"].clone())
            return super().forward(batch)

    seed_everything(0)
    config = tiny_config(tmp_path, epochs=1, batch_size=4, balanced_identities=2, balanced_images=3)
    trainer = Trainer(Recording(), samples(64), config)
    assert trainer.steps_per_epoch == 64 // 10
    trainer.fit()
    assert len(seen) == 6
    for labels in seen:
        balanced = labels[4:].view(2, 3)
        assert len(labels) == 10 and (balanced == balanced[:, :1]).all()


def test_engine_rejects_balance_without_labels(tmp_path):
    class Unlabelled(torch.utils.data.Dataset):
        def __len__(self):
            return 64

    config = tiny_config(tmp_path, balanced_identities=2)
    with pytest.raises(ConfigError, match="has no `labels`"):
        Trainer(TinyTask(), Unlabelled(), config)

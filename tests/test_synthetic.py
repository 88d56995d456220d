"""The synthetic benchmark: determinism, split disjointness, pair folds, landmarks, attributes, read-back."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from facekd.cli import main as facekd_main
from facekd.data import RecordIODataset, load_pairs_bin, read_attributes, read_identities, read_landmarks
from facekd.data.align import ARCFACE_DST
from facekd.data.codec import decode_image
from facekd.data.synthetic import (
    DIFFICULTIES,
    ImageJob,
    ImageMaker,
    SynthConfig,
    generate,
    parse_difficulty,
    verification_plan,
)
from facekd.data.synthetic_faces import (
    ATTRIBUTE_NAMES,
    IDENTITY_ATTRIBUTES,
    NUISANCE_ATTRIBUTES,
    FaceRenderer,
    identity_attributes,
    nuisance_attributes,
    sample_identity,
    sample_nuisance,
)
from facekd.errors import ConfigError

TINY = SynthConfig(
    identities=5, images_per_identity=3, verify_identities=6, verify_pairs=40, gallery_identities=4,
    probes_per_identity=2, distractors=3, celeba_identities=3, celeba_images_per_identity=6, seed=7,
)  # fmt: skip


def tiny_cli_args(out: Path, config: SynthConfig, workers: int) -> list[str]:
    return [
        "synth", "--out", str(out), "--identities", str(config.identities),
        "--images-per-identity", str(config.images_per_identity), "--verify-identities", str(config.verify_identities),
        "--verify-pairs", str(config.verify_pairs), "--gallery-identities", str(config.gallery_identities),
        "--probes-per-identity", str(config.probes_per_identity), "--distractors", str(config.distractors),
        "--celeba-identities", str(config.celeba_identities),
        "--celeba-images-per-identity", str(config.celeba_images_per_identity),
        "--seed", str(config.seed), "--difficulty", str(config.difficulty), "--workers", str(workers),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "bench"
    generate(out, TINY, workers=1)
    return out


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_output_is_independent_of_worker_count(bench, tmp_path):
    """The CLI with two worker processes writes the same bytes as the library in-process."""
    assert facekd_main(tiny_cli_args(tmp_path / "parallel", TINY, workers=2)) == 0
    expected, found = all_files(bench), all_files(tmp_path / "parallel")
    assert sorted(found) == sorted(expected)
    assert [name for name in expected if expected[name] != found[name]] == []


def test_seed_changes_every_part(bench, tmp_path):
    generate(tmp_path / "other", dataclasses.replace(TINY, seed=8))
    for part in ("train/train.rec", "verify/synth_lfw.bin", "ident/probe/train.rec", "celeba/images/000001.jpg"):
        assert (tmp_path / "other" / part).read_bytes() != (bench / part).read_bytes(), part


def test_layout_reads_back_through_the_readers(bench):
    train = RecordIODataset(bench / "train")
    assert len(train) == TINY.identities * TINY.images_per_identity
    assert train.num_classes == TINY.identities
    np.testing.assert_array_equal(train.labels, np.repeat(np.arange(TINY.identities), TINY.images_per_identity))
    image, label = train[4]
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8 and label == 1
    assert train.records.read(train.records.position_of(0))[0].flag == 2  # MS1M meta record at key 0

    images, issame = load_pairs_bin(bench / "verify" / "synth_lfw.bin")
    assert len(images) == 2 * TINY.verify_pairs and len(issame) == TINY.verify_pairs
    assert images[0].shape == (112, 112, 3)

    gallery = RecordIODataset(bench / "ident" / "gallery")
    probe = RecordIODataset(bench / "ident" / "probe")
    distractors = RecordIODataset(bench / "ident" / "distractors")
    np.testing.assert_array_equal(gallery.labels, np.arange(TINY.gallery_identities))
    np.testing.assert_array_equal(probe.labels, np.repeat(np.arange(TINY.gallery_identities), TINY.probes_per_identity))
    np.testing.assert_array_equal(distractors.labels, TINY.gallery_identities + np.arange(TINY.distractors))

    meta = json.loads((bench / "meta.json").read_text())
    assert meta["parameters"] == dataclasses.asdict(TINY)
    assert meta["counts"]["train_images"] == len(train)
    assert meta["counts"]["celeba_images"] == TINY.celeba_identities * TINY.celeba_images_per_identity
    attributes = meta["attributes"]
    assert attributes["identity_related"] + attributes["identity_unrelated"] == attributes["names"]
    assert not set(attributes["identity_related"]) & set(attributes["identity_unrelated"])


def test_celeba_files_parse_and_match_the_images(bench):
    folder = bench / "celeba"
    count = TINY.celeba_identities * TINY.celeba_images_per_identity
    attributes = read_attributes(folder / "list_attr_celeba.txt")
    landmarks = read_landmarks(folder / "list_landmarks_align_celeba.txt")
    identities = read_identities(folder / "identity_CelebA.txt")
    names = [f"{i:06d}.jpg" for i in range(1, count + 1)]
    assert attributes.names == names and landmarks.names == names and identities.names == names
    assert attributes.attribute_names == list(ATTRIBUTE_NAMES) and len(ATTRIBUTE_NAMES) == 40
    assert sorted(p.name for p in (folder / "images").iterdir()) == names
    np.testing.assert_array_equal(identities.ids, np.repeat(np.arange(1, 4), TINY.celeba_images_per_identity))
    # The stored landmarks are the renderer's, for the same identity and image seeds.
    maker = ImageMaker(TINY.seed, TINY.size, TINY.difficulty, TINY.quality)
    first_celeba_identity = TINY.identity_ranges()["celeba"][0]
    rendered = maker(ImageJob(first_celeba_identity + 1, (2,)))[0]
    np.testing.assert_allclose(landmarks.points[TINY.celeba_images_per_identity + 2], rendered.landmarks, atol=1e-3)
    assert rendered.jpeg == (folder / "images" / names[TINY.celeba_images_per_identity + 2]).read_bytes()

    values = attributes.values.reshape(TINY.celeba_identities, TINY.celeba_images_per_identity, 40)
    related = [ATTRIBUTE_NAMES.index(name) for name in IDENTITY_ATTRIBUTES]
    unrelated = [ATTRIBUTE_NAMES.index(name) for name in NUISANCE_ATTRIBUTES]
    assert (values[:, :, related] == values[:, :1, related]).all(), "identity attributes change within an identity"
    varying = (values[:, :, unrelated] != values[:, :1, unrelated]).any(axis=(0, 1))
    assert varying.sum() >= 4, "nuisance attributes hardly vary within identities"


def test_splits_use_disjoint_identities():
    ranges = TINY.identity_ranges()
    numbers = [set(range(*bounds)) for bounds in ranges.values()]
    assert sum(len(n) for n in numbers) == len(set().union(*numbers))
    assert ranges["train"] == (0, TINY.identities)
    pairs, _ = verification_plan(TINY)
    used = {job.identity for pair in pairs for job in pair}
    assert used <= set(range(*ranges["verify"])) and len(used) > 1


def test_pairs_are_balanced_in_each_contiguous_fold(bench):
    config = dataclasses.replace(TINY, verify_pairs=200)
    pairs, issame = verification_plan(config)
    fold = len(issame) // 10
    for start in range(0, len(issame), fold):
        block = issame[start : start + fold]
        assert block[: fold // 2].all() and not block[fold // 2 :].any()
    for (a, b), same in zip(pairs, issame):
        assert (a.identity == b.identity) == same
    renders = [(job.identity, job.image_numbers) for pair in pairs for job in pair]
    assert len(set(renders)) == len(renders), "an image is reused across pairs"
    _, written = load_pairs_bin(bench / "verify" / "synth_lfw.bin")
    np.testing.assert_array_equal(written, verification_plan(TINY)[1])


def clean(nuisance, **changes):
    """The nuisance without anything that hides or recolours the features."""
    return dataclasses.replace(
        nuisance, glasses="none", occluder=False, blur_sigma=0.0, noise_std=0.0, light_strength=0.0, gain=1.0,
        cast=np.ones(3), eye_open=1.0, gaze=np.zeros(2), mouth_open=0.0, **changes,
    )  # fmt: skip


@pytest.mark.parametrize("size", [112, 224])
def test_landmarks_land_on_the_drawn_features(size):
    renderer = FaceRenderer(size)
    for number in range(12):
        rng = np.random.default_rng(number)
        identity = sample_identity(rng)
        nuisance = clean(sample_nuisance(rng, 0.8))
        image, points = renderer.render(identity, nuisance, rng)
        eyes = np.rint(points[:2]).astype(int)
        for x, y in eyes:  # the pupil is drawn at the eye centre
            assert image[y, x].max() < 90, f"identity {number}: eye landmark pixel {image[y, x]} is not the pupil"
        skin = identity.skin
        mouth_centre = points[3:].mean(axis=0)
        for corner in points[3:]:
            inside = corner + (mouth_centre - corner) / np.linalg.norm(mouth_centre - corner) * 2.5 * size / 112
            pixel = image[int(round(inside[1])), int(round(inside[0]))].astype(float)
            assert np.abs(pixel - identity.lips).max() < np.abs(pixel - skin).max() + 1.0, (
                f"identity {number}: pixel inside mouth corner {pixel} is closer to skin {skin} than lips {identity.lips}"
            )
        x, y = np.rint(points[2]).astype(int)
        below = image[y : y + int(5 * size / 112), x - int(8 * size / 112) : x + int(8 * size / 112) + 1]
        assert below.reshape(-1, 3).mean(axis=1).min() < 0.7 * skin.mean(), f"identity {number}: no nostril below the nose tip"


def test_landmarks_sit_near_the_arcface_template_and_scale_with_size():
    offsets = []
    for number in range(200):
        rng = np.random.default_rng(number)
        identity, nuisance = sample_identity(rng), sample_nuisance(rng, 0.0)
        points = FaceRenderer(112).landmarks(identity, nuisance)
        np.testing.assert_allclose(FaceRenderer(224).landmarks(identity, nuisance), 2 * points, rtol=1e-5)
        offsets.append(points - ARCFACE_DST)
    offsets = np.array(offsets)
    assert np.abs(offsets.mean(axis=0)).max() < 1.5, offsets.mean(axis=0)
    assert 0.5 < np.abs(offsets).mean() < 6.0


def test_every_attribute_takes_both_values():
    rng = np.random.default_rng(0)
    identities = np.array([identity_attributes(sample_identity(rng)) for _ in range(400)])
    for difficulty in (0.1, DIFFICULTIES["medium"], 1.0):
        nuisances = np.array([nuisance_attributes(sample_nuisance(rng, difficulty), difficulty) for _ in range(400)])
        rates = nuisances.mean(axis=0)
        assert ((rates > 0.02) & (rates < 0.98)).all(), dict(zip(NUISANCE_ATTRIBUTES, rates))
    rates = identities.mean(axis=0)
    assert ((rates > 0.02) & (rates < 0.98)).all(), dict(zip(IDENTITY_ATTRIBUTES, rates))


def test_difficulty_scales_the_nuisance():
    def spread(difficulty: float) -> float:
        rng = np.random.default_rng(1)
        return float(np.std([sample_nuisance(rng, difficulty).yaw for _ in range(300)]))

    assert spread(0.0) < spread(0.5) < spread(1.0)


def test_bad_options_raise_one_line_errors():
    assert parse_difficulty("hard") == DIFFICULTIES["hard"] and parse_difficulty("0.25") == 0.25
    for text in ("impossible", "1.5"):
        with pytest.raises(ConfigError, match="difficulty"):
            parse_difficulty(text)
    with pytest.raises(ConfigError, match="verify_pairs 30, expected a multiple of 20"):
        dataclasses.replace(TINY, verify_pairs=30).check()
    with pytest.raises(ConfigError, match="identities 0"):
        dataclasses.replace(TINY, identities=0).check()


def test_images_decode_and_differ_within_an_identity():
    maker = ImageMaker(0, 112, 0.5, 95)
    first, second = (decode_image(image.jpeg, "synthetic") for image in maker(ImageJob(0, (0, 1))))
    assert first.shape == second.shape == (112, 112, 3)
    assert np.abs(first.astype(int) - second).mean() > 5

"""The synthetic face benchmark: a train set, verification pairs, a 1:N split and a CelebA-style set.

No face data set can be downloaded where facekd is developed and tested, so every demo, test and
benchmark runs on faces drawn by `facekd.data.synthetic_faces`. The layout (docs/design.md):

    DIR/meta.json                                  parameters, counts, attribute names and split
    DIR/train/{train.rec,train.idx,property}       insightface RecordIO, MS1M layout
    DIR/verify/synth_lfw.bin                       LFW-style pairs of held-out identities
    DIR/ident/{gallery,probe,distractors}/...      1:N identification split (RecordIO)
    DIR/celeba/images/NNNNNN.jpg + list_attr_celeba.txt + list_landmarks_align_celeba.txt
               + identity_CelebA.txt

Every identity has a global number; the splits take disjoint ranges of numbers, so no identity
is in two splits. Identity g is drawn from `SeedSequence(seed, spawn_key=(0, g))` and its image k
from `SeedSequence(seed, spawn_key=(1, g, k))`, so the output depends on the seed and sizes only,
never on the number of workers.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.data.celeba import write_attributes, write_identities, write_landmarks
from facekd.data.codec import encode_jpeg
from facekd.data.face_rec import write_face_rec
from facekd.data.pairs_bin import write_pairs_bin
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
from facekd.fileio import atomic_write_text

FORMAT_VERSION = 1
IDENTITY_STREAM, IMAGE_STREAM, PLAN_STREAM = 0, 1, 2
NUM_FOLDS = 10
# Named difficulties, tuned so a small teacher trained for minutes lands in 90-99% on synth_lfw.bin.
DIFFICULTIES = {"easy": 0.25, "medium": 0.5, "hard": 0.8}


def parse_difficulty(text: str | float) -> float:
    """`easy`, `medium`, `hard` or a number in [0, 1]."""
    if isinstance(text, str) and text.lower() in DIFFICULTIES:
        return DIFFICULTIES[text.lower()]
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"difficulty {text!r}, expected one of {', '.join(DIFFICULTIES)} or a number in [0, 1]") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"difficulty {value}, expected a number in [0, 1]")
    return value


@dataclass(frozen=True)
class SynthConfig:
    """Sizes and knobs of one synthetic benchmark."""

    identities: int = 600
    images_per_identity: int = 32
    size: int = 112
    difficulty: float = DIFFICULTIES["medium"]
    seed: int = 0
    verify_identities: int = 400
    verify_pairs: int = 3000
    gallery_identities: int = 300
    probes_per_identity: int = 3
    distractors: int = 1000
    celeba_identities: int = 100
    celeba_images_per_identity: int = 20
    quality: int = 95

    def check(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        positive = ("identities", "images_per_identity", "size", "verify_identities", "verify_pairs",
                    "gallery_identities", "probes_per_identity", "celeba_identities", "celeba_images_per_identity")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} {getattr(self, name)}, expected at least 1")
        if self.distractors < 0:
            raise ConfigError(f"distractors {self.distractors}, expected 0 or more")
        if self.size < 32:
            raise ConfigError(f"size {self.size}, expected at least 32 pixels")
        if self.verify_pairs % (2 * NUM_FOLDS):
            raise ConfigError(
                f"verify_pairs {self.verify_pairs}, expected a multiple of {2 * NUM_FOLDS} "
                f"({NUM_FOLDS} folds of equal size, half genuine)"
            )
        if self.verify_identities < 2:
            raise ConfigError(f"verify_identities {self.verify_identities}, expected at least 2 for impostor pairs")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ConfigError(f"difficulty {self.difficulty}, expected a number in [0, 1]")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"quality {self.quality}, expected 1..100")

    def identity_ranges(self) -> dict[str, tuple[int, int]]:
        """Global identity numbers `[start, stop)` of each split; the ranges are disjoint."""
        sizes = (("train", self.identities), ("verify", self.verify_identities),
                 ("gallery", self.gallery_identities), ("distractors", self.distractors),
                 ("celeba", self.celeba_identities))  # fmt: skip
        ranges, start = {}, 0
        for name, count in sizes:
            ranges[name] = (start, start + count)
            start += count
        return ranges


@dataclass(frozen=True)
class RenderedImage:
    jpeg: bytes
    landmarks: np.ndarray  # (5, 2) float32 pixels
    attributes: np.ndarray  # (len(ATTRIBUTE_NAMES),) bool


@dataclass(frozen=True)
class ImageJob:
    """Images `image_numbers` of global identity `identity`."""

    identity: int
    image_numbers: tuple[int, ...]


@dataclass(frozen=True)
class ImageMaker:
    """Renders and encodes the images of a job; picklable, so it runs in worker processes."""

    seed: int
    size: int
    difficulty: float
    quality: int

    def __call__(self, job: ImageJob) -> list[RenderedImage]:
        identity = sample_identity(np.random.default_rng(self._seed_sequence(IDENTITY_STREAM, job.identity)))
        fixed = identity_attributes(identity)
        renderer = FaceRenderer(self.size)
        images = []
        for number in job.image_numbers:
            rng = np.random.default_rng(self._seed_sequence(IMAGE_STREAM, job.identity, number))
            nuisance = sample_nuisance(rng, self.difficulty)
            pixels, landmarks = renderer.render(identity, nuisance, rng)
            attributes = np.concatenate([fixed, nuisance_attributes(nuisance, self.difficulty)])
            images.append(RenderedImage(encode_jpeg(pixels, self.quality), landmarks, attributes))
        return images

    def _seed_sequence(self, *key: int) -> np.random.SeedSequence:
        return np.random.SeedSequence(self.seed, spawn_key=key)


def _limit_worker_threads() -> None:
    """Each worker is one core: keep OpenCV from starting threads of its own."""
    import cv2

    cv2.setNumThreads(1)


class ImagePool:
    """Runs ImageMaker over jobs, in order, in this process or in `workers` spawned processes."""

    def __init__(self, maker: ImageMaker, workers: int) -> None:
        if workers < 1:
            raise ConfigError(f"workers {workers}, expected at least 1")
        self.maker = maker
        self.workers = workers
        self._pool = None

    def __enter__(self) -> ImagePool:
        if self.workers > 1:
            context = multiprocessing.get_context("spawn")  # fork is unsafe once OpenCV or torch started threads
            self._pool = context.Pool(self.workers, initializer=_limit_worker_threads)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()

    def images(self, jobs: Sequence[ImageJob]) -> Iterator[RenderedImage]:
        if self._pool is None:
            results: Iterable[list[RenderedImage]] = map(self.maker, jobs)
        else:
            chunk = max(1, min(16, len(jobs) // (4 * self.workers)))
            results = self._pool.imap(self.maker, jobs, chunksize=chunk)
        for batch in results:
            yield from batch


def verification_plan(config: SynthConfig) -> tuple[list[tuple[ImageJob, ImageJob]], np.ndarray]:
    """Pairs of held-out images and their issame flags.

    Each of the 10 contiguous folds holds the same number of pairs, the first half genuine (two
    images of one identity) and the second half impostor (two identities), as LFW's pairs.txt.
    Every image in the plan is a distinct render.
    """
    start, stop = config.identity_ranges()["verify"]
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(PLAN_STREAM, 0)))
    next_image = dict.fromkeys(range(start, stop), 0)

    def image_of(identity: int) -> ImageJob:
        number = next_image[identity]
        next_image[identity] = number + 1
        return ImageJob(identity, (number,))

    half = config.verify_pairs // (2 * NUM_FOLDS)
    pairs, issame = [], []
    for _ in range(NUM_FOLDS):
        for _ in range(half):
            identity = int(rng.integers(start, stop))
            pairs.append((image_of(identity), image_of(identity)))
            issame.append(True)
        for _ in range(half):
            a, b = rng.choice(np.arange(start, stop), size=2, replace=False).tolist()
            pairs.append((image_of(a), image_of(b)))
            issame.append(False)
    return pairs, np.array(issame, dtype=bool)


def _labelled(images: Iterator[RenderedImage], labels: Iterable[int]) -> Iterator[tuple[bytes, int]]:
    for image, label in zip(images, labels):
        yield image.jpeg, label


def _identity_jobs(start: int, stop: int, numbers: Sequence[int]) -> list[ImageJob]:
    return [ImageJob(identity, tuple(numbers)) for identity in range(start, stop)]


def _write_rec(pool: ImagePool, folder: Path, jobs: list[ImageJob], labels: list[int], layout: str,
               num_classes: int) -> int:  # fmt: skip
    info = write_face_rec(folder, _labelled(pool.images(jobs), labels), layout=layout, num_classes=num_classes)
    return info.num_images


def _write_train(pool: ImagePool, out: Path, config: SynthConfig) -> int:
    start, stop = config.identity_ranges()["train"]
    jobs = _identity_jobs(start, stop, range(config.images_per_identity))
    labels = np.repeat(np.arange(config.identities), config.images_per_identity).tolist()
    return _write_rec(pool, out / "train", jobs, labels, "ms1m", config.identities)


def _write_verification(pool: ImagePool, out: Path, config: SynthConfig) -> None:
    pairs, issame = verification_plan(config)
    jobs = [job for pair in pairs for job in pair]
    write_pairs_bin(out / "verify" / "synth_lfw.bin", [image.jpeg for image in pool.images(jobs)], issame)


def _write_identification(pool: ImagePool, out: Path, config: SynthConfig) -> dict[str, int]:
    """Gallery: image 0 of each gallery identity; probes: its next images; distractors: other people.

    Gallery and probe labels are 0..G-1; distractor labels continue at G, so no distractor shares
    a label with a gallery identity.
    """
    ranges = config.identity_ranges()
    start, stop = ranges["gallery"]
    gallery_count = config.gallery_identities
    counts = {
        "gallery": _write_rec(pool, out / "ident" / "gallery", _identity_jobs(start, stop, (0,)),
                              list(range(gallery_count)), "ms1m", gallery_count),
        "probe": _write_rec(pool, out / "ident" / "probe",
                            _identity_jobs(start, stop, range(1, 1 + config.probes_per_identity)),
                            np.repeat(np.arange(gallery_count), config.probes_per_identity).tolist(),
                            "ms1m", gallery_count),
    }  # fmt: skip
    if config.distractors:
        start, stop = ranges["distractors"]
        labels = list(range(gallery_count, gallery_count + config.distractors))
        counts["distractors"] = _write_rec(pool, out / "ident" / "distractors", _identity_jobs(start, stop, (0,)),
                                           labels, "shuffled", gallery_count + config.distractors)  # fmt: skip
    return counts


def _write_celeba(pool: ImagePool, out: Path, config: SynthConfig) -> int:
    """Images plus CelebA's landmark, attribute and identity files (identities numbered from 1)."""
    start, stop = config.identity_ranges()["celeba"]
    jobs = _identity_jobs(start, stop, range(config.celeba_images_per_identity))
    folder = out / "celeba"
    folder.mkdir(parents=True, exist_ok=True)
    # Images go to a temporary folder renamed into place at the end: no half-written image set.
    staging = Path(tempfile.mkdtemp(prefix=".images.", dir=folder))
    names, landmarks, attributes = [], [], []
    try:
        for number, image in enumerate(pool.images(jobs), start=1):
            name = f"{number:06d}.jpg"
            (staging / name).write_bytes(image.jpeg)
            names.append(name)
            landmarks.append(image.landmarks)
            attributes.append(image.attributes)
        if (folder / "images").exists():
            shutil.rmtree(folder / "images")
        os.replace(staging, folder / "images")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    identities = np.repeat(np.arange(1, config.celeba_identities + 1), config.celeba_images_per_identity)
    write_landmarks(folder / "list_landmarks_align_celeba.txt", names, np.stack(landmarks))
    write_attributes(folder / "list_attr_celeba.txt", names, list(ATTRIBUTE_NAMES),
                     np.where(np.stack(attributes), 1, -1))  # fmt: skip
    write_identities(folder / "identity_CelebA.txt", names, identities)
    return len(names)


def generate(out: str | os.PathLike, config: SynthConfig, workers: int = 1,
             progress: Callable[[str], None] | None = None) -> dict:  # fmt: skip
    """Write the whole benchmark under `out`; returns the metadata also written to `out/meta.json`.

    `progress`, if given, is called with the name of each part before it is generated.
    """
    config.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    maker = ImageMaker(config.seed, config.size, config.difficulty, config.quality)
    counts: dict[str, int] = {}
    report = progress or (lambda part: None)
    with ImagePool(maker, workers) as pool:
        report("train")
        counts["train_images"] = _write_train(pool, out, config)
        report("verify")
        _write_verification(pool, out, config)
        report("ident")
        ident = _write_identification(pool, out, config)
        report("celeba")
        counts["celeba_images"] = _write_celeba(pool, out, config)
    counts.update(
        train_identities=config.identities,
        verify_pairs=config.verify_pairs,
        verify_identities=config.verify_identities,
        gallery_images=ident["gallery"],
        probe_images=ident["probe"],
        distractor_images=ident.get("distractors", 0),
        gallery_identities=config.gallery_identities,
        celeba_identities=config.celeba_identities,
    )
    meta = {
        "format": "facekd-synth",
        "version": FORMAT_VERSION,
        "parameters": dataclasses.asdict(config),
        "counts": counts,
        "identity_ranges": {name: list(bounds) for name, bounds in config.identity_ranges().items()},
        "attributes": {
            "names": list(ATTRIBUTE_NAMES),
            "identity_related": list(IDENTITY_ATTRIBUTES),
            "identity_unrelated": list(NUISANCE_ATTRIBUTES),
        },
        "verify": {"file": "verify/synth_lfw.bin", "folds": NUM_FOLDS,
                   "order": "each contiguous fold: genuine pairs, then impostor pairs"},  # fmt: skip
        "ident": {"labels": "gallery and probe 0..G-1 (same identity, same label); distractors G..G+D-1",
                  "layouts": {"gallery": "ms1m", "probe": "ms1m", "distractors": "shuffled"}},  # fmt: skip
        "landmarks": "left eye, right eye, nose tip, left and right mouth corner, x y in image pixels",
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta

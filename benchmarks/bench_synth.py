"""Synthetic-face generation speed on one core, against plain JPEG encoding in the same run.

    python benchmarks/bench_synth.py [--images 3000] [--size 112] [--difficulty medium]

Prints images per second (wall clock and process CPU time) for rendering + JPEG encoding
(quality 95, as insightface), the same for encoding a random image only, their ratio, and the
time 20,000 images would take. The target is 20,000 images of 112x112 within 60 s on one core.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from facekd.data.codec import encode_jpeg
from facekd.data.synthetic import ImageJob, ImageMaker, parse_difficulty

TARGET_IMAGES, TARGET_SECONDS = 20_000, 60.0


def timed(work) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of `work()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--difficulty", default="medium")
    parser.add_argument("--per-identity", type=int, default=32)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one core

    random_image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    maker = ImageMaker(seed=0, size=args.size, difficulty=parse_difficulty(args.difficulty), quality=95)
    identities = -(-args.images // args.per_identity)
    jobs = [ImageJob(identity, tuple(range(args.per_identity))) for identity in range(identities)]
    count = identities * args.per_identity
    maker(jobs[0])  # warm up

    def encode_only() -> None:
        for _ in range(count):
            encode_jpeg(random_image, 95)

    def render_and_encode() -> None:
        for job in jobs:
            maker(job)

    base_wall, base_cpu = timed(encode_only)
    wall, cpu = timed(render_and_encode)
    rate_wall, rate_cpu = count / wall, count / cpu
    print(f"{count} images of {args.size}x{args.size}, difficulty {args.difficulty}, one core")
    print(f"baseline  JPEG encode of a random image: {count / base_wall:8.0f} img/s wall, {count / base_cpu:8.0f} img/s CPU")
    print(f"synthetic render + JPEG encode:          {rate_wall:8.0f} img/s wall, {rate_cpu:8.0f} img/s CPU")
    print(f"ratio (synthetic / encode-only time):    {wall / base_wall:8.1f}x wall, {cpu / base_cpu:8.1f}x CPU")
    print(f"{TARGET_IMAGES} images would take {TARGET_IMAGES / rate_wall:.1f} s wall, {TARGET_IMAGES / rate_cpu:.1f} s CPU "
          f"(target {TARGET_SECONDS:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()

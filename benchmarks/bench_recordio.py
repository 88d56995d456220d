"""RecordIO read-and-decode throughput against decoding the same JPEG bytes already in memory.

    python benchmarks/bench_recordio.py [--images 2000] [--scan-records 50000]

One process, one thread. The baseline decodes the JPEG bytes with the same decoder the dataset
uses (simplejpeg), so the ratio is the cost of our framing, header parsing and file reads. The
dataset is read in a random order, as a shuffling DataLoader would. A second figure is the header
scan that runs when a dataset is opened (records per second).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from facekd.data import RecordIODataset, encode_jpeg, write_face_rec


def face_like_images(count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Blurred noise at 112x112: JPEG sizes in the range of real aligned face crops."""
    images = []
    for _ in range(count):
        noise = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        images.append(cv2.GaussianBlur(noise, (0, 0), 1.5))
    return images


def best_rate(run: Callable[[], object], count: int, repeats: int = 3) -> float:
    """Items per second of the fastest of `repeats` runs."""
    best = min(timed(run) for _ in range(repeats))
    return count / best


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved_medians(first: Callable[[int], object], second: Callable[[int], object], order, passes: int) -> tuple[float, float]:
    """Median seconds per item of two per-item operations timed alternately on each item.

    Alternating item by item exposes both to the same load on a shared, noisy machine.
    """
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(passes):
        for index in order:
            times[0].append(timed(lambda: first(index)))
            times[1].append(timed(lambda: second(index)))
    return float(np.median(times[0])), float(np.median(times[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--scan-records", type=int, default=50000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        encoded = [encode_jpeg(image) for image in face_like_images(args.images, rng)]
        write_face_rec(Path(tmp) / "decode", zip(encoded, rng.integers(0, 100, args.images)), layout="shuffled")
        dataset = RecordIODataset(Path(tmp) / "decode")
        order = rng.permutation(len(dataset))

        memory_seconds, rec_seconds = interleaved_medians(
            lambda index: simplejpeg.decode_jpeg(encoded[index], colorspace="RGB"),
            lambda index: dataset[int(index)],
            order,
            passes=3,
        )
        read_seconds = np.median([timed(lambda: dataset.records.read_payload(int(p))) for p in dataset._positions])

        tiny = encode_jpeg(face_like_images(1, rng)[0][:16, :16].copy())
        write_face_rec(Path(tmp) / "scan", ((tiny, i % 1000) for i in range(args.scan_records)), layout="shuffled")
        scan_rate = best_rate(lambda: RecordIODataset(Path(tmp) / "scan"), args.scan_records)

    print(f"images: {args.images} at 112x112, mean JPEG size {np.mean([len(e) for e in encoded]) / 1024:.1f} KiB")
    print("median per image, timed alternately on each image in a random order (3 passes):")
    print(f"  in-memory JPEG decode (simplejpeg): {memory_seconds * 1e6:7.1f} us = {1 / memory_seconds:6.0f} img/s")
    print(f"  RecordIODataset read + decode:      {rec_seconds * 1e6:7.1f} us = {1 / rec_seconds:6.0f} img/s")
    print(f"  record read alone (no decode):      {read_seconds * 1e6:7.1f} us")
    print(f"ratio RecordIO / in-memory throughput: {memory_seconds / rec_seconds:.3f}")
    print(f"header scan on open: {scan_rate:.0f} records/s ({args.scan_records} records)")


if __name__ == "__main__":
    main()

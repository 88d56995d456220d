"""Profile table of the teachers and students at 112, 96, 64 and 48 px, with ratios to r100 at 112 px.

    python benchmarks/bench_profile.py                 # FLOPs, params, memory, PyTorch batch-1 latency
    python benchmarks/bench_profile.py --full          # + onnxruntime and batch 64 (slow on CPU)

Every model is built without weights (FLOPs and latency do not depend on them), with BatchNorm
statistics calibrated on synthetic faces so activations have trained-network scales. Non-FCN
backbones are built for each input size (their embedding layer is sized to the last feature map);
the FCN students (global pooling) are the same network at every size. The reference, r100 at 112 px,
is measured in the same run, so the ratios hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time

import torch

from facekd.deploy.model_source import ModelSource
from facekd.deploy.profile import LatencySettings, markdown_table, profile_model
from facekd.fileio import atomic_write_text

MODELS = [("r100", False), ("r50", False), ("r18", False), ("mbf", False), ("r18", True), ("mbf", True)]
RESOLUTIONS = [112, 96, 64, 48]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also onnxruntime and the large batch")
    parser.add_argument("--resolutions", type=int, nargs="+", default=RESOLUTIONS)
    parser.add_argument("--repeats", type=int, default=10, help="timed batch-1 passes (median)")
    parser.add_argument("--large-batch", type=int, default=64)
    parser.add_argument("--large-repeats", type=int, default=1, help="timed large-batch passes, after 1 warm-up")
    parser.add_argument("--threads", type=int, help="torch (and onnxruntime) threads; default: torch's")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batch-1 passes first")
    parser.add_argument("--json", help="write every profile here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = LatencySettings(
        warmup=args.warmup, repeats=args.repeats, large_batch=args.large_batch,
        large_batch_warmup=1, large_batch_repeats=args.large_repeats, fast=not args.full,
    )
    started = time.time()
    profiles = []
    for arch, fcn in MODELS:
        for size in args.resolutions:
            source = ModelSource.from_args(None, arch, fcn=fcn)
            profiles.append(profile_model(source.build(size), source.label, size, settings))
            print(f"[{time.time() - started:6.0f} s] {source.label} {size} px done", flush=True)
    reference = next(p for p in profiles if p.name == "r100" and p.resolution == 112)
    print(f"\n{datetime.date.today()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'full' if args.full else 'fast'} mode, {time.time() - started:.0f} s\n")
    print(markdown_table(profiles, reference))
    if args.json:
        atomic_write_text(args.json, json.dumps([dataclasses.asdict(p) for p in profiles], indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Calibrate the synthetic benchmark for method comparison: teacher-baseline gap and seed spread.

For each difficulty it generates the benchmark once, trains one teacher, then trains the no-teacher
baseline student with several seeds, and scores all of them on the held-out pairs (10-fold
accuracy, TAR@FAR) and the 1:N split. It prints, per difficulty, the teacher's accuracy, the
baseline's mean and sample std over seeds, and the gap. Everything goes through the `facekd` CLI
(`synth`, `train`, `eval`), so the figures are those a user gets; finished runs are reused.

    python benchmarks/bench_calibration.py --out runs/calibration --difficulty 0.5 0.8 --seeds 0 1 2

The sizes (identities, pairs, epochs, widths, resolution) are flags; the defaults are the plan
being calibrated for `facekd compare` (docs/benchmarks.md, "Calibration").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from facekd.evaluate.paired import mean_and_std
from facekd.fileio import atomic_write_text


def facekd(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "facekd", *args], check=True, stdout=subprocess.DEVNULL)


def network(width: float, size: int) -> dict:
    return {"backbone": "r18", "input_size": size, "kwargs": {"width": width, "num_features": 128, "fcn": True}}


def train(data: Path, model: dict, epochs: int, seed: int, out: Path, args: argparse.Namespace) -> float:
    """Train one network with the demo's recipe; returns wall seconds (0 when reused)."""
    if (out / "backbone.pth").is_file():
        return 0.0
    config = {
        "data": {"train": str(data / "train")},
        "model": model,
        "head": {"s": args.scale, "m2": args.arc_margin, "m3": args.cos_margin},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"kind": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": epochs, "batch_size": args.batch_size, "workers": 1, "out": str(out),
                  "log_interval": 50, "seed": seed},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "calibration.yaml", yaml.safe_dump(config))
    start = time.perf_counter()
    facekd("train", "--config", str(out / "calibration.yaml"))
    return time.perf_counter() - start


def score(data: Path, run: Path) -> dict:
    """Verification and 1:N results of run/backbone.pth, as `facekd eval` writes them."""
    report = run / "eval"
    if not (report / "synth_lfw.json").is_file():
        facekd("eval", "--model", str(run / "backbone.pth"), "--bin", str(data / "verify" / "synth_lfw.bin"),
               "--ident", str(data / "ident"), "--out", str(report), "--no-progress")
    verify = json.loads((report / "synth_lfw.json").read_text())
    ident = json.loads((report / "identification.json").read_text())
    return {"verify": verify, "ident": ident}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/calibration"))
    parser.add_argument("--difficulty", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--identities", type=int, default=500)
    parser.add_argument("--images-per-identity", type=int, default=30)
    parser.add_argument("--verify-pairs", type=int, default=6000)
    parser.add_argument("--verify-identities", type=int, default=600)
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--student-epochs", type=int, default=2)
    parser.add_argument("--teacher-width", type=float, default=0.25)
    parser.add_argument("--student-width", type=float, default=0.125)
    parser.add_argument("--input-size", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--scale", type=float, default=32.0, help="margin softmax scale s")
    parser.add_argument("--arc-margin", type=float, default=0.5, help="ArcFace angular margin m2")
    parser.add_argument("--cos-margin", type=float, default=0.0, help="CosFace additive margin m3")
    args = parser.parse_args()

    rows = []
    for difficulty in args.difficulty:
        data = args.out / f"d{difficulty:g}" / "data"
        if not (data / "meta.json").is_file():
            facekd("synth", "--out", str(data), "--difficulty", str(difficulty), "--workers", "2",
                   "--identities", str(args.identities), "--images-per-identity", str(args.images_per_identity),
                   "--verify-pairs", str(args.verify_pairs), "--verify-identities", str(args.verify_identities))
        teacher_run = args.out / f"d{difficulty:g}" / f"teacher_e{args.teacher_epochs}"
        teacher_seconds = train(data, network(args.teacher_width, args.input_size), args.teacher_epochs, 2048,
                                teacher_run, args)
        teacher = score(data, teacher_run)
        students = []
        for seed in args.seeds:
            loss = "" if (args.scale, args.arc_margin, args.cos_margin) == (32.0, 0.5, 0.0) else \
                f"_s{args.scale:g}m{args.arc_margin:g}c{args.cos_margin:g}"
            run = args.out / f"d{difficulty:g}" / f"baseline_w{args.student_width:g}_e{args.student_epochs}{loss}_s{seed}"
            seconds = train(data, network(args.student_width, args.input_size), args.student_epochs, seed, run, args)
            students.append({**score(data, run), "seconds": seconds})
        accuracy = [s["verify"]["accuracy"] for s in students]
        mean, spread = mean_and_std(accuracy)
        rows.append({"difficulty": difficulty, "teacher": teacher["verify"]["accuracy"],
                     "teacher_rank1": teacher["ident"]["rank_rates"]["rank-1"], "teacher_seconds": teacher_seconds,
                     "baseline": accuracy, "baseline_rank1": [s["ident"]["rank_rates"]["rank-1"] for s in students],
                     "baseline_seconds": [s["seconds"] for s in students], "gap": teacher["verify"]["accuracy"] - mean,
                     "baseline_std": spread})
        print(f"difficulty {difficulty:g}: teacher {100 * rows[-1]['teacher']:.2f} %, baseline "
              f"{100 * mean:.2f} ± {100 * spread:.2f} % over seeds {args.seeds}, gap {100 * rows[-1]['gap']:.2f} pts",
              flush=True)
    atomic_write_text(args.out / "calibration.json", json.dumps({"args": vars(args) | {"out": str(args.out)},
                                                                  "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

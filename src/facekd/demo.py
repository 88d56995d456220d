"""`facekd demo`: generate the synthetic benchmark, train (or reuse) a teacher, distil one student
per seed method plus a no-teacher baseline, evaluate them all and write a comparison report.

Every stage reuses what an earlier run left in the output folder when it was made with the same
settings (a finished checkpoint whose config matches), so an interrupted demo picks up where it
stopped and a second run only re-evaluates.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facekd.data import RecordIODataset, load_pairs_bin
from facekd.data.synthetic import SynthConfig, generate
from facekd.deploy.profile import LatencySettings, profile_model
from facekd.distill.config import DistillExperimentConfig
from facekd.distill.runner import distill, final_checkpoint, is_finished
from facekd.evaluate import verification
from facekd.evaluate.embed import embed_images
from facekd.evaluate.identification import identify
from facekd.evaluate.ijb import tar_at_far
from facekd.evaluate.report import VERIFICATION_AXES, Curve, plot_roc
from facekd.evaluate.runner import ImagesOf
from facekd.fileio import atomic_write_bytes, atomic_write_text
from facekd.models.loading import load_backbone
from facekd.train.build import build_classification_task, open_train_samples
from facekd.train.config import ExperimentConfig, from_dict, load_yaml
from facekd.train.distributed import World
from facekd.train.engine import Trainer, seed_everything

STUDENTS_PRESET = "demo_students.yaml"
PAIR_FARS = (1e-2, 1e-1)  # 3,000 pairs have 1,500 impostors: lower FARs would rest on one pair


@dataclass(frozen=True)
class Network:
    """A backbone as the configs name it: registry name, options and input resolution."""

    backbone: str
    kwargs: dict[str, Any]
    input_size: int

    def model_section(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "kwargs": dict(self.kwargs), "input_size": self.input_size}


@dataclass(frozen=True)
class StudentRun:
    name: str
    folder: str
    network: Network
    method: str = ""  # empty: a baseline trained without a teacher
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoPlan:
    synth: SynthConfig
    teacher: Network
    teacher_epochs: int
    student_epochs: int
    batch_size: int
    lr: float
    margin_s: float
    students: tuple[StudentRun, ...]


def preset_students() -> list[dict[str, Any]]:
    """The demo's student runs, from the packaged preset (facekd/presets/demo_students.yaml)."""
    return load_yaml(resources.files("facekd").joinpath("presets", STUDENTS_PRESET).read_text())


def demo_plan(quick: bool) -> DemoPlan:
    """The default plan finishes in about 14 minutes on 2 CPU cores, `quick` in under 3.

    Sized by measurement (docs/benchmarks.md): the teacher sees 45k samples, which puts it at
    90-99% on the held-out pairs, and every student gets the same, smaller budget.
    """
    embedding = {"num_features": 128, "fcn": True}
    teacher = Network("r18", {"width": 0.25, **embedding}, 40)
    small = Network("r18", {"width": 0.125, **embedding}, 40)  # half the teacher's width
    low_res = Network("r18", {"width": 0.25, **embedding}, 28)  # the teacher's network at 28 px
    networks = {"small": small, "low_res": low_res}
    students = [StudentRun(run["name"], run["folder"], networks[run["network"]], run.get("method", ""),
                           run.get("options", {})) for run in preset_students()]
    if quick:
        synth = SynthConfig(identities=100, images_per_identity=20, verify_identities=200, verify_pairs=1000,
                            gallery_identities=100, probes_per_identity=2, distractors=200,
                            celeba_identities=40, celeba_images_per_identity=10)
        return DemoPlan(synth, teacher, teacher_epochs=5, student_epochs=2, batch_size=64, lr=0.1,
                        margin_s=32.0, students=tuple(students))
    synth = SynthConfig(identities=500, images_per_identity=30)
    return DemoPlan(synth, teacher, teacher_epochs=3, student_epochs=2, batch_size=128, lr=0.1,
                    margin_s=32.0, students=tuple(students))


def training_section(plan: DemoPlan, data: Path, network: Network, epochs: int, out: Path,
                     seed: int = 2048) -> dict[str, Any]:
    return {
        "data": {"train": str(data / "train")},
        "model": network.model_section(),
        "head": {"s": plan.margin_s, "m2": 0.5},
        "optim": {"name": "sgd", "lr": plan.lr, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"kind": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": epochs, "batch_size": plan.batch_size, "workers": 1, "out": str(out),
                  "log_interval": 10, "seed": seed},
    }


def say(message: str) -> None:
    print(f"[facekd demo] {message}", flush=True)


def ensure_data(out: Path, plan: DemoPlan, workers: int) -> Path:
    data = out / "data"
    meta = data / "meta.json"
    wanted = dataclasses.asdict(plan.synth)
    if meta.is_file() and json.loads(meta.read_text()).get("parameters") == wanted:
        say(f"reusing the synthetic benchmark in {data}")
        return data
    say(f"generating the synthetic benchmark in {data}")
    generate(data, plan.synth, workers=workers, progress=lambda part: say(f"  writing {part}"))
    return data


def train_network(config: ExperimentConfig, world: World) -> None:
    seed_everything(config.train.seed)
    samples = open_train_samples(config.data)
    task = build_classification_task(config, samples.num_classes)
    Trainer(task, samples, config, world=world).fit()


def run_stage(name: str, config: Any, world: World) -> float:
    """Train (or reuse) one network; returns the wall seconds spent."""
    out = Path(config.train.out)
    final = final_checkpoint(out)
    if is_finished(final.parent, config_for(final.parent, config)):
        say(f"{name}: reusing {final}")
        return 0.0
    say(f"{name}: training for {config.train.epochs} epochs -> {out}")
    start = time.perf_counter()
    if isinstance(config, DistillExperimentConfig):
        seed_everything(config.train.seed)
        distill(config, world)
    else:
        train_network(config, world)
    return time.perf_counter() - start


@dataclass
class Scores:
    name: str
    accuracy: float
    std: float
    tar: dict[float, float]
    rank1: float
    rank5: float
    parameters: int
    flops: int
    latency_ms: float
    curve: Curve
    train_seconds: float


def evaluate_network(name: str, checkpoint: Path, data: Path, device: torch.device, seconds: float) -> Scores:
    model = load_backbone(checkpoint).to(device)
    input_size = int(model.spec.kwargs["input_size"])

    def embed(images) -> np.ndarray:
        return embed_images(model, images, batch_size=128, device=device, input_size=input_size, progress=False)

    images, issame = load_pairs_bin(data / "verify" / "synth_lfw.bin")
    pairs = embed(images)
    result = verification.evaluate(pairs, issame)
    unit = pairs / np.linalg.norm(pairs, axis=1, keepdims=True)
    tar, _, _, _ = tar_at_far(issame.astype(int), np.sum(unit[0::2] * unit[1::2], axis=1), PAIR_FARS)
    sets = {part: RecordIODataset(data / "ident" / part) for part in ("gallery", "probe", "distractors")}
    features = {part: embed(ImagesOf(ds)) for part, ds in sets.items()}
    ident = identify(features["probe"], sets["probe"].labels, features["gallery"], sets["gallery"].labels,
                     distractor_feats=features["distractors"], ranks=(1, 5))
    profile = profile_model(model, name, input_size, LatencySettings(fast=True))
    return Scores(name, result.accuracy, result.std, tar, ident.rank_rates[1], ident.rank_rates[5],
                  profile.parameters, profile.flops, profile.torch_b1_ms,
                  Curve(result.fpr, result.tpr), seconds)


def report_markdown(scores: list[Scores], plan: DemoPlan, total_seconds: float) -> str:
    teacher = scores[0]
    far_heads = " | ".join(f"TAR@FAR={far:g}" for far in PAIR_FARS)
    lines = [
        "# facekd demo: seed distillation methods on the synthetic benchmark",
        "",
        f"Teacher {plan.teacher.backbone} {plan.teacher.kwargs} at {plan.teacher.input_size} px; "
        f"{plan.synth.identities} training identities x {plan.synth.images_per_identity} images; "
        f"{plan.synth.verify_pairs} held-out verification pairs (10-fold, insightface protocol); "
        f"1:N with {plan.synth.gallery_identities} gallery identities and {plan.synth.distractors} distractors. "
        f"Students train {plan.student_epochs} epochs, the teacher {plan.teacher_epochs}.",
        "",
        f"| model | accuracy (%) | {far_heads} | rank-1 | rank-5 | params | MFLOPs | FLOPs vs teacher "
        "| CPU latency b1 (ms) | train (s) |",
        "|---|---|" + "---|" * len(PAIR_FARS) + "---|---|---|---|---|---|---|",
    ]
    for s in scores:
        tars = " | ".join(f"{100 * s.tar[far]:.2f}" for far in PAIR_FARS)
        lines.append(
            f"| {s.name} | {100 * s.accuracy:.2f} ± {100 * s.std:.2f} | {tars} | {100 * s.rank1:.2f} | "
            f"{100 * s.rank5:.2f} | {s.parameters / 1e6:.3f}M | {s.flops / 1e6:.1f} | "
            f"{s.flops / teacher.flops:.3f} | {s.latency_ms:.2f} | "
            f"{f'{s.train_seconds:.0f}' if s.train_seconds else 'reused'} |"
        )
    lines += ["", f"Total wall time {total_seconds / 60:.1f} min. ROC curves: roc.png; accuracy against FLOPs: "
              "accuracy_vs_flops.png; every number: results.json.", ""]
    return "\n".join(lines)


def plot_accuracy_vs_flops(scores: list[Scores], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    try:
        for s in scores:
            ax.scatter(s.flops / 1e6, 100 * s.accuracy, s=30)
            ax.annotate(s.name, (s.flops / 1e6, 100 * s.accuracy), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("MFLOPs per image (PyTorch flop counter)")
        ax.set_ylabel("verification accuracy (%)")
        ax.set_title("Accuracy against compute")
        ax.grid(linestyle="--", linewidth=0.6)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", bbox_inches="tight")
    finally:
        plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def train_teacher(out: Path, plan: DemoPlan, data: Path, world: World) -> tuple[Path, float]:
    """Train the teacher under OUT/teacher (or reuse it); returns its checkpoint and the seconds spent."""
    config = from_dict(training_section(plan, data, plan.teacher, plan.teacher_epochs, out / "teacher"),
                       ExperimentConfig, source="demo teacher")
    seconds = run_stage("teacher", config, world)
    return out / "teacher" / "checkpoint.pt", seconds


def train_student(run: StudentRun, plan: DemoPlan, data: Path, teacher: Path, folder: Path, world: World, *,
                  cache_dir: Path, seed: int = 2048) -> tuple[Path, float]:
    """Train one student under `folder` (or reuse it); returns its final checkpoint and the seconds spent."""
    raw = training_section(plan, data, run.network, plan.student_epochs, folder, seed)
    if run.method:
        raw["teacher"] = {"path": str(teacher)}
        raw["distill"] = {"method": run.method, "options": dict(run.options), "attributes": str(data / "celeba"),
                          "cache_dir": str(cache_dir), "cache_dtype": "float32"}
        config = from_dict(raw, DistillExperimentConfig, source=f"demo {run.name}")
    else:
        config = from_dict(raw, ExperimentConfig, source=f"demo {run.name}")
    seconds = run_stage(run.name, config, world)
    return final_checkpoint(folder), seconds


def run_demo(out: Path, plan: DemoPlan, *, device: torch.device, synth_workers: int = 2) -> Path:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    world = World(0, 1, device)
    data = ensure_data(out, plan, synth_workers)
    teacher, teacher_seconds = train_teacher(out, plan, data, world)
    checkpoints, seconds = {"teacher": teacher}, {"teacher": teacher_seconds}
    for run in plan.students:
        checkpoints[run.name], seconds[run.name] = train_student(
            run, plan, data, teacher, out / "students" / run.folder, world, cache_dir=out / "teacher_cache")

    say("evaluating on the held-out pairs and the 1:N split")
    scores = [evaluate_network(name, path, data, device, seconds[name]) for name, path in checkpoints.items()]
    total = time.perf_counter() - started
    atomic_write_text(out / "report.md", report_markdown(scores, plan, total))
    plot_roc({s.name: s.curve for s in scores}, out / "roc.png", title="Held-out verification pairs",
             axes=VERIFICATION_AXES)
    plot_accuracy_vs_flops(scores, out / "accuracy_vs_flops.png")
    results = [{k: v for k, v in dataclasses.asdict(s).items() if k != "curve"} for s in scores]
    atomic_write_text(out / "results.json", json.dumps({"seconds": total, "models": results},
                                                       indent=2, default=str) + "\n")
    return out / "report.md"


def config_for(out: Path, config: Any) -> Any:
    """`config` writing to `out` instead (a pipeline stage's own folder)."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, out=str(out)))

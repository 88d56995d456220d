"""Train what a comparison needs: the benchmark, one teacher, and every (run, seed) student.

Every step reuses what an earlier compare left in the output folder when it was made with the same
settings (data with the same parameters; a finished checkpoint whose stored config equals the one
asked for), so a killed compare continues where it stopped and a rerun only re-evaluates.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

from facekd.compare.plan import ComparePlan, Network, Run
from facekd.data.synthetic import generate
from facekd.distill.config import DistillExperimentConfig
from facekd.distill.runner import distill, final_checkpoint, is_finished
from facekd.train.build import build_classification_task, open_train_samples
from facekd.train.config import ExperimentConfig, from_dict
from facekd.train.distributed import World
from facekd.train.engine import Trainer, seed_everything

Say = Callable[[str], None]


def ensure_data(out: Path, plan: ComparePlan, workers: int, say: Say) -> Path:
    """The plan's synthetic benchmark under out/data, generated unless one with its parameters is there."""
    data = out / "data"
    meta = data / "meta.json"
    wanted = dataclasses.asdict(plan.benchmark)
    if meta.is_file() and json.loads(meta.read_text()).get("parameters") == wanted:
        say(f"reusing the synthetic benchmark in {data}")
        return data
    say(f"generating the synthetic benchmark in {data}")
    generate(data, plan.benchmark, workers=workers, progress=lambda part: say(f"  writing {part}"))
    return data


def training_section(plan: ComparePlan, data: Path, network: Network, epochs: int, out: Path, seed: int) -> dict[str, Any]:
    """The recipe every network of the plan trains with. No validation set: the last epoch is the
    result, so no checkpoint is ever selected on the pairs that are reported."""
    recipe = plan.recipe
    return {
        "data": {"train": str(data / "train")},
        "model": network.model_section(),
        "head": {"s": recipe.margin_s, "m2": recipe.margin_m},
        "optim": {"name": "sgd", "lr": recipe.lr, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"kind": "cosine", "warmup_epochs": recipe.warmup_epochs},
        "train": {"epochs": epochs, "batch_size": recipe.batch_size, "workers": 1, "out": str(out),
                  "log_interval": 10, "seed": seed},
    }


def _for_folder(out: Path, config: Any) -> Any:
    """`config` writing to `out` instead (a pipeline stage's own folder)."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, out=str(out)))


def is_done(config: Any) -> bool:
    final = final_checkpoint(Path(config.train.out))
    return is_finished(final.parent, _for_folder(final.parent, config))


def train_config(config: Any, world: World) -> float:
    """Train one network; returns the seconds spent."""
    start = time.perf_counter()
    seed_everything(config.train.seed)
    if isinstance(config, DistillExperimentConfig):
        distill(config, world)
    else:
        samples = open_train_samples(config.data)
        Trainer(build_classification_task(config, samples.num_classes), samples, config, world=world).fit()
    return time.perf_counter() - start


def ensure_trained(config: Any, world: World) -> float:
    """Train one network unless a finished run of this config is there; returns the seconds spent."""
    return 0.0 if is_done(config) else train_config(config, world)


def teacher_config(plan: ComparePlan, data: Path, out: Path) -> ExperimentConfig:
    raw = training_section(plan, data, plan.networks[plan.teacher.network], plan.teacher.epochs, out / "teacher",
                           plan.teacher.seed)
    return from_dict(raw, ExperimentConfig, source="the compare teacher")


def student_config(plan: ComparePlan, run: Run, seed: int, data: Path, teacher: Path, folder: Path,
                   cache_dir: Path) -> Any:
    """The config of one (run, seed) student: the baseline trains alone, a method with the teacher."""
    raw = training_section(plan, data, plan.networks[run.network], plan.student.epochs, folder, seed)
    if run.is_baseline:
        return from_dict(raw, ExperimentConfig, source=f"compare run {run.label}")
    raw["teacher"] = {"path": str(teacher)}
    if run.teacher_centres:
        raw["teacher"]["centres"] = run.teacher_centres
    raw["distill"] = {"method": run.method, "options": dict(run.options), "attributes": str(data / "celeba"),
                      "cache_dir": str(cache_dir), "cache_dtype": "float32"}
    config = from_dict(raw, DistillExperimentConfig, source=f"compare run {run.label}")
    config.check()
    return config

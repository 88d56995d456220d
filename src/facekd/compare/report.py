"""compare.md, compare.json and compare.png from the scores of every (run, seed).

Every method is paired with the baseline of its own student network, seed by seed: runs that share
a seed share their data order and initialisation draws, so the per-seed difference removes most of
the seed-to-seed spread (facekd.evaluate.paired).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from facekd.compare.plan import ComparePlan, Run
from facekd.compare.scoring import NetworkCost, TestScores
from facekd.evaluate.paired import PairedDifference, mean_and_std, paired_difference, std_interval_factors
from facekd.fileio import atomic_write_bytes, atomic_write_text


@dataclass(frozen=True)
class RunResult:
    run: Run
    seeds: tuple[int, ...]
    scores: tuple[TestScores, ...]  # one per seed, in the order of `seeds`
    train_seconds: tuple[float, ...]  # as recorded when the run trained
    reused: tuple[bool, ...]  # trained by an earlier compare into the same folder


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    value: Callable[[TestScores], float]


def metrics(far_keys: list[str]) -> list[Metric]:
    """The table's columns: accuracy, TAR at each resolvable FAR, rank-1."""
    columns = [Metric("accuracy", "accuracy", lambda s: s.accuracy)]
    columns += [Metric(f"tar@{far}", f"TAR@FAR={far}", lambda s, far=far: s.tar[far]) for far in far_keys]
    return columns + [Metric("rank1", "rank-1", lambda s: s.rank1)]


def percent(mean: float, spread: float | None = None) -> str:
    return f"{100 * mean:.2f}" if spread is None else f"{100 * mean:.2f} ± {100 * spread:.2f}"


def std_precision(seeds: int) -> str:
    """A sentence on how little a std over few seeds pins down (empty for one seed)."""
    if seeds < 2:
        return ""
    low, high = std_interval_factors(seeds)
    return (f" A std over {seeds} seeds is itself uncertain: the true one lies between {low:.2f}x and {high:.2f}x "
            "the figure (95 %), so the paired intervals below, not these stds, tell methods apart.")


def interval(diff: PairedDifference) -> str:
    """`+1.23 [+0.40, +2.06] *` in points; '*' where the 95 % interval excludes zero."""
    if diff.pairs < 2:
        return f"{100 * diff.mean:+.2f} (one seed: no interval)"
    mark = " *" if diff.resolved else ""
    return f"{100 * diff.mean:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}]{mark}"


class Comparison:
    """The finished runs of one compare, with their baselines resolved."""

    def __init__(self, plan: ComparePlan, results: list[RunResult], teacher: TestScores,
                 costs: dict[str, NetworkCost], seconds: float) -> None:
        self.plan = plan
        self.results = results
        self.teacher = teacher
        self.costs = costs
        self.seconds = seconds
        self.far_keys = list(teacher.tar)
        self.columns = metrics(self.far_keys)
        by_label = {r.run.label: r for r in results}
        self.baseline_of = {r.run.label: by_label[plan.baseline_label(r.run.network)] for r in results}

    def paired(self, result: RunResult, metric: Metric) -> PairedDifference:
        baseline = self.baseline_of[result.run.label]
        return paired_difference([metric.value(s) for s in result.scores], [metric.value(s) for s in baseline.scores])

    # -- markdown ------------------------------------------------------------------------------

    def markdown(self) -> str:
        plan, bench = self.plan, self.plan.benchmark
        seeds = self.results[0].seeds
        teacher_net = plan.networks[plan.teacher.network]
        teacher_cost = self.costs[plan.teacher.network]
        lines = [
            "# facekd compare",
            "",
            f"Plan: {plan.source}. Benchmark: synthetic faces at difficulty {bench.difficulty:g}, "
            f"{bench.identities} training identities x {bench.images_per_identity} images; "
            f"{self.teacher.pairs} held-out verification pairs ({self.teacher.impostors} impostor pairs; "
            f"insightface's 10-fold accuracy); 1:N with {bench.gallery_identities} gallery identities, "
            f"{self.teacher.probes} probes and {bench.distractors} distractors.",
            f"Teacher: {teacher_net.describe()}, {plan.teacher.epochs} epochs. Every student: "
            f"{plan.student.epochs} epoch{'s' if plan.student.epochs != 1 else ''}, batch {plan.recipe.batch_size}, SGD lr {plan.recipe.lr:g}, cosine "
            f"schedule, ArcFace s {plan.recipe.margin_s:g} m {plan.recipe.margin_m:g} as its identity loss. "
            f"The last epoch is scored: no checkpoint is selected on the test pairs.",
            f"Seeds: {', '.join(map(str, seeds))} ({len(seeds)}). Mean ± sample std over seeds, in percent."
            + std_precision(len(seeds)),
            "",
            "| run | network | accuracy | " + " | ".join(c.title for c in self.columns[1:]) +
            " | MFLOPs | FLOPs vs teacher | CPU ms (b1) | train s (vs baseline) |",
            "|---|---|---|" + "---|" * (len(self.columns) - 1) + "---|---|---|---|",
            f"| teacher | {plan.teacher.network} | {percent(self.teacher.accuracy)} | " +
            " | ".join(percent(c.value(self.teacher)) for c in self.columns[1:]) +
            f" | {teacher_cost.flops / 1e6:.1f} | 1.000 | {self.latency(plan.teacher.network)} | |",
        ]
        for result in self.results:
            cost = self.costs[result.run.network]
            cells = [percent(*mean_and_std([c.value(s) for s in result.scores])) if len(result.scores) > 1
                     else percent(c.value(result.scores[0])) for c in self.columns]  # one seed: no spread
            lines.append(f"| {result.run.label} | {result.run.network} | " + " | ".join(cells) +
                         f" | {cost.flops / 1e6:.1f} | {cost.flops / teacher_cost.flops:.3f} | "
                         f"{self.latency(result.run.network)} | {self.train_time(result)} |")
        lines += ["", "## Paired difference to the baseline of the same network", "",
                  "Per seed, the run minus its baseline; mean and 95 % paired t interval in points. "
                  "`*`: the interval excludes zero.", "",
                  "| run | baseline | " + " | ".join(f"Δ {c.title}" for c in self.columns) + " |",
                  "|---|---|" + "---|" * len(self.columns)]
        for result in self.results:
            if result.run.is_baseline:
                continue
            baseline = self.baseline_of[result.run.label]
            lines.append(f"| {result.run.label} | {baseline.run.label} | " +
                         " | ".join(interval(self.paired(result, c)) for c in self.columns) + " |")
        noisy = sorted(name for name, cost in self.costs.items() if cost.latency_noisy)
        lines += ["", "## Networks", "",
                  "| network | backbone | params (M) | MFLOPs | CPU ms (b1, median) | spread (IQR / median) |",
                  "|---|---|---|---|---|---|"]
        for name, cost in self.costs.items():
            lines.append(f"| {name} | {self.plan.networks[name].describe()} | {cost.parameters / 1e6:.3f} | "
                         f"{cost.flops / 1e6:.1f} | {cost.latency_ms:.2f} | {cost.latency_spread:.2f} |")
        lines += ["", "Latency: batch 1 on the CPU with one thread, median of 50 passes after 10 warm-up passes, "
                  "measured once per network (it does not depend on the weights)."
                  + (f" Noisy (spread above 0.2, the machine was busy): {', '.join(noisy)}." if noisy else ""),
                  f"Total wall time {self.seconds / 60:.1f} min; trained this time: "
                  f"{sum(1 for r in self.results for reused in r.reused if not reused)} of "
                  f"{sum(len(r.reused) for r in self.results)} student runs. Train time: mean wall seconds per "
                  "run, and its ratio to the baseline of the same network (runs that share the machine with "
                  "other work time slower).", ""]
        return "\n".join(lines)

    def train_time(self, result: RunResult) -> str:
        mine = sum(result.train_seconds) / len(result.train_seconds)
        base = self.baseline_of[result.run.label].train_seconds
        base_mean = sum(base) / len(base)
        return f"{mine:.0f} ({mine / base_mean:.2f}x)" if mine > 0 and base_mean > 0 else f"{mine:.0f}"

    def latency(self, network: str) -> str:
        cost = self.costs[network]
        return f"{cost.latency_ms:.2f}{' (noisy)' if cost.latency_noisy else ''}"

    # -- json ----------------------------------------------------------------------------------

    def as_json(self) -> dict:
        runs = []
        for result in self.results:
            entry = {"label": result.run.label, "method": result.run.method, "network": result.run.network,
                     "options": result.run.options, "baseline": self.baseline_of[result.run.label].run.label,
                     "seeds": list(result.seeds), "scores": [asdict(s) for s in result.scores],
                     "train_seconds": list(result.train_seconds), "reused": list(result.reused),
                     "summary": {}, "paired": {}}
            for column in self.columns:
                mean, std = mean_and_std([column.value(s) for s in result.scores])
                entry["summary"][column.key] = {"mean": mean, "std": std}
                if not result.run.is_baseline:
                    diff = self.paired(result, column)
                    entry["paired"][column.key] = asdict(diff) | {"resolved": diff.resolved}
            runs.append(entry)
        return {"plan": self.plan.source, "benchmark": asdict(self.plan.benchmark),
                "networks": {name: asdict(net) for name, net in self.plan.networks.items()},
                "teacher": {"network": self.plan.teacher.network, "epochs": self.plan.teacher.epochs,
                            "scores": asdict(self.teacher)},
                "costs": {name: asdict(cost) for name, cost in self.costs.items()},
                "runs": runs, "seconds": self.seconds}

    # -- plot ----------------------------------------------------------------------------------

    def plot_png(self) -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, ax = plt.subplots(figsize=(7, 4.8), dpi=120)
        try:
            teacher_flops = self.costs[self.plan.teacher.network].flops / 1e6
            ax.scatter([teacher_flops], [100 * self.teacher.accuracy], marker="*", s=120, color="black")
            ax.annotate("teacher", (teacher_flops, 100 * self.teacher.accuracy), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
            for result in self.results:
                flops = self.costs[result.run.network].flops / 1e6
                mean, std = mean_and_std([s.accuracy for s in result.scores])
                ax.errorbar([flops], [100 * mean], yerr=[100 * std], fmt="s" if result.run.is_baseline else "o",
                            capsize=3, markersize=5)
                ax.annotate(result.run.label, (flops, 100 * mean), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
            ax.set_xscale("log")
            ax.set_xlabel("MFLOPs per image (PyTorch flop counter)")
            ax.set_ylabel("verification accuracy (%), mean ± std over seeds")
            ax.set_title("Accuracy against compute")
            ax.grid(linestyle="--", linewidth=0.6)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", bbox_inches="tight")
        finally:
            plt.close(figure)
        return buffer.getvalue()

    def write(self, out: Path) -> Path:
        atomic_write_text(out / "compare.md", self.markdown())
        atomic_write_text(out / "compare.json", json.dumps(self.as_json(), indent=1, default=str) + "\n")
        atomic_write_bytes(out / "compare.png", self.plot_png())
        return out / "compare.md"

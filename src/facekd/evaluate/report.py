"""Evaluation reports: a JSON summary, a Markdown table and a ROC curve PNG, each written atomically.

`plot_roc` overlays several models on one figure (e.g. the demo's students against their
teacher); each report of a single evaluation is the same plot with one curve.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from facekd.evaluate.identification import IdentificationResult  # noqa: E402
from facekd.evaluate.ijb import IJBResult  # noqa: E402
from facekd.evaluate.verification import VerificationResult  # noqa: E402
from facekd.fileio import atomic_write_bytes, atomic_write_text  # noqa: E402


@dataclass(frozen=True)
class Curve:
    """One model's ROC: false-accept rates (x) and true-accept rates (y)."""

    fpr: np.ndarray
    tpr: np.ndarray


@dataclass(frozen=True)
class CurveAxes:
    """How a kind of ROC is drawn: axis labels, range and whether x is logarithmic."""

    xlabel: str
    ylabel: str
    xlim: tuple[float, float]
    log_x: bool = True


VERIFICATION_AXES = CurveAxes("False accept rate", "True accept rate", (1e-3, 1.0))
IJB_AXES = CurveAxes("False positive rate", "True positive rate", (1e-6, 0.1))  # insightface's plot range
IDENTIFICATION_AXES = CurveAxes("False positive identification rate", "True positive identification rate", (1e-3, 1.0))


def verification_summary(result: VerificationResult) -> dict:
    if result.threshold_free:
        return {"auc": result.auc, "nfolds": 1, "xnorm": result.xnorm, "num_pairs": result.num_pairs,
                "num_impostors": result.num_impostors}
    return {
        "accuracy": result.accuracy,
        "std": result.std,
        "fold_accuracies": result.fold_accuracies.tolist(),
        "best_thresholds": result.thresholds.tolist(),
        "val_at_far_1e-3": result.val,
        "val_std": result.val_std,
        "far": result.far,
        "xnorm": result.xnorm,
        "auc": result.auc,
        "num_pairs": result.num_pairs,
        "num_impostors": result.num_impostors,
    }


def ijb_summary(result: IJBResult) -> dict:
    return {
        "target": result.target,
        "tar_at_far": {f"{far:.0e}": tar for far, tar in result.tar_at_far.items()},
        "auc": result.auc,
        "num_pairs": result.num_pairs,
        "num_genuine": result.num_genuine,
        "num_templates": result.num_templates,
    }


def identification_summary(result: IdentificationResult) -> dict:
    return {
        "rank_rates": {f"rank-{k}": rate for k, rate in result.rank_rates.items()},
        "tpir_at_fpir": {f"{fpir:g}": tpir for fpir, tpir in result.tpir_at_fpir.items()},
        "fpir_thresholds": {f"{fpir:g}": th for fpir, th in result.fpir_thresholds.items()},
        "num_probes": result.num_probes,
        "num_gallery": result.num_gallery,
        "num_distractors": result.num_distractors,
    }


def ijb_identification_summary(target: str, result: IdentificationResult) -> dict:
    """The 1:N summary of an IJB target: its probe and gallery counts are templates."""
    return {"target": target, **identification_summary(result)}


def verification_curve(result: VerificationResult) -> Curve:
    """The pooled ROC of all pairs (the fold mean is flat where a fold holds one class only)."""
    return Curve(result.pooled_fpr, result.pooled_tpr)


def ijb_curve(result: IJBResult) -> Curve:
    return Curve(result.fpr, result.tpr)


def identification_curve(result: IdentificationResult) -> Curve:
    return Curve(result.fpir, result.tpir)


def markdown_table(title: str, summary: Mapping) -> str:
    """A `## title` section with one `| metric | value |` row per (flattened) summary entry."""
    lines = [f"## {title}", "", "| metric | value |", "|---|---|"]
    for key, value in _flatten(summary):
        lines.append(f"| {key} | {_format(value)} |")
    return "\n".join(lines) + "\n"


def plot_roc(curves: Mapping[str, Curve], path: str | os.PathLike, *, title: str, axes: CurveAxes) -> None:
    """Draw every named curve on one ROC figure and save it as a PNG."""
    figure, ax = plt.subplots(figsize=(6, 5), dpi=120)
    try:
        for name, curve in curves.items():
            fpr, tpr = np.asarray(curve.fpr), np.asarray(curve.tpr)
            keep = fpr > 0 if axes.log_x else np.ones(len(fpr), dtype=bool)  # log axis cannot show 0
            ax.plot(fpr[keep], tpr[keep], lw=1.2, label=name)
        if axes.log_x:
            ax.set_xscale("log")
        ax.set_xlim(*axes.xlim)
        ax.set_xlabel(axes.xlabel)
        ax.set_ylabel(axes.ylabel)
        ax.set_title(title)
        ax.grid(linestyle="--", linewidth=0.6)
        ax.legend(loc="lower right")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", bbox_inches="tight")
    finally:
        plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def write_report(
    out_dir: str | os.PathLike,
    stem: str,
    *,
    title: str,
    model: str,
    summary: Mapping,
    curve: Curve,
    axes: CurveAxes,
) -> dict[str, Path]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>_roc.png` under `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md", "roc": out_dir / f"{stem}_roc.png"}
    document = {"title": title, "model": model, **summary}
    atomic_write_text(paths["json"], json.dumps(_json_safe(document), indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["markdown"], markdown_table(f"{title}: {model}", summary))
    plot_roc({model: curve}, paths["roc"], title=title, axes=axes)
    return paths


def _json_safe(value):
    """NaN (an undefined metric, e.g. VAL on a fold without impostors) becomes JSON null."""
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _flatten(summary: Mapping, prefix: str = ""):
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name} ")
        elif not isinstance(value, list):  # per-fold lists stay in the JSON
            yield name, value


def _format(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.5f}"
    return "" if value is None else str(value)

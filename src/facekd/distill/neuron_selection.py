"""Luo et al. 2016 (MobileID): choose the teacher neurons a student should regress.

Every neuron i of the teacher's top layer is scored as a classifier of every attribute j of an
attribute-labelled set: x_i(j) is its balanced accuracy (TPR + TNR) / 2. A fully connected binary
MRF over "neuron i is selected" is then solved by mean field:

    unary     f(x_i)  = [max_NA x_i - mean_NA x_i] / [max_IA x_i - mean_IA x_i]
    pairwise  psi_ij  = exp(-||x_i - x_j||^2 / (2 h^2)),  h = median pairwise distance
    update    q_i    <- sigmoid(-(f(x_i) - phi0) - lambda * sum_{j != i} q_j psi_ij)

IA are identity-related attributes (gender, hair, nose...), NA identity-unrelated ones
(expression, pose, lighting...). Small f means "more selective to identity than to nuisance";
psi discourages keeping two neurons with the same attribute profile.

Threshold choice for the balanced accuracy: each neuron is split at its median activation over
the attribute set, and both polarities are allowed (x = max(BA, 1 - BA)), because a neuron that
fires for "not male" is as informative as one that fires for "male". The median has no free
parameter fitted to the attribute, so an uninformative neuron scores about 0.5 instead of the
optimistic value a per-attribute best threshold would give on a finite set, and the whole table
is two matrix products.

The transcribed kernel exp(-1/2 ||x_i - x_j||^2) has no length scale. On balanced accuracies in
[0.5, 1] it gives psi between 0.8 and 0.98 for every pair of a realistic 512 x 40 table, so the
pairwise term becomes a uniform penalty on the count and never tells a redundant pair from an
unrelated one. The kernel's bandwidth h is therefore the median pairwise distance (the median
heuristic): a typical pair gets psi = exp(-1/2), a duplicated neuron psi = 1.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.special import expit

from facekd.errors import ConfigError
from facekd.fileio import atomic_write_text

SELECTION_NAME = "selection.json"
SELECTIVITY_NAME = "selectivity.csv"
SUMMARY_NAME = "selection.md"
# Below this, max - mean over the IA attributes counts as zero: the neuron is not selective to
# any identity attribute in particular, and its unary term is capped at UNARY_CAP.
ZERO_SPREAD = 1e-9
UNARY_CAP = 1e6

log = logging.getLogger(__name__)


def balanced_accuracy(activations: np.ndarray, attributes: np.ndarray) -> np.ndarray:
    """Neurons x attributes table of balanced accuracy, each neuron thresholded at its median.

    `activations` is (samples, neurons) float; `attributes` is (samples, attributes) of +1/-1
    (CelebA) or bool. Returns max(BA, 1 - BA), in [0.5, 1].
    """
    activations = np.asarray(activations, dtype=np.float64)
    positive = np.asarray(attributes) > 0
    if activations.ndim != 2 or positive.ndim != 2 or activations.shape[0] != positive.shape[0]:
        raise ValueError(
            f"activations {activations.shape} and attributes {positive.shape} must be (samples, ...) with equal samples"
        )
    fires = (activations > np.median(activations, axis=0)).astype(np.float64)
    labels = positive.astype(np.float64)
    positives = labels.sum(axis=0)
    negatives = labels.shape[0] - positives
    true_positive = fires.T @ labels  # neurons x attributes
    true_negative = (1.0 - fires).T @ (1.0 - labels)
    score = 0.5 * (true_positive / positives + true_negative / negatives)
    return np.maximum(score, 1.0 - score)


def unary_term(selectivity: np.ndarray, identity: Sequence[int], unrelated: Sequence[int]) -> np.ndarray:
    """f(x_i) = [max_NA - mean_NA] / [max_IA - mean_IA], one value per neuron.

    A zero IA spread (all IA accuracies equal) means no identity selectivity: the term is capped
    at UNARY_CAP so the neuron is never preferred.
    """
    ia = selectivity[:, list(identity)]
    na = selectivity[:, list(unrelated)]
    numerator = na.max(axis=1) - na.mean(axis=1)
    denominator = ia.max(axis=1) - ia.mean(axis=1)
    safe = np.where(denominator > ZERO_SPREAD, denominator, 1.0)
    return np.where(denominator > ZERO_SPREAD, np.minimum(numerator / safe, UNARY_CAP), UNARY_CAP)


def pairwise_term(selectivity: np.ndarray) -> tuple[np.ndarray, float]:
    """psi_ij = exp(-||x_i - x_j||^2 / (2 h^2)) with a zero diagonal (j != i), and the bandwidth h.

    h is the median distance over pairs i < j. When every neuron has the same profile (h = 0),
    every pair is fully redundant: psi_ij = 1.
    """
    x = np.asarray(selectivity, dtype=np.float64)
    squared = (x * x).sum(axis=1)
    distance = np.maximum(squared[:, None] + squared[None, :] - 2.0 * (x @ x.T), 0.0)
    upper = np.triu_indices(x.shape[0], k=1)
    bandwidth = float(np.median(np.sqrt(distance[upper]))) if upper[0].size else 0.0
    psi = np.exp(-distance / (2.0 * bandwidth**2)) if bandwidth > 0.0 else np.ones_like(distance)
    np.fill_diagonal(psi, 0.0)
    return psi, bandwidth


@dataclass
class MeanFieldResult:
    q: np.ndarray  # marginal probability that each neuron is selected
    iterations: int
    converged: bool


def mean_field(
    unary: np.ndarray,
    pairwise: np.ndarray,
    *,
    lam: float,
    phi0: float = 1.0,
    damping: float = 0.5,
    iterations: int = 200,
    tolerance: float = 1e-6,
) -> MeanFieldResult:
    """Damped synchronous mean field for the selection MRF, starting from q = 1/2.

    `pairwise` must have a zero diagonal. Each sweep computes the update for every neuron from
    the previous q, then keeps `damping` of the old value: q <- damping*q + (1-damping)*update.
    Stops when no q moves by more than `tolerance`.
    """
    if not 0.0 <= damping < 1.0:
        raise ConfigError(f"neurons.damping: found {damping}, expected 0 <= damping < 1")
    q = np.full(unary.shape[0], 0.5)
    bias = -(np.asarray(unary, dtype=np.float64) - phi0)
    for step in range(1, iterations + 1):
        update = expit(bias - lam * (pairwise @ q))
        new_q = damping * q + (1.0 - damping) * update
        change = float(np.abs(new_q - q).max())
        q = new_q
        if change <= tolerance:
            return MeanFieldResult(q, step, True)
    return MeanFieldResult(q, iterations, False)


def choose_neurons(q: np.ndarray, top_k: int) -> np.ndarray:
    """Indices (ascending) of the `top_k` most probable neurons, or of those with q > 1/2 when top_k is 0."""
    if top_k > 0:
        if top_k > q.shape[0]:
            raise ConfigError(f"neurons.top_k: found {top_k}, expected at most the {q.shape[0]} teacher neurons")
        return np.sort(np.argsort(-q, kind="stable")[:top_k])
    return np.flatnonzero(q > 0.5)


def attribute_indices(names: Sequence[str], wanted: Sequence[str], option: str, source: str) -> list[int]:
    """Positions of `wanted` attributes in the file's attribute `names`, refusing unknown ones."""
    position = {name: i for i, name in enumerate(names)}
    unknown = [name for name in wanted if name not in position]
    if unknown:
        raise ConfigError(f"neurons.{option}: {unknown} are not attributes of {source}; it has {list(names)}")
    if len(wanted) < 2:
        # With one attribute max - mean is identically zero: the unary term would be degenerate.
        raise ConfigError(f"neurons.{option}: found {list(wanted)}, expected at least 2 attribute names")
    return [position[name] for name in wanted]


@dataclass
class NeuronSelection:
    """The result: which neurons, why, and the table it came from."""

    indices: np.ndarray
    q: np.ndarray
    unary: np.ndarray
    selectivity: np.ndarray  # neurons x attributes balanced accuracy
    attribute_names: list[str]
    identity_attributes: list[str]
    unrelated_attributes: list[str]
    iterations: int
    converged: bool
    bandwidth: float  # h of the pairwise kernel

    def to_json(self, extra: dict) -> str:
        return json.dumps(
            {
                "indices": self.indices.tolist(),
                "num_selected": int(self.indices.size),
                "num_neurons": int(self.q.size),
                "q": self.q.tolist(),
                "unary": self.unary.tolist(),
                "identity_attributes": self.identity_attributes,
                "unrelated_attributes": self.unrelated_attributes,
                "mean_field": {"iterations": self.iterations, "converged": self.converged},
                "pairwise_bandwidth": self.bandwidth,
                **extra,
            },
            indent=1,
        )

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["neuron", "selected", *self.attribute_names])
        chosen = np.zeros(self.q.size, dtype=bool)
        chosen[self.indices] = True
        for neuron, row in enumerate(self.selectivity):
            writer.writerow([neuron, int(chosen[neuron]), *(f"{value:.6f}" for value in row)])
        return buffer.getvalue()

    def summary(self) -> str:
        """A short Markdown report: counts, unary statistics and the mean selectivity per attribute."""
        chosen = self.selectivity[self.indices]
        lines = [
            "# Neuron selection (Luo et al. 2016)",
            "",
            f"Selected {self.indices.size} of {self.q.size} teacher neurons "
            f"(mean field: {self.iterations} iterations, {'converged' if self.converged else 'NOT converged'}; "
            f"pairwise bandwidth h = {self.bandwidth:.4f}).",
            f"Unary f(x): median {np.median(self.unary):.4f} over all neurons, "
            + (f"{np.median(self.unary[self.indices]):.4f} over the selected." if self.indices.size else "no neuron selected."),
            "",
            "| attribute | kind | mean balanced accuracy, all | selected |",
            "|---|---|---|---|",
        ]
        for j, name in enumerate(self.attribute_names):
            kind = "IA" if name in self.identity_attributes else "NA" if name in self.unrelated_attributes else "-"
            picked = f"{chosen[:, j].mean():.4f}" if self.indices.size else "-"
            lines.append(f"| {name} | {kind} | {self.selectivity[:, j].mean():.4f} | {picked} |")
        return "\n".join(lines) + "\n"

    def save(self, folder: Path, extra: dict) -> None:
        """Write selection.json, selectivity.csv and selection.md atomically under `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / SELECTIVITY_NAME, self.to_csv())
        atomic_write_text(folder / SUMMARY_NAME, self.summary())
        atomic_write_text(folder / SELECTION_NAME, self.to_json(extra))  # last: marks a complete result


def select_neurons(
    activations: np.ndarray,
    attributes: np.ndarray,
    attribute_names: Sequence[str],
    identity_attributes: Sequence[str],
    unrelated_attributes: Sequence[str],
    *,
    source: str,
    lam: float,
    phi0: float,
    damping: float,
    iterations: int,
    top_k: int,
) -> NeuronSelection:
    """The whole procedure, from activations on the attribute set to the chosen neurons."""
    # An attribute that never varies on this set has no selectivity: leave it out (and say so);
    # each group must keep at least two attributes for the unary term (attribute_indices checks).
    positive = (np.asarray(attributes) > 0).sum(axis=0)
    varying = (positive > 0) & (positive < len(attributes))
    constant = [name for name, keep in zip(attribute_names, varying) if not keep]
    if constant:
        log.warning("%s: attributes %s do not vary on these %d images; left out of the selectivity table",
                    source, constant, len(attributes))
    attribute_names = [name for name, keep in zip(attribute_names, varying) if keep]
    attributes = np.asarray(attributes)[:, varying]
    identity_attributes = [name for name in identity_attributes if name not in constant]
    unrelated_attributes = [name for name in unrelated_attributes if name not in constant]
    identity = attribute_indices(attribute_names, identity_attributes, "identity_attributes", source)
    unrelated = attribute_indices(attribute_names, unrelated_attributes, "unrelated_attributes", source)
    selectivity = balanced_accuracy(activations, attributes)
    unary = unary_term(selectivity, identity, unrelated)
    pairwise, bandwidth = pairwise_term(selectivity)
    result = mean_field(unary, pairwise, lam=lam, phi0=phi0, damping=damping, iterations=iterations)
    indices = choose_neurons(result.q, top_k)
    if indices.size == 0:
        raise ConfigError(
            f"neurons: mean field kept no neuron (max q {result.q.max():.3f}); lower `lam`, raise `phi0`, or set `top_k`"
        )
    return NeuronSelection(
        indices=indices,
        q=result.q,
        unary=unary,
        selectivity=selectivity,
        attribute_names=list(attribute_names),
        identity_attributes=list(identity_attributes),
        unrelated_attributes=list(unrelated_attributes),
        iterations=result.iterations,
        converged=result.converged,
        bandwidth=bandwidth,
    )

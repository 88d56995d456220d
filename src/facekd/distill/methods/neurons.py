"""Luo, Zhu, Liu, Wang, Tang 2016 ("MobileID"): distil the teacher's selected top-layer neurons.

Before training, the teacher's top layer (its embedding, or the pooled features: option `layer`)
is read on an attribute-labelled CelebA-format set and a subset of neurons is chosen by mean field
on the selection MRF (`facekd.distill.neuron_selection`). The student's embedding has exactly that
many dimensions (MobileID's 422-d descriptor is its selected neurons) and regresses them:

    loss_mimic = mean over batch and neurons of (g(I) - f_selected(I))^2

i.e. Luo's 1/(2M) sum_i ||f_i - g_i||^2 divided by K/2 (K selected neurons), a constant factor
that keeps the loss scale independent of K. The paper regresses only; `identity_weight` > 0 adds
the usual margin softmax on the student embedding.

Outputs under the run's out_dir: `selection.json` (indices, q, unary term, attributes used),
`selectivity.csv` (neurons x attributes balanced accuracy) and `selection.md` (a summary). A run
that finds a `selection.json` made from the same teacher, attribute file and options reuses it,
so a resumed run rebuilds the same student.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from facekd.data.training import TrainSamples
from facekd.distill.cache import file_fingerprint
from facekd.distill.celeba_faces import ATTRIBUTES_FILE, CelebAFaces
from facekd.distill.common import build_margin_head
from facekd.distill.distiller import Distiller, DistillSetup
from facekd.distill.neuron_selection import SELECTION_NAME, select_neurons
from facekd.distill.options import option
from facekd.distill.registry import register_distiller
from facekd.distill.teacher import EMBEDDING, POOLED, Teacher, TeacherOutputs
from facekd.errors import ConfigError, DataError
from facekd.models import build_backbone
from facekd.models.heads import MarginClassifier
from facekd.runtime import module_device

ATTRIBUTES_KEY = "attributes"  # DistillSetup.extra_data key of the CelebA-format attribute folder
META_NAME = "meta.json"  # the synthetic benchmark's, next to its celeba/ folder
LAYERS = (EMBEDDING, POOLED)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NeuronOptions:
    layer: str = option(EMBEDDING, "the teacher's top hidden layer: embedding (Luo et al.'s top layer) or pooled",
                        choices=LAYERS)
    identity_attributes: tuple[str, ...] = option((), "IA attribute names; [] = the benchmark's meta.json split")
    unrelated_attributes: tuple[str, ...] = option((), "NA attribute names; [] = the benchmark's meta.json split")
    # The pairwise sum runs over all other neurons, so the penalty is about lam * psi * (number
    # selected): 0.001 costs ~0.25 when 256 of 512 are kept.
    lam: float = option(0.001, "lambda, weight of the pairwise redundancy term (facekd's calibration; the paper's "
                        "value is not given)", low=0)
    phi0: float = option(1.0, "Phi_0: a neuron is favoured when its unary term is below this (Luo et al. Eq. 3)")
    top_k: int = option(0, "keep the K most probable neurons; 0 keeps those with q > 0.5 (mean-field MAP)", low=0)
    iterations: int = option(200, "mean-field sweeps at most", low=1)
    damping: float = option(0.5, "share of the previous q kept at each sweep", low=0, high=1)
    max_images: int = option(0, "attribute images read, evenly spaced over the file; 0 = all", low=0)
    identity_weight: float = option(0.0, "margin-softmax weight; 0 = regression only, as Luo et al.", low=0)
    batch_size: int = option(128, "teacher pass over the attribute set", low=1)


def attribute_split(folder: Path) -> tuple[list[str], list[str]]:
    """The IA and NA attribute names recorded in the synthetic benchmark's meta.json."""
    path = folder.parent / META_NAME
    hint = "name them in the options identity_attributes and unrelated_attributes"
    if not path.is_file():
        raise ConfigError(f"neurons: no identity/unrelated attribute lists given and no {path} to take them from; {hint}")
    try:
        split = json.loads(path.read_text())["attributes"]
        return list(split["identity_related"]), list(split["identity_unrelated"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: no attributes.identity_related/identity_unrelated lists ({exc!r}); {hint}") from None


@torch.no_grad()
def teacher_activations(teacher: Teacher, faces: CelebAFaces, layer: str, *, rows: np.ndarray, batch_size: int,
                        device: torch.device) -> np.ndarray:
    """The teacher's `layer` vectors (images x neurons, float32) on the attribute images `rows`."""
    samples = torch.utils.data.Subset(TrainSamples(faces), rows.tolist())
    rows = []
    for batch in DataLoader(samples, batch_size=batch_size, shuffle=False):
        images = batch["image"].to(device)
        labels = torch.as_tensor(batch["label"]).to(device)
        outputs = teacher.outputs(images, labels, frozenset({layer}))
        rows.append(getattr(outputs, layer).float().cpu().numpy())
    return np.concatenate(rows)


def _fingerprint(teacher: Teacher, attributes_path: Path, options: NeuronOptions) -> dict[str, Any]:
    source = Path(teacher.source)
    return {
        "teacher": file_fingerprint(source) if source.is_file() else teacher.source,
        "attributes": file_fingerprint(attributes_path),
        "options": {k: v for k, v in asdict(options).items() if k not in ("identity_weight", "batch_size")},
    }


def _saved_indices(folder: Path, fingerprint: dict[str, Any]) -> np.ndarray | None:
    path = folder / SELECTION_NAME
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: unreadable neuron selection ({exc}); delete it to select again") from None
    # Round-trip through JSON so tuples compare equal to the lists they were saved as.
    if saved.get("fingerprint") != json.loads(json.dumps(fingerprint)):
        return None
    return np.asarray(saved["indices"], dtype=np.int64)


def choose(setup: DistillSetup, options: NeuronOptions) -> np.ndarray:
    """Select the neurons (or reuse a matching saved selection); returns their indices."""
    folder = setup.extra_data.get(ATTRIBUTES_KEY)
    if folder is None:
        raise ConfigError(f"neurons: needs a CelebA-format attribute folder (extra_data.{ATTRIBUTES_KEY})")
    folder = Path(folder)
    fingerprint = _fingerprint(setup.teacher, folder / ATTRIBUTES_FILE, options)
    saved = _saved_indices(setup.out_dir, fingerprint)
    if saved is not None:
        log.info("neurons: reusing the %d neurons of %s", saved.size, setup.out_dir / SELECTION_NAME)
        return saved
    identity, unrelated = list(options.identity_attributes), list(options.unrelated_attributes)
    if not identity or not unrelated:
        default_identity, default_unrelated = attribute_split(folder)
        identity, unrelated = identity or default_identity, unrelated or default_unrelated
    faces = CelebAFaces(folder, attributes=True)
    count = len(faces) if options.max_images <= 0 else min(options.max_images, len(faces))
    # Evenly spaced: CelebA-format files are often grouped by identity.
    rows = np.unique(np.linspace(0, len(faces) - 1, count).round().astype(np.int64))
    activations = teacher_activations(setup.teacher, faces, options.layer, rows=rows,
                                      batch_size=options.batch_size, device=module_device(setup.teacher.network))
    selection = select_neurons(
        activations, faces.attributes[rows], faces.attribute_names, identity, unrelated,
        source=str(folder / ATTRIBUTES_FILE), lam=options.lam, phi0=options.phi0, damping=options.damping,
        iterations=options.iterations, top_k=options.top_k,
    )
    selection.save(setup.out_dir, {"fingerprint": fingerprint, "layer": options.layer, "images": int(rows.size)})
    log.info(
        "neurons: selected %d of %d teacher neurons (mean field %s after %d sweeps); see %s",
        selection.indices.size, selection.q.size, "converged" if selection.converged else "NOT converged",
        selection.iterations, setup.out_dir / SELECTION_NAME,
    )
    return selection.indices


class MimicLoss(nn.Module):
    """Mean squared error between the student embedding and the teacher's selected neurons."""

    def __init__(self, selected: np.ndarray) -> None:
        super().__init__()
        # Persistent: the checkpoint records which teacher neurons this student reproduces.
        self.register_buffer("selected", torch.as_tensor(selected, dtype=torch.long))

    def forward(self, student: Tensor, teacher_layer: Tensor) -> Tensor:
        return F.mse_loss(student.float(), teacher_layer.float().index_select(1, self.selected))


@register_distiller
class NeuronDistiller(Distiller):
    name = "neurons"
    teacher_needs = frozenset({EMBEDDING})
    Options = NeuronOptions

    def __init__(self, student: nn.Module, teacher: Teacher, *, layer: str, mimic: MimicLoss,
                 head: MarginClassifier | None, identity_weight: float,
                 backbone_spec: tuple[str, dict[str, Any]], input_size: int) -> None:
        self.teacher_needs = frozenset({layer})  # per instance: the embedding or the pooled vector
        super().__init__(student, teacher, backbone_spec=backbone_spec, input_size=input_size)
        self.layer = layer
        self.mimic = mimic
        self.head = head
        self.identity_weight = identity_weight

    @classmethod
    def create(cls, setup: DistillSetup) -> "NeuronDistiller":
        options = setup.options
        setup.teacher.require(options.layer)
        selected = choose(setup, options)
        spec = setup.student
        kwargs = {"input_size": spec.input_size, **spec.kwargs, "num_features": int(selected.size)}
        if spec.kwargs.get("num_features", selected.size) != selected.size:
            log.info("neurons: student num_features set to %d, the number of selected neurons", selected.size)
        student = build_backbone(spec.name, **kwargs)
        head = None
        if options.identity_weight > 0:
            head = build_margin_head(setup, int(selected.size))
        return cls(student, setup.teacher, layer=options.layer, mimic=MimicLoss(selected), head=head,
                   identity_weight=options.identity_weight, backbone_spec=(spec.name, kwargs),
                   input_size=spec.input_size)

    def forward_train(self, images: Tensor, labels: Tensor, teacher: TeacherOutputs) -> dict[str, Tensor]:
        embeddings = self.backbone(images)
        losses = {"loss_mimic": self.mimic(embeddings, getattr(teacher, self.layer))}
        if self.head is not None:
            losses["loss_cls"] = self.identity_weight * self.head(embeddings.float(), labels)["loss"]
        return losses

"""Five-point landmark regression: samples, flips, the landmark head, NME, and the alignment student.

Coordinates. Landmarks are stored in pixels of the stored image, with pixel centres at integer
coordinates (the OpenCV convention of the alignment template). The networks predict *unit*
coordinates u = (x - (W-1)/2) / W and v = (y - (H-1)/2) / H: they do not change when the image is
resized (bilinear, align_corners=False), and a horizontal flip, x -> W-1-x, is simply u -> -u.
A flip also swaps the left/right points: left eye <-> right eye, left <-> right mouth corner.

NME (normalised mean error) of one image = mean over the 5 points of the Euclidean error in pixels,
divided by the distance between the two ground-truth eye centres; the set's NME is the mean over
images. The 300-W convention divides by the outer eye-corner distance, which 5 points do not have.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import Ridge
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from facekd.data.transforms import to_chw_tensor
from facekd.distill.celeba_faces import CelebAFaces
from facekd.distill.distiller import Distiller
from facekd.distill.teacher import EMBEDDING, POOLED, Teacher, TeacherOutputs
from facekd.errors import ConfigError

NUM_POINTS = 5
# Point order: left eye, right eye, nose, left mouth corner, right mouth corner.
MIRROR_ORDER = (1, 0, 2, 4, 3)
LANDMARK_FEATURES = (EMBEDDING, POOLED)


def to_unit(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel landmarks (..., 5, 2) -> unit coordinates (see the module docstring)."""
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0], dtype=np.float64)
    scale = np.array([width, height], dtype=np.float64)
    return ((np.asarray(points, dtype=np.float64) - centre) / scale).astype(np.float32)


def to_pixels(unit: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Inverse of `to_unit` for a batch: unit (N, 5, 2) and image sizes (N, 2) as (height, width)."""
    scale = np.asarray(sizes, dtype=np.float64)[:, None, ::-1]  # (N, 1, 2) as (width, height)
    return np.asarray(unit, dtype=np.float64) * scale + (scale - 1.0) / 2.0


def mirror_unit(points: Tensor) -> Tensor:
    """Unit landmarks (..., 5, 2) of the horizontally flipped image: negate u, swap left and right."""
    mirrored = points[..., list(MIRROR_ORDER), :].clone()
    mirrored[..., 0] = -mirrored[..., 0]
    return mirrored


def mirror_where(points: Tensor, flipped: Tensor) -> Tensor:
    """Mirror the landmarks of the samples whose image the engine flipped."""
    return torch.where(flipped.view(-1, 1, 1), mirror_unit(points), points)


def nme_per_image(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pixel landmarks (N, 5, 2) -> per-image NME, normalised by the ground-truth eye-centre distance."""
    predicted = np.asarray(predicted, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    error = np.linalg.norm(predicted - target, axis=-1).mean(axis=-1)
    inter_ocular = np.linalg.norm(target[:, 0] - target[:, 1], axis=-1)
    return error / inter_ocular


class LandmarkSamples(Dataset):
    """`samples[i] -> {"image", "label", "index", "landmarks": float32 5x2 unit coordinates}` for the engine."""

    def __init__(self, faces: CelebAFaces, rows: np.ndarray) -> None:
        if faces.landmarks is None:
            raise ValueError("LandmarkSamples needs a CelebAFaces built with landmarks=True")
        self.faces = faces
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = faces.labels[self.rows]
        self.num_classes = faces.num_classes

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        row = int(self.rows[index])
        image, label = self.faces[row]
        height, width = image.shape[:2]
        return {
            "image": to_chw_tensor(image),
            "label": label,
            "index": index,
            "landmarks": torch.from_numpy(to_unit(self.faces.landmarks[row], height, width)),
            "size": torch.tensor([height, width]),
        }

    def mean_shape(self) -> np.ndarray:
        """Mean unit landmarks (5, 2) of the set and of its mirror (the flips make it symmetric)."""
        height, width = self.faces[int(self.rows[0])][0].shape[:2]  # one decode: a CelebA set shares one size
        unit = to_unit(self.faces.landmarks[self.rows], height, width)
        both = np.concatenate([unit, mirror_unit(torch.from_numpy(unit)).numpy()])
        return both.mean(axis=0)


def split_rows(count: int, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): the last `holdout` fraction, in file order, is held out."""
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"transfer.holdout: found {holdout}, expected a fraction in (0, 1)")
    held = max(1, int(round(count * holdout)))
    if held >= count:
        raise ConfigError(f"transfer.holdout: {count} landmark images leave none for training at holdout {holdout}")
    rows = np.arange(count)
    return rows[:-held], rows[-held:]


class LandmarkHead(nn.Linear):
    """Features -> 10 unit coordinates; starts at the mean shape so early steps learn the offsets."""

    def __init__(self, in_features: int, mean_shape: np.ndarray) -> None:
        super().__init__(in_features, NUM_POINTS * 2)
        with torch.no_grad():
            self.weight.zero_()
            self.bias.copy_(torch.as_tensor(mean_shape, dtype=torch.float32).reshape(-1))

    def forward(self, features: Tensor) -> Tensor:
        return super().forward(features.float()).view(-1, NUM_POINTS, 2)


def teacher_features(outputs: TeacherOutputs, kind: str) -> Tensor:
    return outputs.embedding if kind == EMBEDDING else outputs.pooled


def student_features(network: nn.Module, x: Tensor, kind: str) -> Tensor:
    return network(x) if kind == EMBEDDING else network.forward_features(x)["pooled"]


def _loader(samples: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(samples, batch_size=batch_size, shuffle=False, num_workers=0)


@torch.no_grad()
def fit_teacher_head(
    teacher: Teacher, samples: LandmarkSamples, kind: str, *, ridge: float, batch_size: int, device: torch.device
) -> LandmarkHead:
    """Fit the frozen teacher's landmark head by ridge regression on its features.

    Our teachers are recognition networks, not the alignment network of Wang et al., so the head
    that gives the teacher's landmark predictions is fitted (closed form, exact) before the student
    is distilled. Every image is used as stored and mirrored, matching the engine's flips.
    """
    features, targets = [], []
    for batch in _loader(samples, batch_size):
        images = batch["image"].to(device)
        labels = torch.as_tensor(batch["label"]).to(device)
        for flip in (False, True):
            shown = images.flip(-1) if flip else images
            outputs = teacher.outputs(shown, labels, frozenset({kind}))
            features.append(teacher_features(outputs, kind).float().cpu().numpy())
            points = mirror_unit(batch["landmarks"]) if flip else batch["landmarks"]
            targets.append(points.reshape(len(points), -1).numpy())
    x, y = np.concatenate(features), np.concatenate(targets)
    model = Ridge(alpha=ridge).fit(x, y)
    head = LandmarkHead(x.shape[1], np.zeros((NUM_POINTS, 2)))
    head.weight.copy_(torch.from_numpy(model.coef_).float())
    head.bias.copy_(torch.from_numpy(np.asarray(model.intercept_)).float())
    return head.requires_grad_(False)


class AlignmentStudent(Distiller):
    """Stage 2 of `transfer`: landmark regression against the ground truth and the teacher.

    loss_landmarks = ||y_s - y_gt||^2 and loss_teacher = beta * ||y_s - y_t||^2, squared Euclidean
    norms over the 10 unit coordinates, averaged over the batch.

    The student's head reads L2-normalised features. A recognition embedding's norm is 10 to 10,000,
    and a linear regression on it is stable under SGD only for lr below about 1 / norm^2: at the
    recipe's lr (0.1) the raw head diverged (held-out NME in the millions, measured). Normalised, the
    head's step size no longer depends on the norm. (The teacher's head is a closed-form ridge fit
    and reads its raw features.)
    """

    name = "transfer-alignment"
    # The teacher cache is keyed by the training set; the landmark images are another set.
    cacheable = False

    def __init__(
        self, student: nn.Module, teacher: Teacher, *, head: LandmarkHead, teacher_head: LandmarkHead,
        features: str, beta: float, backbone_spec, input_size: int,
    ) -> None:
        if features not in LANDMARK_FEATURES:
            raise ConfigError(f"transfer.landmark_features: found {features!r}, expected one of {list(LANDMARK_FEATURES)}")
        self.teacher_needs = frozenset({features})  # per instance: embedding or pooled features
        super().__init__(student, teacher, backbone_spec=backbone_spec, input_size=input_size)
        self.features = features
        self.head = head
        self.teacher_head = teacher_head.requires_grad_(False)  # checkpointed with the task, never trained
        self.beta = beta

    def predict(self, x: Tensor) -> Tensor:
        return self.head(F.normalize(student_features(self.backbone, x, self.features).float(), dim=1))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        teacher = self.teacher_outputs(batch)
        target = mirror_where(batch["landmarks"].float(), batch["flipped"])
        predicted = self.predict(self.student_input(batch["image"]))
        with torch.no_grad():
            taught = self.teacher_head(teacher_features(teacher, self.features))
        return {
            "loss_landmarks": (predicted - target).square().sum(dim=(1, 2)).mean(),
            "loss_teacher": self.beta * (predicted - taught).square().sum(dim=(1, 2)).mean(),
        }


@torch.no_grad()
def landmark_nme(
    predict, samples: LandmarkSamples, *, batch_size: int, device: torch.device
) -> float:
    """Mean NME over `samples` of `predict(uint8 images on device) -> unit landmarks (N, 5, 2)`."""
    values = []
    for batch in _loader(samples, batch_size):
        predicted = predict(batch["image"].to(device)).float().cpu().numpy()
        sizes = batch["size"].numpy()
        values.append(nme_per_image(to_pixels(predicted, sizes), to_pixels(batch["landmarks"].numpy(), sizes)))
    return float(np.concatenate(values).mean())


def teacher_predictor(teacher: Teacher, head: LandmarkHead, kind: str):
    def predict(images: Tensor) -> Tensor:
        labels = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        return head(teacher_features(teacher.outputs(images, labels, frozenset({kind})), kind))

    return predict


def student_predictor(task: AlignmentStudent):
    def predict(images: Tensor) -> Tensor:
        return task.predict(task.student_input(images))

    return predict


def mean_shape_predictor(mean_shape: np.ndarray):
    """The baseline every landmark model must beat: the mean shape for every face."""
    shape = torch.as_tensor(mean_shape, dtype=torch.float32)

    def predict(images: Tensor) -> Tensor:
        return shape.expand(images.shape[0], -1, -1)

    return predict


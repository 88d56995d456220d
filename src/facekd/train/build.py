"""From a config to the objects the engine needs: training data, the classification task, evaluators."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from facekd.data import RecordIODataset
from facekd.data.folders import ImageFolderDataset, ListFileDataset
from facekd.data.training import FaceDataset, TrainSamples
from facekd.errors import ConfigError
from facekd.models import build_backbone
from facekd.models.heads import CombinedMargin, MarginClassifier
from facekd.models.loading import load_weights_into
from facekd.models.partial_fc import PartialFC
from facekd.train.config import DataConfig, ExperimentConfig
from facekd.train.engine import Evaluator
from facekd.train.task import ClassificationTask


def data_format(data: DataConfig) -> str:
    """`rec` for a folder with train.rec or a .rec file, `folder` for other folders, `list` for files."""
    if data.format != "auto":
        return data.format
    path = Path(data.train)
    if path.suffix == ".rec" or (path / "train.rec").is_file():
        return "rec"
    return "folder" if path.is_dir() else "list"


def open_face_dataset(data: DataConfig) -> FaceDataset:
    if not data.train:
        raise ConfigError("data.train: empty, expected a RecordIO folder, an image folder or a list file")
    kind = data_format(data)
    if kind == "rec":
        return RecordIODataset(data.train, skip_bad=data.skip_bad)
    if data.skip_bad:
        raise ConfigError(f"data.skip_bad: true, but {data.train} is an image {kind}; only RecordIO data can skip "
                          "bad records, remove or fix the bad images instead")
    if kind == "folder":
        return ImageFolderDataset(data.train)
    return ListFileDataset(data.train)


def open_train_samples(data: DataConfig) -> TrainSamples:
    return TrainSamples(open_face_dataset(data))


def build_margin(config: ExperimentConfig) -> CombinedMargin:
    head = config.head
    return CombinedMargin(head.s, head.m1, head.m2, head.m3)


def build_head(config: ExperimentConfig, embedding_size: int, num_classes: int) -> nn.Module:
    """Partial FC when asked for (it shards under torch.distributed), else the full margin classifier."""
    check_sampling(config.head)
    if config.head.partial_fc:
        return PartialFC(embedding_size, num_classes, build_margin(config), sample_rate=config.head.sample_rate)
    return MarginClassifier(embedding_size, num_classes, build_margin(config))


def check_sampling(head) -> None:
    """Sampling negative classes is a Partial FC feature: refuse a sample rate without it."""
    if head.sample_rate != 1.0 and not head.partial_fc:
        raise ConfigError(f"head.sample_rate is {head.sample_rate}, but sampling needs head.partial_fc: true")


def backbone_options(config: ExperimentConfig) -> dict:
    if "input_size" in config.model.kwargs:
        raise ConfigError("model.kwargs.input_size: set model.input_size instead")
    return {**config.model.kwargs, "input_size": config.model.input_size}


def build_classification_task(config: ExperimentConfig, num_classes: int) -> ClassificationTask:
    options = backbone_options(config)
    try:
        backbone = build_backbone(config.model.backbone, **options)
    except TypeError as exc:
        raise ConfigError(f"model.kwargs: {exc}") from None
    if config.model.init:
        load_weights_into(config.model.init, backbone)
    head = build_head(config, options.get("num_features", 512), num_classes)
    return ClassificationTask(backbone, head, config.model.input_size,
                              backbone_spec=(config.model.backbone, backbone.spec.kwargs))


def bin_evaluator(config: ExperimentConfig, device: torch.device) -> Evaluator | None:
    """Accuracy (flip-summed, insightface's 10 folds) on every `data.val_bins` set, or None."""
    if not config.data.val_bins:
        return None
    from facekd.evaluate.embed import evaluate_bin

    def evaluate(backbone: nn.Module) -> dict[str, float]:
        scores = {}
        for path in config.data.val_bins:
            result = evaluate_bin(backbone, path, batch_size=config.data.val_batch_size, device=device,
                                  input_size=config.model.input_size, progress=False)
            scores[Path(path).stem] = float(result.accuracy)
        return scores

    return evaluate

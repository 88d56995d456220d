"""`model.init`: start a trained or distilled student from given weights."""

from __future__ import annotations

import pytest
import torch

from facekd.cli import main
from facekd.errors import CheckpointError
from facekd.models import build_backbone
from facekd.train.build import build_classification_task
from facekd.train.config import ExperimentConfig
from test_distill_runner import TINY, distill_args, tiny_data  # noqa: F401  (the fixture)


def tiny_config(init) -> ExperimentConfig:
    config = ExperimentConfig()
    config.model.backbone, config.model.input_size = "r18", 16
    config.model.kwargs = {k: v for k, v in TINY.items() if k != "input_size"}
    config.model.init = str(init)
    return config


@pytest.mark.parametrize("layout", ["backbone.pth", "checkpoint"])
def test_train_task_starts_from_the_given_weights(tmp_path, layout):
    torch.manual_seed(1)
    source = build_backbone("r18", **TINY)
    state = source.state_dict()
    if layout == "checkpoint":  # facekd's checkpoint layout, written by hand
        state = {"facekd": 1, "backbone_name": "r18", "backbone_kwargs": dict(TINY), "backbone": state}
    torch.save(state, tmp_path / "init.pt")
    task = build_classification_task(tiny_config(tmp_path / "init.pt"), num_classes=4)
    for name, value in source.state_dict().items():
        assert torch.equal(task.backbone.state_dict()[name], value), name


def test_weights_of_another_architecture_name_the_file(tmp_path):
    torch.save(build_backbone("mbf", num_features=16).state_dict(), tmp_path / "mbf.pth")
    with pytest.raises(CheckpointError) as error:
        build_classification_task(tiny_config(tmp_path / "mbf.pth"), num_classes=4)
    message = str(error.value)
    assert str(tmp_path / "mbf.pth") in message and "do not fit r18" in message and "\n" not in message


def test_distilled_student_starts_from_the_given_weights(tiny_data, tmp_path):  # noqa: F811
    torch.manual_seed(2)
    source = build_backbone("r18", **TINY)
    torch.save(source.state_dict(), tmp_path / "init.pth")
    # lr 0: the parameters stay where model.init put them (BatchNorm statistics still move).
    args = distill_args(tiny_data, "fitnet", tmp_path / "run", "--set", f"model.init={tmp_path / 'init.pth'}",
                        "--set", "optim.lr=0.0", "--set", "train.epochs=1", "--set", "optim.weight_decay=0.0")
    assert main(args) == 0
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["backbone"]
    for name, value in source.named_parameters():
        assert torch.equal(trained[name], value.detach()), name


def test_pipeline_methods_refuse_model_init(tiny_data, tmp_path, capsys):  # noqa: F811
    torch.save(build_backbone("r18", **TINY).state_dict(), tmp_path / "init.pth")
    args = distill_args(tiny_data, "transfer", tmp_path / "run", "--set", f"model.init={tmp_path / 'init.pth'}")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "model.init: method 'transfer' initialises the student of each stage itself" in err
    assert len(err.splitlines()) == 1

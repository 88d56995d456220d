"""Backbones: insightface key/shape manifests, forward computation, stage interface, options, loading."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from facekd.errors import CheckpointError, ConfigError
from facekd.models import backbone_spec, build_backbone
from facekd.models.loading import load_backbone, save_backbone
from facekd.models.manifest import best_fit, build_manifest

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def meta_state(name: str, **kwargs) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return build_backbone(name, **kwargs).state_dict()


def parameter_count(state: dict[str, torch.Tensor]) -> int:
    """Parameters counted from state_dict shapes (frozen features.weight included), as formats.md."""
    return sum(v.numel() for k, v in state.items() if not k.endswith(BUFFER_SUFFIXES))


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial statistics and affine terms so that eval-mode forward tests see them."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
            if module.weight.requires_grad:
                module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)


# --- manifests --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, keys, params", [("r50", 475, 43_590_848), ("r100", 925, 65_156_160)])
def test_iresnet_manifest_matches_insightface(name, keys, params):
    state = meta_state(name)
    assert len(state) == keys
    assert len([k for k in state if not k.endswith("num_batches_tracked")]) == (396 if name == "r50" else 771)
    assert parameter_count(state) == params


@pytest.mark.parametrize("name, blocks", [
    ("r18", [2, 2, 2, 2]), ("r34", [3, 4, 6, 3]), ("r50", [3, 4, 14, 3]),
    ("r100", [3, 13, 30, 3]), ("r200", [6, 26, 60, 6]),
])
def test_iresnet_blocks_per_stage(name, blocks):
    state = meta_state(name)
    found = [1 + max(int(m.group(1)) for k in state if (m := re.match(rf"layer{s}\.(\d+)\.", k)))
             for s in range(1, 5)]
    assert found == blocks


def test_iresnet_key_shapes():
    state = meta_state("r50")
    expected = {
        "conv1.weight": (64, 3, 3, 3),
        "prelu.weight": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.0.downsample.0.weight": (64, 64, 1, 1),
        "layer2.0.bn1.weight": (64,),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_var": (128,),
        "layer3.13.conv2.weight": (256, 256, 3, 3),
        "layer4.2.bn3.bias": (512,),
        "bn2.weight": (512,),
        "fc.weight": (512, 25088),
        "fc.bias": (512,),
        "features.weight": (512,),
        "features.running_mean": (512,),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert "layer1.1.downsample.0.weight" not in state


def test_mbf_manifest_matches_insightface():
    state = meta_state("mbf")
    assert len(state) == 333
    assert round(parameter_count(state) / 1e6, 2) == 2.06
    expected = {
        "layers.0.layers.0.weight": (128, 3, 3, 3),
        "layers.1.layers.0.weight": (128, 2, 3, 3),  # 64 groups, not depthwise
        "layers.2.layers.0.layers.0.weight": (128, 128, 1, 1),
        "layers.2.layers.1.layers.0.weight": (128, 1, 3, 3),
        "layers.4.layers.2.layers.0.weight": (256, 256, 1, 1),
        "layers.6.layers.0.layers.0.weight": (512, 256, 1, 1),
        "layers.7.layers.1.layers.2.layers.1.weight": (256,),
        "conv_sep.layers.0.weight": (512, 256, 1, 1),
        "features.layers.0.layers.0.weight": (512, 1, 7, 7),
        "features.layers.2.weight": (512, 512),
        "features.layers.3.running_var": (512,),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert "layers.7.layers.2.layers.0.layers.0.weight" not in state  # 2 blocks in the last stage


def test_mbf_large_manifest():
    state = meta_state("mbf_large")
    assert round(parameter_count(state) / 1e6, 2) == 6.31
    # blocks[0] == 2: layers.1 is a residual stack with 128-wide expansion
    assert tuple(state["layers.1.layers.1.layers.0.layers.0.weight"].shape) == (128, 256, 1, 1)
    assert tuple(state["layers.5.layers.11.layers.2.layers.0.weight"].shape) == (512, 256, 1, 1)
    assert tuple(state["conv_sep.layers.0.weight"].shape) == (512, 512, 1, 1)


# --- forward computation, written independently from formats.md -------------------------------

def bn(x, state, prefix):
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-5)


def conv(x, weight, stride=1):
    groups = x.shape[1] // weight.shape[1]
    return F.conv2d(x, weight, stride=stride, padding=weight.shape[-1] // 2, groups=groups)


def reference_iresnet(state, x):
    x = F.prelu(bn(conv(x, state["conv1.weight"]), state, "bn1"), state["prelu.weight"])
    for s in range(1, 5):
        b = 0
        while f"layer{s}.{b}.bn1.weight" in state:
            p = f"layer{s}.{b}"
            out = conv(bn(x, state, f"{p}.bn1"), state[f"{p}.conv1.weight"])
            out = F.prelu(bn(out, state, f"{p}.bn2"), state[f"{p}.prelu.weight"])
            out = bn(conv(out, state[f"{p}.conv2.weight"], stride=2 if b == 0 else 1), state, f"{p}.bn3")
            shortcut = x
            if b == 0:
                shortcut = bn(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=2), state, f"{p}.downsample.1")
            x = out + shortcut
            b += 1
    x = torch.flatten(bn(x, state, "bn2"), 1)
    x = F.linear(x, state["fc.weight"], state["fc.bias"])
    return bn(x, state, "features")


def reference_mbf(state, x):
    def conv_block(x, p, stride=1, act=True):
        x = bn(conv(x, state[f"{p}.layers.0.weight"], stride), state, f"{p}.layers.1")
        return F.prelu(x, state[f"{p}.layers.2.weight"]) if act else x

    def depthwise(x, p, stride):
        x = conv_block(x, f"{p}.layers.0")
        x = conv_block(x, f"{p}.layers.1", stride)
        return conv_block(x, f"{p}.layers.2", act=False)

    def residual(x, p):
        b = 0
        while f"{p}.layers.{b}.layers.0.layers.0.weight" in state:
            x = x + depthwise(x, f"{p}.layers.{b}", 1)
            b += 1
        return x

    x = conv_block(x, "layers.0", stride=2)
    x = conv_block(x, "layers.1") if "layers.1.layers.0.weight" in state else residual(x, "layers.1")
    for i in (2, 4, 6):
        x = residual(depthwise(x, f"layers.{i}", 2), f"layers.{i + 1}")
    x = conv_block(x, "conv_sep")
    x = bn(F.conv2d(x, state["features.layers.0.layers.0.weight"], groups=x.shape[1]),
           state, "features.layers.0.layers.1")
    x = F.linear(torch.flatten(x, 1), state["features.layers.2.weight"])
    return bn(x, state, "features.layers.3")


@pytest.mark.parametrize("name, width, reference", [
    ("r18", 0.25, reference_iresnet), ("mbf", 1.0, reference_mbf), ("mbf_large", 0.25, reference_mbf),
])
def test_forward_matches_documented_computation(name, width, reference):
    torch.manual_seed(0)
    batch = 2
    model = build_backbone(name, width=width).eval()
    randomise_batchnorm(model)
    x = torch.randn(batch, 3, 112, 112)
    with torch.no_grad():
        got = model(x)
        expected = reference(model.state_dict(), x)
    assert got.shape == (batch, 512)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_iresnet_initialisation():
    model = build_backbone("r18")
    assert not model.features.weight.requires_grad
    assert torch.all(model.features.weight == 1)
    weight = model.layer3[0].conv1.weight
    assert abs(weight.std().item() - 0.1) < 0.005 and abs(weight.mean().item()) < 0.005


def test_mbf_initialisation_is_kaiming_fan_out():
    model = build_backbone("mbf")
    weight = model.layers[4].layers[0].layers[0].weight  # 1x1, 256 out channels
    expected_std = math.sqrt(2.0 / (256 * 1 * 1))
    assert abs(weight.std().item() / expected_std - 1) < 0.05
    linear = model.features.layers[2].weight  # fan_out = 512
    assert abs(linear.std().item() / math.sqrt(2.0 / 512) - 1) < 0.05


# --- stage interface ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs, sizes", [
    ("r18", {"width": 0.125}, [56, 28, 14, 7]),
    ("mbf", {"width": 0.25}, [56, 28, 14, 7]),
])
def test_stagewise_forward_equals_forward(name, kwargs, sizes):
    torch.manual_seed(1)
    model = build_backbone(name, **kwargs).eval()
    randomise_batchnorm(model)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        full = model(x)
        features = model.forward_features(x)
        stages = features["stages"]
        assert [f.shape[-1] for f in stages] == sizes
        assert [f.shape[1] for f in stages] == list(model.stage_channels)
        torch.testing.assert_close(features["embedding"], full, rtol=0, atol=0)
        torch.testing.assert_close(model.forward_from(0, model.stem(x)), full, rtol=0, atol=0)
        for i in range(1, 5):
            torch.testing.assert_close(model.forward_from(i, stages[i - 1]), full, rtol=0, atol=0)


def test_pooled_vector_is_what_the_embedding_layer_sees():
    model = build_backbone("r18", width=0.125).eval()
    randomise_batchnorm(model)
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 3, 112, 112))
        assert features["pooled"].shape == (2, 64 * 7 * 7)
        torch.testing.assert_close(model.features(model.fc(features["pooled"])), features["embedding"])


# --- options -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["r18", "mbf"])
def test_fcn_runs_one_set_of_weights_at_any_resolution(name):
    torch.manual_seed(2)
    model = build_backbone(name, fcn=True, width=0.125).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    low = build_backbone(name, fcn=True, width=0.125, input_size=64)
    assert {k: tuple(v.shape) for k, v in low.state_dict().items()} == shapes
    with torch.no_grad():
        for size in (112, 96, 64):
            out = model(torch.randn(2, 3, size, size))
            assert out.shape == (2, 512) and torch.isfinite(out).all()


def test_fcn_pooling_is_global_average():
    model = build_backbone("mbf", fcn=True, width=0.25).eval()
    randomise_batchnorm(model)
    with torch.no_grad():
        x = torch.randn(2, 3, 96, 96)
        sep = model.conv_sep(model.forward_features(x)["stages"][3])
        pooled = model.forward_features(x)["pooled"]
        expected = bn(sep.mean(dim=(2, 3), keepdim=True), model.state_dict(), "features.layers.0.layers.1")
        torch.testing.assert_close(pooled, expected.flatten(1))


def test_non_fcn_sizes_head_for_input_size_and_rejects_others():
    r18 = build_backbone("r18", width=0.25, input_size=96)
    assert tuple(r18.fc.weight.shape) == (512, 128 * 6 * 6)
    mbf = build_backbone("mbf", input_size=80)
    assert tuple(mbf.features.layers[0].layers[0].weight.shape) == (512, 1, 5, 5)
    with torch.no_grad():
        assert r18.eval()(torch.randn(1, 3, 96, 96)).shape == (1, 512)
        with pytest.raises(ConfigError, match="6x6 final map got 7x7"):
            r18(torch.randn(1, 3, 112, 112))


def test_width_and_depth_multipliers():
    state = meta_state("r50", width=0.5, depth=0.5)
    blocks = [1 + max(int(m.group(1)) for k in state if (m := re.match(rf"layer{s}\.(\d+)\.", k)))
              for s in range(1, 5)]
    assert blocks == [2, 2, 7, 2]  # round(1.5), 2, 7, round(1.5); at least one each
    assert tuple(state["layer2.0.conv1.weight"].shape) == (64, 32, 3, 3)
    assert tuple(state["fc.weight"].shape) == (512, 256 * 49)
    # 64 * 0.3 = 19.2 rounds to a multiple of 8 not more than 10% below: 24
    assert tuple(meta_state("r18", width=0.3)["conv1.weight"].shape) == (24, 3, 3, 3)
    assert tuple(meta_state("r18", depth=0.1)["layer1.0.conv1.weight"].shape) == (64, 64, 3, 3)
    mbf = meta_state("mbf", width=0.5, depth=2.0)
    assert tuple(mbf["layers.0.layers.0.weight"].shape) == (64, 3, 3, 3)
    assert "layers.1.layers.1.layers.0.layers.0.weight" in mbf  # 2 blocks: a residual stack now
    assert tuple(mbf["conv_sep.layers.0.weight"].shape) == (256, 128, 1, 1)
    assert tuple(meta_state("mbf", width=0.5)["layers.1.layers.0.weight"].shape) == (64, 2, 3, 3)


def test_fp16_runs_under_cpu_autocast():
    torch.manual_seed(3)
    model = build_backbone("r18", width=0.125, fp16=True).eval()
    randomise_batchnorm(model)
    reference = build_backbone("r18", width=0.125).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features["stages"][0].dtype == torch.bfloat16
        assert features["embedding"].dtype == torch.float32
        cos = F.cosine_similarity(features["embedding"], reference(x))
        assert torch.all(cos > 0.99)
        mbf = build_backbone("mbf", width=0.125, fp16=True).eval()
        assert mbf(x).dtype == torch.float32


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError, match="found 'r51', expected one of r18"):
        build_backbone("r51")
    with pytest.raises(ConfigError, match="width"):
        build_backbone("r18", width=0)
    with pytest.raises(ConfigError, match="dropout"):
        build_backbone("mbf", dropout=1.0)


def test_spec_rebuilds_the_model():
    model = build_backbone("mbf", width=0.5, fcn=True, num_features=128)
    name, kwargs = backbone_spec(model)
    rebuilt = build_backbone(name, **kwargs)
    assert name == "mbf" and kwargs["width"] == 0.5 and kwargs["fcn"] is True
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


# --- loading -------------------------------------------------------------------------------------

def test_load_plain_state_dict_recognises_architecture(tmp_path):
    torch.manual_seed(4)
    model = build_backbone("mbf", num_features=128).eval()
    randomise_batchnorm(model)
    path = tmp_path / "backbone.pth"
    save_backbone(path, model)
    assert set(torch.load(path, weights_only=True)) == set(model.state_dict())
    loaded = load_backbone(path)
    assert backbone_spec(loaded)[0] == "mbf" and backbone_spec(loaded)[1]["num_features"] == 128
    assert not loaded.training
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_load_ddp_prefix_and_wrapper(tmp_path):
    model = build_backbone("r18", width=0.125).eval()
    randomise_batchnorm(model)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    path = tmp_path / "ddp.pth"
    torch.save(wrapped, path)
    loaded = load_backbone(path, "r18", width=0.125)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_load_facekd_checkpoint(tmp_path):
    model = build_backbone("r18", width=0.125, num_features=64, fcn=True).eval()
    randomise_batchnorm(model)
    name, kwargs = backbone_spec(model)
    path = tmp_path / "checkpoint.pt"
    torch.save({"facekd": 1, "backbone_name": name, "backbone_kwargs": kwargs,
                "backbone": model.state_dict(), "step": 10}, path)
    loaded = load_backbone(path)
    assert backbone_spec(loaded) == (name, kwargs)
    with pytest.raises(CheckpointError, match="holds a r18 backbone, but mbf was requested"):
        load_backbone(path, "mbf")


def test_wrong_architecture_names_the_one_that_fits(tmp_path):
    path = tmp_path / "r100.pth"
    save_backbone(path, build_backbone("r100", width=0.125))
    with pytest.raises(CheckpointError) as info:
        load_backbone(path, "r50", width=0.125)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert "925 keys in file, 475 in model" in message
    assert "0 missing" in message and "450 unexpected (layer2.4.bn1.weight" in message
    assert message.endswith("keys fit r100, not r50")


def test_best_fit_recognises_full_size_manifests():
    for name in ("r18", "r34", "r50", "r100", "r200", "mbf", "mbf_large"):
        fit, diff = best_fit(build_manifest(name))
        assert (fit, diff.count) == (name, 0)
    fit, _ = best_fit(build_manifest("r50", num_features=256, fcn=True))
    assert fit == "r50"


def test_unreadable_files_raise_checkpoint_error(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth: cannot be read as weights"):
        load_backbone(garbage)
    pickled = tmp_path / "module.pth"
    torch.save(build_backbone("r18", width=0.125), pickled)
    with pytest.raises(CheckpointError, match="save model.state_dict"):
        load_backbone(pickled)
    with pytest.raises(CheckpointError, match="no such file"):
        load_backbone(tmp_path / "missing.pth")
    unknown = tmp_path / "unknown.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, unknown)
    with pytest.raises(CheckpointError, match="no known backbone fits these 1 keys"):
        load_backbone(unknown)

"""deploy.profile: FLOPs against hand counts, latency and memory fields, ratios, the CLI's table."""

from __future__ import annotations

import dataclasses
import json
import statistics
import time

import pytest
import torch
from torch import nn

from facekd.cli import main
from facekd.deploy.profile import (
    MIB,
    LatencySettings,
    Timing,
    count_flops,
    markdown_table,
    median_ms,
    peak_forward_memory_mb,
    profile_model,
)
from facekd.errors import ConfigError


class TinyNet(nn.Module):
    """conv 3->4 (3x3, stride 1, no padding), ReLU, global pool, linear 4->5 with bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class FixedInput(nn.Module):
    """Flattens an 8x8 map into a linear layer, so it runs only at 8 px (like a non-FCN backbone)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("size", [8, 16])
def test_flops_match_a_hand_count(size):
    out = size - 2
    conv_macs = 4 * out * out * (3 * 3 * 3)  # every output value: 3x3 kernel over 3 channels
    linear_macs = 4 * 5
    assert count_flops(TinyNet(), size) == 2 * (conv_macs + linear_macs)


def test_depthwise_and_strided_convolutions_are_counted_per_group():
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.Conv2d(8, 16, 1))
    # 1x1 3->8 on 16x16 (256 positions); stride 2 -> 8x8: depthwise 8 maps x 64 positions x 9 taps
    # (one input channel per group); pointwise 16 x 64 x 8.
    assert count_flops(net, 16) == 2 * (8 * 256 * 3 + 8 * 64 * 9 + 16 * 64 * 8)


def test_median_ms_runs_warmup_then_repeats_and_takes_the_median():
    # Warm-up calls are slow (as a first pass is), then 5 timed calls of 1, 300, 2, 20 and 400 ms:
    # the median is the 20 ms call (the mean would be 145), whatever the warm-up cost. Sleeps only overrun.
    delays = iter([0.5, 0.5, 0.001, 0.300, 0.002, 0.020, 0.400])
    calls = []

    def run():
        calls.append(1)
        time.sleep(next(delays))

    assert 20.0 <= median_ms(run, warmup=2, repeats=5) < 100.0
    assert len(calls) == 7
    with pytest.raises(ConfigError):
        median_ms(lambda: None, warmup=0, repeats=0)


def test_peak_memory_covers_the_activations():
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)).eval()
    batch = torch.zeros(4, 3, 32, 32)
    one_map = 4 * 64 * 32 * 32 * 4 / MIB  # one 4x64x32x32 float32 activation
    peak = peak_forward_memory_mb(net, batch)
    # At least the input of the last conv and its output are alive together; far less than 10 maps.
    assert 2 * one_map <= peak < 10 * one_map


def test_fast_profile_fields():
    net = TinyNet()
    profile = profile_model(net, "tiny", 16, LatencySettings(warmup=1, repeats=3, fast=True))
    assert profile.parameters == 3 * 4 * 9 + 4 + 4 * 5 + 5
    assert profile.size_mb == pytest.approx(profile.parameters * 4 / MIB)
    assert profile.flops == count_flops(net, 16) and profile.embedding_size == 5
    assert profile.torch_b1_ms > 0 and profile.peak_memory_b1_mb > 0
    assert profile.torch_large_ms is None and profile.ort_b1_ms is None and profile.ort_large_ms is None


def test_full_profile_measures_onnxruntime_and_the_large_batch():
    settings = LatencySettings(warmup=1, repeats=2, large_batch=8, large_batch_warmup=1, large_batch_repeats=1)
    profile = profile_model(TinyNet(), "tiny", 16, settings)
    assert profile.large_batch == 8
    assert profile.torch_large_ms > 0 and profile.ort_b1_ms > 0 and profile.ort_large_ms > 0
    assert profile.peak_memory_large_mb > profile.peak_memory_b1_mb


def test_timing_spread_marks_a_disturbed_measurement():
    steady = Timing((10.0, 10.2, 9.9, 10.1, 10.0, 10.3, 9.8, 10.0))
    disturbed = Timing((10.0, 25.0, 9.9, 31.0, 10.0, 12.0, 40.0, 10.0))
    assert steady.median_ms == pytest.approx(10.0) and not steady.noisy
    low, _, high = statistics.quantiles(disturbed.times_ms, n=4)  # 10.0 and 29.5
    assert disturbed.median_ms == pytest.approx(11.0)
    assert disturbed.spread == pytest.approx((high - low) / 11.0) and disturbed.noisy


def test_ratios_and_table():
    settings = LatencySettings(warmup=0, repeats=1, fast=True)
    big = profile_model(TinyNet(), "big", 16, settings)
    small = profile_model(TinyNet(), "small", 8, settings)
    ratios = small.ratios_to(big)
    assert ratios["flops"] == pytest.approx(small.flops / big.flops)
    timed = dataclasses.replace(small, torch_b1_ms=1.5).ratios_to(dataclasses.replace(big, torch_b1_ms=6.0))
    assert timed["torch_b1_ms"] == pytest.approx(0.25)
    assert ratios["ort_b1_ms"] is None
    table = markdown_table([big, small], big).splitlines()
    assert len(table) == 4 and table[0].count("|") == table[1].count("|") == table[3].count("|")
    assert f"| {small.flops / big.flops:.4f} |" in table[3]


def test_a_model_that_cannot_take_the_resolution_is_a_config_error():
    with pytest.raises(ConfigError, match="fixed: cannot run at 16 px"):
        profile_model(FixedInput(), "fixed", 16, LatencySettings(fast=True))


def test_cli_profiles_an_architecture_against_the_reference(tmp_path, capsys):
    out = tmp_path / "profile.json"
    code = main(
        ["profile", "--arch", "mbf", "--fcn", "--resolution", "56", "48", "--reference-arch", "mbf",
         "--fast", "--repeats", "2", "--json", str(out)]
    )
    assert code == 0
    document = json.loads(out.read_text())
    reference = document["reference"]
    assert reference["name"] == "mbf" and reference["resolution"] == 112
    sizes = [p["resolution"] for p in document["profiles"]]
    assert sizes == [56, 48]
    for p in document["profiles"]:
        # An FCN's work scales with the pixel count, up to the fixed-size embedding layer.
        assert p["ratios"]["flops"] == pytest.approx((p["resolution"] / 112) ** 2, rel=0.05)
    assert document["profiles"][0]["parameters"] == document["profiles"][1]["parameters"]
    assert "| mbf fcn | 56 |" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from facekd.deploy.onnx import export_model_proto

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.manual_seed(0)
    path.write_bytes(export_model_proto(TinyNet(), 16).SerializeToString())
    return path


def test_onnx_flops_count_every_operator_and_the_initializers(tiny_onnx):
    from facekd.deploy.profile import onnx_flops

    flops, parameters = onnx_flops(str(tiny_onnx), 16)
    axes = 2  # ReduceMean's axes (2, 3), an initializer of the graph like the weights
    assert parameters == (4 * 3 * 3 * 3 + 4) + (4 * 5 + 5) + axes
    # At least the convolution and the linear layer, by the rule of count_flops; the ReLU and the mean
    # over 14 x 14 x 4 values are counted too (each a few hundred operations), not the whole model again.
    assert count_flops(TinyNet(), 16) < flops < 1.2 * count_flops(TinyNet(), 16)


def test_cli_profiles_an_onnx_model_in_onnxruntime(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "profile.json"
    code = main(["profile", str(tiny_onnx), "--reference-arch", "mbf", "--fast", "--repeats", "2", "--json", str(out)])
    assert code == 0
    (profile,) = json.loads(out.read_text())["profiles"]
    assert profile["name"] == "tiny" and profile["resolution"] == 16 and profile["embedding_size"] == 5
    assert profile["torch_b1_ms"] is None and profile["ort_b1_ms"] > 0
    assert profile["ratios"]["ort_b1_ms"] > 0 and 0 < profile["ratios"]["flops"] < 1e-3
    assert "| tiny | 16 |" in capsys.readouterr().out


@pytest.mark.parametrize("extra, expected", [(["--resolution", "32"], "takes 16 px only"),
                                              (["--arch", "r18"], "an ONNX model carries its graph")])
def test_cli_refuses_onnx_options_that_cannot_apply_before_any_timing(tiny_onnx, capsys, extra, expected):
    start = time.perf_counter()
    assert main(["profile", str(tiny_onnx), "--fast", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert time.perf_counter() - start < 20  # refused before the r100 reference is built and timed


def test_a_file_that_is_not_onnx_stops_in_one_line(tmp_path, capsys):
    bad = tmp_path / "teacher.onnx"
    bad.write_bytes(b"not a model")
    assert main(["profile", str(bad), "--fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "teacher.onnx" in err[0] and "ONNX" in err[0]

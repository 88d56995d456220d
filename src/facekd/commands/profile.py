"""Profile a backbone at one or more input resolutions: parameters, size, FLOPs, CPU latency in
PyTorch and onnxruntime at batch 1 and 64, peak memory, and the ratios to a reference model (by
default an r100 teacher at 112 px; FLOPs and latency do not depend on the weights)."""

from __future__ import annotations

import argparse

HELP = "parameters, FLOPs, CPU latency and memory of a backbone, with ratios to the teacher"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="facekd checkpoint, insightface backbone.pth or ONNX model "
                                                  "(omit with --arch)")
    parser.add_argument("--arch", help="architecture name (r18 r34 r50 r100 r200 mbf mbf_large); alone: no weights")
    parser.add_argument("--kwargs", default=None, metavar="YAML",
                        help="with --arch, for a weights file without its side-car: the build_backbone options it "
                             "was trained with, e.g. \"{width: 0.125, num_features: 128, input_size: 56}\"")
    parser.add_argument("--fcn", action="store_true", help="with --arch alone: the fully convolutional variant")
    parser.add_argument("--width", type=float, default=1.0, help="with --arch alone: channel width multiplier")
    parser.add_argument("--resolution", type=int, nargs="+", default=[112], help="input sizes in px (default 112)")
    parser.add_argument("--reference", help="reference model file for the ratios (default: --reference-arch)")
    parser.add_argument("--reference-arch", default="r100", help="reference architecture at 112 px (default r100)")
    parser.add_argument("--fast", action="store_true", help="PyTorch at batch 1 only: no onnxruntime, no batch 64")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes at batch 1 (median reported)")
    parser.add_argument("--large-batch", type=int, default=64, help="the large batch size (default 64)")
    parser.add_argument("--large-repeats", type=int, default=3, help="timed passes at the large batch")
    parser.add_argument("--json", help="also write the profiles and ratios to this JSON file")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from facekd.deploy.model_source import ModelSource
    from facekd.deploy.profile import LatencySettings, markdown_table, profile_model
    from facekd.fileio import atomic_write_text

    settings = LatencySettings(
        repeats=args.repeats,
        large_batch=args.large_batch,
        large_batch_repeats=args.large_repeats,
        fast=args.fast,
    )
    from facekd.models.loading import kwargs_flag

    reference_source = ModelSource.from_args(args.reference, None if args.reference else args.reference_arch)
    if args.model and args.model.lower().endswith(".onnx"):
        profiles, reference = profile_onnx_file(args, reference_source, settings)
    else:
        source = ModelSource.from_args(args.model, args.arch, fcn=args.fcn, width=args.width,
                                       kwargs=kwargs_flag(args.kwargs))
        # Build (and so validate) every model before any timing: a bad name or file fails at once.
        models = [(source.build(size), size) for size in args.resolution]
        reference = profile_model(reference_source.build(112), reference_source.label, 112, settings)
        profiles = [profile_model(model, source.label, size, settings) for model, size in models]
    print(markdown_table([reference, *profiles], reference), end="")
    if args.json:
        document = {
            "reference": dataclasses.asdict(reference),
            "profiles": [dict(dataclasses.asdict(p), ratios=p.ratios_to(reference)) for p in profiles],
        }
        atomic_write_text(args.json, json.dumps(document, indent=2) + "\n")
    return 0


def profile_onnx_file(args: argparse.Namespace, reference_source, settings):
    """An ONNX model at the size its graph declares, in onnxruntime, against the reference with its
    FLOPs counted by the same rule (onnx-tool on the reference's export)."""
    import dataclasses
    from pathlib import Path

    import torch

    from facekd.deploy.onnx import export_model_proto
    from facekd.deploy.onnx_teacher import OnnxEmbedder
    from facekd.deploy.profile import median_ms, onnx_flops, ort_forward, profile_model, profile_onnx
    from facekd.errors import ConfigError

    if args.arch or args.kwargs:
        raise ConfigError(f"{args.model}: --arch and --kwargs describe PyTorch weights; an ONNX model carries its graph")
    embedder = OnnxEmbedder(args.model, threads=torch.get_num_threads())  # validates before any timing
    if args.resolution != [112] and args.resolution != [embedder.input_size]:
        raise ConfigError(f"{args.model}: --resolution {args.resolution}, but the graph takes "
                          f"{embedder.input_size} px only")
    profile = profile_onnx(embedder, Path(args.model).stem, settings)
    model = reference_source.build(112)
    proto = export_model_proto(model, 112)  # one export: ONNX latency (both modes) and onnx-tool's FLOPs
    reference = profile_model(model, reference_source.label, 112, settings, proto=proto)
    if reference.ort_b1_ms is None:  # fast mode skips it, but it is the ONNX model's only latency ratio
        one = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
        ort_b1 = median_ms(ort_forward(proto)(one), warmup=settings.warmup, repeats=settings.repeats)
        reference = dataclasses.replace(reference, ort_b1_ms=ort_b1)
    return [profile], dataclasses.replace(reference, flops=onnx_flops(proto, 112)[0])

"""Export a backbone to ONNX (input `data`, dynamic batch, as insightface's models) and check it
against PyTorch on real face images: the command fails if any output differs by more than 1e-4.
Optionally write an int8 copy (onnxruntime dynamic or static quantisation) and report verification
accuracy before and after on a `.bin`, with the speed-up."""

from __future__ import annotations

import argparse

HELP = "export a backbone to ONNX with a parity check, optionally quantised to int8"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="facekd checkpoint or insightface backbone.pth")
    parser.add_argument("--onnx", required=True, help="output .onnx path")
    parser.add_argument("--arch", help="architecture name, if the weights file does not say")
    parser.add_argument("--kwargs", default=None, metavar="YAML",
                        help="with --arch, for a weights file without its side-car: the build_backbone options it "
                             "was trained with, e.g. \"{width: 0.125, num_features: 128, input_size: 56}\"")
    parser.add_argument(
        "--input-size", type=int, help="input size in px (default: the size the model was built for, else 112)"
    )
    parser.add_argument(
        "--graph-input-size", type=int, default=None, metavar="PX",
        help="take PX x PX crops and resize inside the graph to the model's input size (e.g. 112 for a "
             "low-resolution student, so it takes insightface's norm_crop crops)")
    parser.add_argument(
        "--pixels", choices=("normalised", "raw"), default="normalised",
        help="normalised: the graph takes RGB in [-1, 1] (insightface's convention without in-graph "
             "normalisation); raw: RGB in [0, 255], normalised inside the graph by nodes named Sub and Mul, "
             "as OpenCV's FaceRecognizerSF feeds and insightface's ArcFaceONNX detects")
    parser.add_argument(
        "--parity-data", help="a .bin or RecordIO folder for the parity images (default: synthetic aligned faces)"
    )
    parser.add_argument("--parity-images", type=int, default=16, help="how many images the parity check runs")
    parser.add_argument("--pt2", help="also write a torch.export program (.pt2) for PyTorch without facekd "
                                      "(TorchScript is deprecated in PyTorch 2.13); checked like the ONNX model")
    parser.add_argument("--quantize", choices=("dynamic", "static"), help="also write an int8 model")
    parser.add_argument("--int8-out", help="int8 model path (default: OUT with _int8 before .onnx)")
    parser.add_argument("--calib-data", help="static: a .bin or RecordIO folder to draw calibration images from")
    parser.add_argument("--calib-images", type=int, default=128, help="static: number of calibration images")
    parser.add_argument("--bin", help="verification .bin to compare accuracy before and after quantisation")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from facekd.deploy.model_source import ModelSource
    from facekd.deploy.onnx import check_parity, export_onnx, inference_session
    from facekd.deploy.samples import face_images, model_inputs
    from facekd.errors import ConfigError

    if args.quantize == "static" and not args.calib_data:
        raise ConfigError("--quantize static: needs --calib-data, a .bin or RecordIO folder of face images")
    if (args.calib_data or args.bin or args.int8_out) and not args.quantize:
        raise ConfigError("--calib-data/--bin/--int8-out: given without --quantize dynamic|static")
    from facekd.models.loading import kwargs_flag

    model = ModelSource.from_args(args.model, args.arch, kwargs=kwargs_flag(args.kwargs)).build(args.input_size or 112)
    spec = getattr(model, "spec", None)
    input_size = args.input_size or (spec.kwargs.get("input_size", 112) if spec else 112)
    out = Path(args.onnx)
    if args.graph_input_size is not None:
        from facekd.deploy.onnx import ResizedInput

        if args.graph_input_size < input_size:
            raise ConfigError(f"--graph-input-size {args.graph_input_size}: smaller than the model's {input_size} px "
                              "input; expected the size of the crops users make (e.g. 112)")
        model, input_size = ResizedInput(model, input_size).eval(), args.graph_input_size
    parity_inputs = model_inputs(face_images(args.parity_data, args.parity_images), input_size)
    if args.pixels == "raw":
        from facekd.deploy.onnx import RawPixelInput

        model, parity_inputs = RawPixelInput(model).eval(), parity_inputs * 127.5 + 127.5
    export_onnx(model, out, input_size)
    report = check_parity(model, inference_session(out), parity_inputs, what=str(out))
    print(
        f"wrote {out}: parity over {report.images} images at batch {report.batch_sizes[0]} and 1: max relative "
        f"error {report.max_relative_error:.2e} (tolerance {report.tolerance:g}), min cosine "
        f"{report.min_cosine:.9f}, max |onnx - torch| {report.max_abs_diff:.2e}"
    )
    if args.pt2:
        from facekd.deploy.onnx import check_program_parity, export_program

        export_program(model, args.pt2, input_size)
        report = check_program_parity(model, args.pt2, parity_inputs)
        print(f"wrote {args.pt2}: torch.export program, parity over {report.images} images: max relative error "
              f"{report.max_relative_error:.2e}, min cosine {report.min_cosine:.9f}")
    if args.quantize:
        from facekd.deploy.quantize import compare_quantized, quantize_onnx

        int8_out = Path(args.int8_out) if args.int8_out else out.with_name(f"{out.stem}_int8.onnx")
        calibration = face_images(args.calib_data, args.calib_images) if args.quantize == "static" else None
        quantize_onnx(out, int8_out, args.quantize, calibration)
        print(f"wrote {int8_out}: int8, {args.quantize} quantisation")
        if args.bin:
            q = compare_quantized(out, int8_out, args.quantize, args.bin)
            print(
                f"{args.bin} ({q.pairs} pairs): accuracy {q.accuracy_fp32:.4f} fp32 -> {q.accuracy_int8:.4f} int8; "
                f"onnxruntime batch {q.batch}: {q.latency_fp32_ms:.2f} ms -> {q.latency_int8_ms:.2f} ms "
                f"(speed-up {q.speedup:.2f}x); size {q.size_fp32_mb:.1f} -> {q.size_int8_mb:.1f} MiB"
            )
    return 0

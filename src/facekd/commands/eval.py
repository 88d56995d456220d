"""Evaluate a backbone (or saved embeddings) with insightface's protocols and write reports.

`--bin FILE` (repeatable): 10-fold pair verification of an insightface `.bin` (Accuracy-Flip, VAL@FAR=1e-3).
`--ijb ROOT --ijb-target IJBC`: IJB-B/C from ROOT/IJBC/{meta,loose_crop} (N1D1F1 by default);
`--ijb-protocol` picks 1:1 TAR@FAR (`1v1`, the default), 1:N identification (`1n`: rank-1/5/10 and
TPIR@FPIR 0.01/0.1 of the probe_mixed templates against gallery G1+G2, or S1+S2 for IJB-B) or
`both`, which embeds the images once for the two.
`--ident DIR`: 1:N rank-1/5/10 and TPIR@FPIR on DIR/{gallery,probe[,distractors]} RecordIO sets
(e.g. the synthetic benchmark's ident/ folder).
Each evaluation writes <name>.json, <name>.md and <name>_roc.png under --out (IJB: <target> for
1:1, <target>_1n for 1:N); IJB 1:1 also saves its pair scores as <target>.npy, as insightface
does. `--embeddings X.npy` skips the network: raw flip-summed embeddings, 2N rows for one --bin
or one row per image (name_5pts_score order) for --ijb, whichever protocols.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "evaluate a model or saved embeddings: .bin pairs, IJB-B/C 1:1 and 1:N, RecordIO 1:N identification"
PROTOCOLS = {"1v1": ("1v1",), "1n": ("1n",), "both": ("1v1", "1n")}  # names in evaluate.runner.IJB_PROTOCOLS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="facekd checkpoint, insightface backbone.pth, or an ONNX "
                        "face-recognition model (its input convention read from the file and printed)")
    source.add_argument("--embeddings", type=Path, help=".npy of raw flip-summed embeddings for one target")
    parser.add_argument("--arch", default=None, help="backbone name (r18 r34 r50 r100 r200 mbf mbf_large) "
                        "when the weights file does not say")
    parser.add_argument("--kwargs", default=None, metavar="YAML",
                        help="with --arch, for a weights file without its side-car: the build_backbone options it "
                             "was trained with, e.g. \"{width: 0.125, num_features: 128, input_size: 56}\"")
    parser.add_argument("--input-size", type=int, default=None,
                        help="network input size for a low-resolution student (images are resized to it)")
    parser.add_argument("--bin", type=Path, action="append", default=[], help="verification .bin (repeatable)")
    parser.add_argument("--ijb", type=Path, default=None, help="IJB release folder holding IJBC/ or IJBB/")
    parser.add_argument("--ijb-target", choices=("IJBC", "IJBB"), default="IJBC")
    parser.add_argument("--ijb-protocol", choices=tuple(PROTOCOLS), default=None,
                        help="IJB 1:1 verification (1v1, the default), 1:N identification (1n) or both")
    parser.add_argument("--norm-score", action=argparse.BooleanOptionalAction, default=True,
                        help="IJB N1: keep each image feature's norm as a quality weight (default on)")
    parser.add_argument("--detector-score", action=argparse.BooleanOptionalAction, default=True,
                        help="IJB D1: weight image features by the faceness score (default on)")
    parser.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=True,
                        help="IJB F1: add the mirrored image's embedding (default on; .bin always flips)")
    parser.add_argument("--ident", type=Path, default=None,
                        help="folder with gallery/, probe/ and optional distractors/ RecordIO sets")
    parser.add_argument("--out", type=Path, required=True, help="folder for the reports")
    parser.add_argument("--name", default=None, help="model name in the reports (default: the file's stem)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--nfolds", type=int, default=10)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args: argparse.Namespace) -> int:
    from facekd.errors import ConfigError

    targets = len(args.bin) + (args.ijb is not None) + (args.ident is not None)
    if targets == 0:
        raise ConfigError("nothing to evaluate: give --bin, --ijb or --ident")
    if args.embeddings is not None and (targets != 1 or args.ident is not None):
        raise ConfigError("--embeddings: found it with several targets or --ident, expected exactly one --bin or --ijb")
    if args.ijb_protocol is not None and args.ijb is None:
        raise ConfigError(f"--ijb-protocol {args.ijb_protocol}: found without --ijb, expected --ijb ROOT with it")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: found {args.batch_size}, expected a positive number")

    from facekd.evaluate.runner import Evaluation

    evaluation = Evaluation.from_args(args)
    for bin_path in args.bin:
        evaluation.verification(bin_path)
    if args.ijb is not None:
        evaluation.ijb(args.ijb, args.ijb_target, PROTOCOLS[args.ijb_protocol or "1v1"])
    if args.ident is not None:
        evaluation.identification(args.ident)
    return 0

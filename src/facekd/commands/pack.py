"""Pack face images into insightface formats. `facekd pack rec SOURCE --out DIR` turns an image folder
(root/<identity>/<image>) or a list file of 'path label' lines into DIR/train.rec, train.idx and property.
`facekd pack pairs LIST --out FILE.bin` turns a list of 'path1 path2 1|0' lines into a verification .bin.
With --landmarks FILE (lines 'path x1 y1 ... x5 y5', or 136 numbers for 68 points, paths as in the
source) every image is aligned onto the ArcFace template at --size; without it the images must already
be --size crops, JPEG files are stored byte for byte and other formats re-encoded as JPEG quality 95.
`facekd pack rec --rebuild-index DIR` writes DIR/train.idx again from a walk over DIR/train.rec.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "pack an image folder/list into a RecordIO dataset, or a pairs list into a verification .bin"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    rec = kinds.add_parser("rec", help="image folder or 'path label' list -> train.rec/train.idx/property")
    rec.add_argument("source", type=Path, nargs="?",
                     help="folder of identity folders, or a list file of 'path label' lines")
    rec.add_argument("--out", type=Path, help="output dataset folder")
    rec.add_argument("--rebuild-index", type=Path, metavar="DIR",
                     help="instead of packing: rewrite DIR/train.idx from DIR/train.rec (keys = IRHeader ids)")
    rec.add_argument("--layout", choices=("ms1m", "shuffled"), default="ms1m",
                     help="ms1m: meta + identity records (default); shuffled: images only, in list order")
    pairs = kinds.add_parser("pairs", help="'path1 path2 1|0' list -> verification .bin")
    pairs.add_argument("source", type=Path, help="pairs list file")
    pairs.add_argument("--out", type=Path, required=True, help="output .bin file")
    for sub in (rec, pairs):
        sub.add_argument("--root", type=Path, default=None,
                         help="folder that relative paths in a list file start from (default: the list's folder)")
        sub.add_argument("--landmarks", type=Path, default=None,
                         help="landmarks file: align every image onto the ArcFace template")
        sub.add_argument("--size", type=int, default=112, help="crop size in pixels (default 112)")
        sub.add_argument("--detect", action="store_true", help="detect each face (YuNet) and align it onto the template")
        sub.add_argument("--detector", type=Path, default=None, help="with --detect: an SCRFD ONNX file instead of YuNet")


def run(args: argparse.Namespace) -> int:
    from facekd.data.packing import ImageSource
    from facekd.errors import ConfigError

    if args.kind == "rec" and args.rebuild_index is not None:
        if args.source is not None or args.out is not None:
            raise ConfigError("pack rec --rebuild-index DIR takes no SOURCE or --out: it rewrites DIR/train.idx")
        return _rebuild_index(args.rebuild_index)
    if args.source is None or args.out is None:
        raise ConfigError(f"pack {args.kind}: SOURCE and --out are required")
    source = ImageSource(size=args.size, landmarks_path=args.landmarks, detector=_detector(args))
    if args.kind == "rec":
        info = source.pack_rec(args.source, args.out, root=args.root, layout=args.layout)
        print(f"wrote {args.out}: {info.num_images} images, {info.num_classes} classes, "
              f"{info.image_size[0]}x{info.image_size[1]}")
    else:
        pairs = source.pack_pairs(args.source, args.out, root=args.root)
        print(f"wrote {args.out}: {pairs} pairs")
    return 0


def _detector(args: argparse.Namespace):
    if not args.detect:
        return None
    from facekd.data.detect import make_detector

    return make_detector(args.detector)


def _rebuild_index(folder: Path) -> int:
    from facekd.data.rec_index import rebuild_index

    idx = folder / "train.idx"
    count = rebuild_index(folder / "train.rec", idx)
    print(f"wrote {idx}: {count} records")
    return 0

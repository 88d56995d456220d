"""Generate the synthetic face benchmark: a RecordIO train set, LFW-style verification pairs,
a 1:N identification split and a CelebA-style set with landmarks and attributes.

Sizes left out take the defaults of `facekd.data.synthetic.SynthConfig`, printed at the start.
The output depends only on the seed and the sizes, not on --workers.
"""

from __future__ import annotations

import argparse

HELP = "generate the synthetic face benchmark (train .rec, verification .bin, 1:N split, CelebA-style set)"

# Option name -> (SynthConfig field, help). Defaults stay in SynthConfig so `facekd --help` stays fast.
SIZE_OPTIONS = {
    "--identities": ("identities", "train identities"),
    "--images-per-identity": ("images_per_identity", "train images per identity"),
    "--size": ("size", "image side in pixels (112 as insightface crops)"),
    "--seed": ("seed", "random seed"),
    "--verify-identities": ("verify_identities", "held-out identities for verify/synth_lfw.bin"),
    "--verify-pairs": ("verify_pairs", "pairs in synth_lfw.bin, a multiple of 20 (10 folds, half genuine)"),
    "--gallery-identities": ("gallery_identities", "1:N gallery identities, one gallery image each"),
    "--probes-per-identity": ("probes_per_identity", "1:N probe images per gallery identity"),
    "--distractors": ("distractors", "1:N distractor identities, one image each"),
    "--celeba-identities": ("celeba_identities", "identities in the CelebA-style set"),
    "--celeba-images-per-identity": ("celeba_images_per_identity", "images per CelebA-style identity"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    for option, (field, text) in SIZE_OPTIONS.items():
        parser.add_argument(option, dest=field, type=int, default=argparse.SUPPRESS, help=text)
    parser.add_argument("--difficulty", default="medium",
                        help="easy, medium, hard or a number in [0, 1] scaling pose, expression, occlusion, "
                             "lighting, blur and noise (default: medium)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="generation processes (default: 1)")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from facekd.data.synthetic import SynthConfig, generate, parse_difficulty

    given = {field: getattr(args, field) for field, _ in SIZE_OPTIONS.values() if hasattr(args, field)}
    config = SynthConfig(difficulty=parse_difficulty(args.difficulty), **given)
    print("facekd synth: " + " ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()), flush=True)
    started = time.perf_counter()
    meta = generate(args.out, config, workers=args.workers, progress=lambda part: print(f"writing {part}", flush=True))
    seconds = time.perf_counter() - started
    counts = meta["counts"]
    images = (counts["train_images"] + 2 * counts["verify_pairs"] + counts["gallery_images"]
              + counts["probe_images"] + counts["distractor_images"] + counts["celeba_images"])  # fmt: skip
    print(
        f"wrote {args.out}: {counts['train_images']} train images of {counts['train_identities']} identities, "
        f"{counts['verify_pairs']} verification pairs, {counts['gallery_images']} gallery / "
        f"{counts['probe_images']} probe / {counts['distractor_images']} distractor images, "
        f"{counts['celeba_images']} CelebA-style images; {images} images in {seconds:.1f} s "
        f"({images / seconds:.0f} img/s)"
    )
    return 0

"""facekd's backbones against arcface_torch's own, built from the peer's source.

Run: python benchmarks/reference/compare_arcface_torch.py --arcface-torch PATH
PATH is insightface's recognition/arcface_torch folder (a checkout of deepinsight/insightface; it
is not on PyPI). The script runs `arcface_torch_reference.py` in compare_insightface.py's side venv
(built there on first use) with PATH on its PYTHONPATH: it builds every backbone that both
projects name (r18, r34, r50, r100, r200, mbf, mbf_large) with arcface_torch's `get_model`, seeded
weights and batch-norm statistics, and saves its state_dict and its eval-mode embedding of one
input batch. Here, facekd loads each saved file as a user's `backbone.pth` (`load_backbone`: the
architecture recognised from the keys, loaded strictly) and embeds the same batch. Printed per
backbone: keys and shapes equal, the architecture facekd recognised, and the largest relative
difference of the embeddings (tolerance 1e-5). Exit status 1 when one differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from compare_insightface import LOCAL_TORCH, PINS, SIDE_VENV
from facekd.models import build_backbone
from facekd.models.loading import load_backbone
from side_venv import side_python

HERE = Path(__file__).resolve().parent
NAMES = ["r18", "r34", "r50", "r100", "r200", "mbf", "mbf_large"]
TOLERANCE = 1e-5


def compare(case: Path, name: str, x: torch.Tensor) -> tuple[dict, bool]:
    reference_state = torch.load(case / "backbone.pth", weights_only=True)
    ours = build_backbone(name).state_dict()
    same_layout = reference_state.keys() == ours.keys() and all(
        reference_state[k].shape == ours[k].shape for k in ours)
    model = load_backbone(case / "backbone.pth").eval()
    with torch.no_grad():
        embedding = model(x).numpy()
    reference = np.load(case / "reference_embedding.npy")
    relative = float(np.max(np.linalg.norm(embedding - reference, axis=1) / np.linalg.norm(reference, axis=1)))
    recognised = model.spec.name
    norm = float(np.linalg.norm(reference, axis=1).mean())
    passed = same_layout and recognised == name and np.isfinite(norm) and norm > 0 and relative <= TOLERANCE
    return {"keys": len(reference_state), "same keys and shapes": same_layout, "recognised as": recognised,
            "reference embedding norm": norm, "max relative difference": relative}, passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arcface-torch", required=True, type=Path,
                        help="insightface's recognition/arcface_torch folder (holds backbones/)")
    parser.add_argument("--torch", default=str(LOCAL_TORCH) if LOCAL_TORCH.exists() else "torch==2.13.0",
                        help="pip requirement for torch in the side venv")
    args = parser.parse_args()
    if not (args.arcface_torch / "backbones" / "iresnet.py").is_file():
        raise SystemExit(f"{args.arcface_torch}: no backbones/iresnet.py, expected insightface's "
                         "recognition/arcface_torch folder")
    python = side_python(SIDE_VENV, PINS, (args.torch,))
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 112, 112)).astype(np.float32))
    failures = 0
    with tempfile.TemporaryDirectory(prefix="facekd-arcface-torch-") as tmp:
        root = Path(tmp)
        np.save(root / "input.npy", x.numpy())
        (root / "manifest.json").write_text(json.dumps(NAMES))
        env = dict(os.environ, PYTHONPATH=str(args.arcface_torch.resolve()))
        subprocess.run([python, HERE / "arcface_torch_reference.py", root], check=True, env=env)
        environment = json.loads((root / "environment.json").read_text())
        print(f"reference: {args.arcface_torch}, " + ", ".join(f"{k} {v}" for k, v in environment.items()))
        for name in NAMES:
            result, passed = compare(root / name, name, x)
            failures += not passed
            line = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
            print(f"{name:<10s} {line}" + ("" if passed else "  <-- differs"))
    print("RESULT:", "all equal within tolerance" if failures == 0 else f"{failures} backbones differ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

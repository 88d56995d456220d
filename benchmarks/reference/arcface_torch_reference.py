"""arcface_torch's own backbones, built from the peer's source; never imports facekd.

compare_arcface_torch.py runs this file in the side venv of compare_insightface.py (torch 2.13)
as `PYTHONPATH=ARCFACE_TORCH_DIR python arcface_torch_reference.py CASE_DIR`: it imports
`backbones` from ARCFACE_TORCH_DIR (insightface's recognition/arcface_torch) and, for every name in
CASE_DIR/manifest.json, builds `backbones.get_model(name, fp16=False, num_features=512)`, gives
seeded weights and batch-norm statistics (`randomise`), and writes CASE_DIR/<name>/backbone.pth (its plain
state_dict, as `torch.save(backbone.state_dict())` in arcface_torch's train_v2.py) and
reference_embedding.npy, its eval-mode output on CASE_DIR/input.npy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Seeded weights of unit gain and non-trivial batch-norm statistics, with each residual branch's
    last BN (`bn3`) scaled to about 0.1: random weights in r100/r200 otherwise overflow float32 over
    their 49 and 99 residual blocks in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.data.copy_(torch.randn(module.weight.shape, generator=generator) / fan_in ** 0.5)
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
            if module.weight.requires_grad:  # arcface_torch freezes features.weight at 1
                scale = 0.1 if name.endswith("bn3") else 1.0
                module.weight.data.copy_((torch.rand(n, generator=generator) + 0.5) * scale)


def main(case_root: str) -> None:
    from backbones import get_model  # arcface_torch's package, found through PYTHONPATH

    root = Path(case_root)
    x = torch.from_numpy(np.load(root / "input.npy"))
    for index, name in enumerate(json.loads((root / "manifest.json").read_text())):
        torch.manual_seed(index)
        model = get_model(name, fp16=False, num_features=512)
        randomise(model, index)
        model.eval()
        with torch.no_grad():
            out = model(x)
        (root / name).mkdir()
        torch.save(model.state_dict(), root / name / "backbone.pth")
        np.save(root / name / "reference_embedding.npy", out.numpy())
    (root / "environment.json").write_text(json.dumps({
        "torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main(sys.argv[1])

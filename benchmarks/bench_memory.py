"""Per-GPU memory of Partial FC training and distillation from the memory model (facekd.train.memory).

Activation bytes per image are counted exactly on the CPU (autograd's saved tensors, fp32) for each
backbone at 112 px; the rest is arithmetic. Prints the table of docs/scale.md.

    python benchmarks/bench_memory.py
"""

from __future__ import annotations

from facekd.models import build_backbone
from facekd.train.memory import GIB, MemoryModel, saved_activation_bytes

IDENTITIES = (85_742, 360_232, 2_059_906)  # MS1MV2, Glint360K, WebFace42M
WORLDS = (8, 64)
BATCH = 128  # images per GPU, as arcface_torch's recipes


def main() -> None:
    nets = {}
    for name in ("r100", "r50", "mbf"):
        model = build_backbone(name)
        nets[name] = (sum(p.numel() for p in model.parameters()), saved_activation_bytes(model, 112))
        print(f"{name}: {nets[name][0] / 1e6:.2f}M parameters, {nets[name][1] / 2**20:.1f} MiB saved per image "
              "(fp32, 112 px)", flush=True)
    rows = [("r100 (train)", "r100", 0), ("r50 (train)", "r50", 0), ("mbf <- r100 (distill)", "mbf", nets["r100"][0])]
    print("\n| run | identities | GPUs | backbone | activations | classifier shard | logits | teacher | total (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, student, teacher in rows:
        for classes in IDENTITIES:
            for world in WORLDS:
                model = MemoryModel(nets[student][0], nets[student][1], 512, classes, world, BATCH,
                                    teacher_parameters=teacher, amp=True)
                parts = " | ".join(f"{value / GIB:.2f}" for value in model.parts().values())
                print(f"| {label} | {classes:,} | {world} | {parts} | {model.total() / GIB:.2f} |")


if __name__ == "__main__":
    main()

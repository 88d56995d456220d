"""A run's output folder: a used one is continued (--resume), replaced (--overwrite) or refused."""

from __future__ import annotations

from pathlib import Path

from facekd.errors import ConfigError
from facekd.fileio import disk_errors

# What a run that trained writes, which a second run would append to or replace; stage runs live one
# or two folders down (e.g. OUT/classification, OUT/width0.5/verification). A run that stopped
# before its first step leaves only config.yaml and train.log, and is no previous run.
RUN_FILES = ("checkpoint.pt", "log.jsonl", "final.json")
OVERWRITTEN = RUN_FILES + ("train.log",)
STAGE_DEPTH = 2


def run_files(out: Path, names: tuple[str, ...] = RUN_FILES) -> list[Path]:
    found = []
    for depth in range(STAGE_DEPTH + 1):
        pattern = "/".join(["*"] * depth + ["{name}"])
        for name in names:
            found.extend(path for path in out.glob(pattern.format(name=name)) if path.is_file())
    return sorted(found)


def claim_run_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over a previous one unless told to; `overwrite` removes its files."""
    if resume:
        return
    previous = run_files(Path(out))
    if not previous:
        return
    if not overwrite:
        shown = ", ".join(str(path.relative_to(out)) for path in previous[:3])
        more = f" and {len(previous) - 3} more" if len(previous) > 3 else ""
        raise ConfigError(f"{out}: holds a previous run ({shown}{more}); pass --resume to continue it, "
                          "--overwrite to start again, or choose another --out")
    for path in run_files(Path(out), OVERWRITTEN):
        with disk_errors(path):
            path.unlink()

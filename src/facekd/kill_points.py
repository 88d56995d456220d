"""Kill a facekd command at a chosen point with SIGKILL, for the reliability tests and benchmark.

`kill_when(args, ready)` runs a command and kills it once `ready()` holds; with `pause=NAME` the
command stops inside a write of file NAME (the FACEKD_TEST_PAUSE_BEFORE_RENAME hook of
`facekd.fileio`), so a kill lands between a complete temporary file and its rename.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from facekd.fileio import PAUSE_VARIABLE


def environment(source: Path, pause: str = "") -> dict[str, str]:
    """The environment of a deterministic CPU run of facekd from `source` (one thread)."""
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    env.pop(PAUSE_VARIABLE, None)
    if pause:
        env[PAUSE_VARIABLE] = pause
    return env


def run(args: list[str], source: Path) -> None:
    done = subprocess.run(args, env=environment(source), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:5])}... failed: {done.stderr[-2000:]}")


def kill_when(args: list[str], source: Path, ready: Callable[[], bool], pause: str = "",
              timeout: float = 300) -> bool:
    """Start `args`; SIGKILL it once `ready()` holds. False if it finished before that point."""
    process = subprocess.Popen(args, env=environment(source, pause), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(f"{' '.join(args[:5])}...: kill point not reached in {timeout} s")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def steps_logged(out: Path) -> int:
    """Training steps a run in `out` has logged (log.jsonl records with a loss)."""
    log = out / "log.jsonl"
    return sum('"loss"' in line for line in log.read_text().splitlines()) if log.is_file() else 0


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["task"]


def differing_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors are not bit-identical (or present in one state only)."""
    return sorted(set(a) ^ set(b)) + [key for key in sorted(set(a) & set(b)) if not torch.equal(a[key], b[key])]

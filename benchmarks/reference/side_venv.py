"""A side venv for a peer's pinned environment: created and filled on first use, reused after."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

PROBE = """
import sys
from importlib import metadata
for name in sys.argv[1:]:
    try:
        print(metadata.version(name))
    except metadata.PackageNotFoundError:
        print("missing")
"""


def side_python(venv_dir: Path, pins: list[str], extra: tuple[str, ...] = ()) -> Path:
    """The venv's interpreter once every `name==version` pin is installed there (with `extra`)."""
    python = venv_dir / "bin" / "python"
    if not python.exists():
        venv.create(venv_dir, with_pip=True)
    names = [pin.split("==")[0] for pin in pins]
    found = subprocess.run([python, "-c", PROBE, *names], capture_output=True, text=True, check=True)
    if found.stdout.split() != [pin.split("==")[1] for pin in pins]:
        subprocess.run([python, "-m", "pip", "install", "-q", *pins, *extra], check=True)
    return python

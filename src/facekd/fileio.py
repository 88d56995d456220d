"""Atomic file writes: write to a temporary file in the same folder, then rename.

A failure of the disk itself (full, quota, read-only, a folder that cannot be made) becomes one
`StorageError` line naming the file (and the free space when the disk is full), whatever library
was writing: torch.save, for one, reports a full disk as "unexpected pos" with the OSError chained.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator

from facekd.errors import DataError, StorageError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
TMP_SUFFIX = ".tmp"
PAUSE_VARIABLE = "FACEKD_TEST_PAUSE_BEFORE_RENAME"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of `path`; on success fsync and rename it over `path`.

    A crash or exception leaves any existing `path` untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', got {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise _storage_error(path, exc) from None
    # mkstemp makes the file 0600; give it the mode a plain open() would (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    with disk_errors(path):
        try:
            with os.fdopen(fd, mode) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            _pause_for_kill_tests(path)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _pause_for_kill_tests(path: Path) -> None:
    """Test hook (docs/reliability.md): with FACEKD_TEST_PAUSE_BEFORE_RENAME=NAME, a write of file NAME
    (with NAME+, only one that replaces an existing NAME) stops between its complete temporary file
    and the rename, announcing it with `<path>.paused`, so a test can SIGKILL the process mid-write."""
    wanted = os.environ.get(PAUSE_VARIABLE, "")
    if wanted in (path.name, path.name + "+") and (not wanted.endswith("+") or path.exists()):
        path.with_name(path.name + ".paused").touch()
        time.sleep(3600)


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Report a failing disk under this block (a log append, say) as one StorageError naming `path`."""
    try:
        yield
    except BaseException as exc:
        disk = _disk_error(exc)
        if disk is None:
            raise
        raise _storage_error(Path(path), disk) from None


def _disk_error(exc: BaseException) -> OSError | None:
    """The OSError of a full or failing disk in `exc`'s chain (libraries wrap it), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (*_DISK_FULL, errno.EROFS, errno.EIO):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _storage_error(path: Path, exc: OSError) -> StorageError:
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _DISK_FULL:
        folder = next((p for p in (path.parent, *path.parents) if p.exists()), Path("/"))
        reason += f", {shutil.disk_usage(folder).free} bytes free in {folder}; the previous {path.name} is kept"
    return StorageError(f"{path}: cannot write ({reason})")


def remove_orphan_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed `atomic_open` left in `folder` (`.NAME.XXXX.tmp`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    orphans = [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file()]
    for orphan in orphans:
        with contextlib.suppress(FileNotFoundError):
            orphan.unlink()
    return orphans


def read_utf8(path: str | os.PathLike, expected: str, error: type[Exception] = DataError) -> str:
    """A text file's contents; a missing file or a non-UTF-8 byte is one `error` line naming the file
    (and the line), and saying what was `expected`."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found, expected {expected}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise error(f"{path}:{line}: byte 0x{exc.object[exc.start]:02x} is not UTF-8, expected {expected}") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)

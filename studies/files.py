"""File primitives of the studies: the one atomic writer, JSON records, and directory locks.

Atomic writes
    :func:`atomic_write` is the only way the studies write a file that others read
    (configs, summaries, checkpoints, tables, figures, the decoded-data cache, downloads):
    the bytes go to a temporary file in the same folder, which is renamed over the target
    (``os.replace``) only when complete. A reader, or a run resumed after the writer was
    killed, sees the old file or the new one, never a part. The temporary file is created
    with mode 0666 minus the process umask, like any file ``open()`` creates. (No fsync: a
    killed process is covered; a power cut is not.)

Locks
    :class:`DirLock` is an exclusive ``fcntl.flock`` on ``FOLDER/.lock``, which holds the
    owner's PID. The kernel releases it when the process exits, however it dies (SIGKILL
    included), so there is never a stale lock to delete. Within one process a lock may be
    taken again (it counts); another process gets :class:`~studies.errors.LockedError`
    naming the holder's PID.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Callable

from .errors import DataError, LockedError

LOCK_FILE = ".lock"


# --------------------------------------------------------------------------- atomic writes
def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Create or replace ``path`` with what ``write(binary_file)`` writes, atomically.

    The parent folder is created if needed. Any failure (disk full, a read-only folder,
    an exception in ``write``) leaves the previous file untouched and no temporary file;
    an :class:`OSError` is re-raised with ``path`` as its file name, and an interrupt
    (KeyboardInterrupt: Ctrl-C, the CLI's SIGTERM) as itself, even where the writer's own
    clean-up raised another error over it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        interrupt = _interrupt_behind(exc)
        if interrupt is not None:  # Ctrl-C / SIGTERM mid-write, masked by the writer's own clean-up error
            raise interrupt from None
        if isinstance(exc, OSError) and exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return path


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (Ctrl-C, or the CLI's SIGTERM) that ``exc`` was raised while handling,
    if any: torch.save's zip writer, interrupted, raises a RuntimeError of its own over it."""
    seen = exc.__context__
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__context__
    return None


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON with :func:`atomic_write`."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` into ``path`` with :func:`atomic_write`."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


# --------------------------------------------------------------------------- JSON records
def json_default(o: Any) -> Any:
    """JSON for what :mod:`json` cannot write: tensors and NumPy values, sets."""
    if hasattr(o, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    """Parse the JSON file ``path``; a corrupt file raises :class:`DataError` naming it
    (a missing one :class:`FileNotFoundError`)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``[]`` if it does not exist).

    A torn last line (the writer was killed mid-line) is left out; a bad line before
    the last raises :class:`DataError` naming the file and the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                break
            raise DataError(f"{path}: line {i + 1} is not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}: line {i + 1} is not a JSON object")
        out.append(rec)
    return out


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
    """Append one record as a JSON line."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=json_default) + "\n")


def rewrite_jsonl(path: str | os.PathLike, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Atomically keep only the records for which ``keep(record)`` is true."""
    path = Path(path)
    if path.exists():
        lines = [json.dumps(r, default=json_default) + "\n" for r in read_jsonl(path) if keep(r)]
        write_text_atomic(path, "".join(lines))


# --------------------------------------------------------------------------- locks
class DirLock:
    """Exclusive lock on a folder for one writing process (see the module docstring).

    Use as a context manager: ``with DirLock(folder, "run directory"): ...``. ``what``
    names the folder's kind in the error a second writer gets.
    """

    _held: dict[str, list[Any]] = {}  # lock file → [fd, count], this process

    def __init__(self, folder: str | os.PathLike, what: str = "directory"):
        self.folder, self.what = Path(folder), what
        self.file = self.folder / LOCK_FILE

    def __enter__(self) -> "DirLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        key = str(self.file.resolve())
        if key in self._held:
            self._held[key][1] += 1
            return
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise LockedError(f"{self.folder} is in use: process {holder} is writing this {self.what} "
                              f"(lock file {self.file}); wait for it to end or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._held[key] = [fd, 1]

    def release(self) -> None:
        import fcntl

        key = str(self.file.resolve())
        entry = self._held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[key]
            os.ftruncate(entry[0], 0)
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])


__all__ = ["DirLock", "LOCK_FILE", "append_jsonl", "atomic_write", "json_default",
           "read_json", "read_jsonl", "rewrite_jsonl", "torch_save_atomic", "write_json_atomic", "write_text_atomic"]

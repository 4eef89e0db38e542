"""One run at a time per output folder: ``.igcli.lock`` holds the pid of the run writing there.

The lock is an exclusive ``flock`` on that file, which the kernel drops when its process dies, so a
lock left by a killed run is taken over without asking; where ``flock`` is missing (Windows) the
pid in the file decides. A second run into the folder stops before it touches anything (exit 2).
"""
from __future__ import annotations

import os
from pathlib import Path

from igcli.errors import UsageError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".igcli.lock"


class OutputLock:
    """Held from ``acquire`` to ``release``; ``with OutputLock(folder):`` does both."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK_NAME
        self._handle: int | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise UsageError(f"{self.path.parent}: -o names a file, not a folder; give -o a folder (new or igcli's)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"{self.path.parent}: output folder is not writable ({error.strerror or error}); "
                             "choose another with -o") from None
        while self._handle is None:
            try:
                handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise UsageError(f"{self.path.parent}: output folder is not writable ({error.strerror or error}); "
                                 "choose another with -o") from None
            if not self._lock(handle):
                os.close(handle)
                raise UsageError(f"{self.path.parent}: another igcli run (pid {self._holder() or '?'}) is writing here; "
                                 "wait for it to end, or give this run another -o")
            try:
                same = os.path.samestat(os.fstat(handle), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # the run before removed the file as it ended: lock the new one
                os.close(handle)
                continue
            os.ftruncate(handle, 0)
            os.write(handle, f"{os.getpid()}\n".encode())
            self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still locked: no other run can hold it meanwhile
        except OSError:
            pass
        os.close(self._handle)
        self._handle = None

    def _lock(self, handle: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError:  # a file system without locks: the pid decides
                pass
        holder = self._holder()
        return holder is None or holder == os.getpid() or not _alive(holder)

    def _holder(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would end the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

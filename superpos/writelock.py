"""One writer per file: an advisory claim beside the file, released by the kernel when its holder dies.

``claim(path)`` takes an exclusive ``flock`` on ``PATH.lock`` and writes who holds it (pid, host, start time,
command) into it. A second writer finds the lock taken and is refused with one line naming the first. A
writer killed by SIGKILL leaves the lock file behind, but the kernel has already dropped its ``flock``, so the
next writer takes it over at once (and says so): resume after a kill needs no manual clean-up.

On release the holder unlinks the lock file while still holding it; a contender that locked the unlinked
inode notices (the path no longer names the inode it holds) and tries again, so two writers can never both
believe they hold the claim. ``flock`` is local to one machine: on a network file system shared by several
hosts, use one writer per file by construction (``harvest --shard``).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from superpos.errors import SuperposError


def lock_path(path: Path) -> Path:
    """The claim file that guards ``path``."""
    return path.with_name(path.name + ".lock")


def _holder(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if not info:
        return "another process"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {when} "
            f"(`{info.get('command', '?')}`)")


@contextlib.contextmanager
def claim(path: str | os.PathLike, what: str = "writing") -> Iterator[None]:
    """Hold the one-writer claim on ``path`` for the duration of the block (see the module docstring)."""
    path = Path(path)
    lock = lock_path(path)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise SuperposError(f"cannot create the writer claim {lock} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SuperposError(f"cannot lock {lock} ({e.strerror})") from None
            raise SuperposError(f"{path} is being written by {_describe(_holder(lock))}; wait for it to finish or "
                                f"stop it (one writer per store)") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # we locked an inode its holder had already unlinked: start again
    stale = _holder(lock)
    if stale:
        print(f"superpos: taking over {path} from a writer that is gone ({_describe(stale)})", file=sys.stderr)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "command": " ".join(["superpos", *sys.argv[1:]]) if sys.argv else "superpos", "what": what}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)

"""Part files (docs/protocol.md §7.2): a file on its way into files/<origin>/, downloaded or sent by a local user,
is written under a hidden name beside where it will be kept (`.<file_id>.<random>`) and renamed into place once
checked, so that a kept file is always whole.

A part file in use is told from an abandoned one by an advisory lock, not by its age: its writer holds an
exclusive `flock` on it from the moment it is made until it is renamed into place or removed, and the kernel
drops the lock when the process ends, however it ends (SIGKILL, the OOM killer, a crash; after a power cut no
process holds anything). A part file nobody holds a lock on is abandoned, and `sweep` removes it; one being
written stays, however long its download stalls. A part file is made and locked while its directory is held
shared, and swept while the directory is held exclusively, so a sweep never finds one made but not yet locked.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.appnode import filetypes
from app.appnode.transport import CHUNK_BYTES


@contextmanager
def _held(directory: Path, operation: int) -> Iterator[None]:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, operation)
        yield
    finally:
        os.close(descriptor)  # and the lock with it


@contextmanager
def part_file(directory: Path, file_id: str) -> Iterator[tuple[Path, int]]:
    """A new part file for `file_id` in `directory` (made if need be), locked for as long as the block runs: its
    path, and its descriptor (the lock's; write through it with `open(descriptor, closefd=False)`). Whatever is
    still under the part's name at the end is removed (a kept file was renamed away), before the lock goes."""
    directory.mkdir(parents=True, exist_ok=True)
    with _held(directory, fcntl.LOCK_SH):
        descriptor, name = tempfile.mkstemp(dir=directory, prefix=f".{file_id}.")
        part = Path(name)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)  # nobody else has it open: taken at once
        except BaseException:
            part.unlink(missing_ok=True)
            os.close(descriptor)
            raise
    try:
        yield part, descriptor
    finally:
        part.unlink(missing_ok=True)
        os.close(descriptor)


def sweep(directory: Path) -> list[str]:
    """Remove the part files in `directory` that no live writer holds (see the module's docstring); their names.
    A directory that is not there has none."""
    removed = []
    try:
        with _held(directory, fcntl.LOCK_EX):
            for entry in os.scandir(directory):
                if not entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    descriptor = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
                except FileNotFoundError:  # renamed into place, or removed, since the directory was read
                    continue
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a download or send still writing it
                finally:
                    # Closed at once whether locked or not: removed below only when the lock was had, and no new
                    # part file can take the name while the directory is held.
                    os.close(descriptor)
                Path(entry.path).unlink(missing_ok=True)
                removed.append(entry.name)
    except FileNotFoundError:
        return []
    return removed


def _read(source: bytes | Path) -> Iterator[bytes | memoryview]:
    if isinstance(source, Path):
        with source.open("rb") as stream:
            while chunk := stream.read(CHUNK_BYTES):
                yield chunk
    else:
        view = memoryview(source)
        for start in range(0, len(view), CHUNK_BYTES):
            yield view[start:start + CHUNK_BYTES]


def copy_into(source: bytes | Path, descriptor: int, limit: int) -> tuple[int, str, bytes]:
    """`source` (bytes, or a file read a chunk at a time: files run to 1 GiB) written to the part file open on
    `descriptor` and synced, hashed on the way: its size, SHA-256 and the head sniffing needs
    (filetypes.SNIFF_BYTES). A file grown past `limit` since it was measured is refused there (413), not copied
    whole."""
    size, digest, head = 0, hashlib.sha256(), b""
    with open(descriptor, "wb", closefd=False) as target:
        for chunk in _read(source):
            size += len(chunk)
            filetypes.check_size(size, limit)
            if len(head) < filetypes.SNIFF_BYTES:
                head += bytes(chunk[:filetypes.SNIFF_BYTES - len(head)])
            digest.update(chunk)
            target.write(chunk)
        target.flush()
        os.fsync(target.fileno())
    return size, digest.hexdigest(), head

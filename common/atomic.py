"""Crash-safe writing of files and directories, one implementation for the whole project.

Everything is staged BESIDE its target (same filesystem, so `os.replace` is atomic), fsynced, and
renamed into place; the parent directory is fsynced after the rename. Staging entries are named
`.tmp-<target name>-<pid>-<random>` and a target moved aside during a swap `.old-<target name>-
<pid>-<random>`, so `remove_orphans` can tell what a killed process left behind (its pid is dead)
from what a running one is writing. `<random>` starts with 4 hex digits of the host name: on a
filesystem shared by several hosts, only the host that wrote an entry judges whether its pid lives.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_ENTRY = re.compile(
    r"^\.(?P<kind>tmp|old)-(?P<name>.+)-(?P<pid>\d+)-(?P<host>[0-9a-f]{4})[0-9a-f]{4,}$"
)


def _host_tag() -> str:
    return hashlib.blake2b(socket.gethostname().encode(), digest_size=2).hexdigest()


def _sibling(target: Path, kind: str) -> Path:
    """`.<kind>-<name>-<pid>-<host tag><random>` beside `target`."""
    return (
        target.parent / f".{kind}-{target.name}-{os.getpid()}-{_host_tag()}{uuid.uuid4().hex[:8]}"
    )


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory by path (directories: best effort where unsupported)."""
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (bottom-up), and `root` itself."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                _fsync_path(path)
        _fsync_path(Path(dirpath))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_orphans(directory: str | Path) -> int:
    """Remove the staging entries in `directory` left by dead processes of this host; return how many.

    `.tmp-*` entries of a dead pid are deleted. An `.old-<name>-*` entry (a previous target moved
    aside by a swap that was killed half-way) is put back when `<name>` is missing, else deleted.
    Entries of live processes, and entries written by other hosts, are kept.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    host = _host_tag()
    removed = 0
    for entry in sorted(directory.iterdir()):
        match = _ENTRY.match(entry.name)
        if match is None or match["host"] != host or _pid_alive(int(match["pid"])):
            continue
        target = directory / match["name"]
        if match["kind"] == "old" and not target.exists():
            try:
                os.replace(entry, target)
                log.warning("restored %s, which an interrupted replace had moved aside", target)
                continue
            except OSError:
                pass
        _remove(entry)
        removed += 1
    if removed:
        log.info(
            "removed %d orphaned temporary entr%s in %s",
            removed,
            "y" if removed == 1 else "ies",
            directory,
        )
    return removed


def _swap_into_place(staged: Path, target: Path, overwrite: bool) -> bool:
    """Rename `staged` onto `target`; return False when `target` was kept (`overwrite=False`)."""
    if target.exists() or target.is_symlink():
        if not overwrite:
            return False
        if target.is_dir() and not target.is_symlink():
            aside = _sibling(target, "old")
            os.replace(target, aside)
            try:
                os.replace(staged, target)
            except BaseException:
                os.replace(aside, target)
                raise
            _fsync_path(target.parent)
            shutil.rmtree(aside, ignore_errors=True)
            return True
    try:
        os.replace(staged, target)
    except OSError:
        # Another writer's directory landed first (renaming onto a non-empty directory fails).
        if overwrite or not target.exists():
            raise
        return False
    _fsync_path(target.parent)
    return True


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty staging directory beside `target`; it becomes `target` when the block succeeds.

    On success every file and directory is fsynced, an existing `target` is moved aside, the staging
    directory `os.replace`s it, the old one is deleted and the parent is fsynced; a crash at any
    point leaves the old or the new `target` (plus an orphan that `remove_orphans`, called first
    on the parent, tidies the next time). On an
    exception the staging directory is removed and the exception re-raised. `overwrite=False` keeps
    an existing (or concurrently published) `target` and discards the staged one: for
    content-addressed caches where any complete copy is as good as another.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target.parent)
    staging = _sibling(target, "tmp")
    staging.mkdir()
    try:
        yield staging
        _fsync_tree(staging)
        if not _swap_into_place(staging, target, overwrite):
            log.info("%s already exists; keeping it", target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target` to write by path (`torch.save(obj, path)`).

    On success the file is fsynced and `os.replace`d onto `target` and the parent fsynced; on an
    exception the temporary file is removed and the exception re-raised.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target.parent)
    tmp = _sibling(target, "tmp")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"{tmp}: nothing was written to the temporary file of {target}")
        _fsync_path(tmp)
        os.replace(tmp, target)
        _fsync_path(target.parent)
    finally:
        if tmp.exists():
            _remove(tmp)


__all__ = ["atomic_directory", "atomic_file", "remove_orphans"]

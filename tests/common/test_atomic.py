"""`common.atomic`: atomic directories and files, and the removal of orphans of killed writers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from common import atomic
from common.atomic import atomic_directory, atomic_file, remove_orphans


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_directory_success_replaces_the_target(tmp_path: Path) -> None:
    target = tmp_path / "store"
    with atomic_directory(target) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(f".tmp-store-{os.getpid()}-")
        (staging / "a.txt").write_text("one")
    assert _tree(target) == {"a.txt": b"one"}
    with atomic_directory(target) as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "b.txt").write_text("two")
    assert _tree(target) == {"sub/b.txt": b"two"}
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_directory_exception_keeps_the_old_target_byte_identical(tmp_path: Path) -> None:
    target = tmp_path / "store"
    with atomic_directory(target) as staging:
        (staging / "a.bin").write_bytes(bytes(range(256)))
    before = _tree(target)
    with pytest.raises(RuntimeError, match="mid-write"), atomic_directory(target) as staging:
        (staging / "a.bin").write_bytes(b"partial")
        raise RuntimeError("mid-write")
    assert _tree(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_directory_without_overwrite_keeps_an_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "store"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("first")
    with atomic_directory(target, overwrite=False) as staging:
        (staging / "a.txt").write_text("second")
    assert _tree(target) == {"a.txt": b"first"}
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_file_success_and_exception(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    with atomic_file(target) as path:
        assert path.parent == tmp_path and path.name.startswith(f".tmp-ckpt.pt-{os.getpid()}-")
        path.write_bytes(b"old")
    with pytest.raises(OSError), atomic_file(target) as path:
        path.write_bytes(b"new but broken")
        raise OSError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    with atomic_file(target) as path:
        path.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from common.atomic import atomic_directory, atomic_file
    root = sys.argv[1]
    with atomic_directory(os.path.join(root, "store")) as staging:
        open(os.path.join(staging, "half.bin"), "wb").write(b"x" * 1000)
        with atomic_file(os.path.join(root, "ckpt.pt")) as path:
            open(path, "wb").write(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_killed_writer_leaves_orphans_that_are_removed_and_live_ones_are_kept(
    tmp_path: Path,
) -> None:
    target = tmp_path / "store"
    with atomic_directory(target) as staging:
        (staging / "good.txt").write_text("complete")
    before = _tree(target)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], env=env)
    assert child.wait(timeout=120) == -signal.SIGKILL
    orphans = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-"))
    assert orphans == sorted(
        [
            n
            for n in orphans
            if n.startswith((f".tmp-store-{child.pid}-", f".tmp-ckpt.pt-{child.pid}-"))
        ]
    )
    assert len(orphans) == 2
    assert _tree(target) == before  # the kill never touched the published store

    # an entry of this (live) process is kept
    live = tmp_path / f".tmp-other-{os.getpid()}-{orphans[0].rsplit('-', 1)[1]}"
    live.mkdir()
    assert remove_orphans(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["store", live.name])
    assert remove_orphans(tmp_path) == 0


def test_directory_moved_aside_by_a_killed_swap_is_restored(tmp_path: Path) -> None:
    target = tmp_path / "export"
    with atomic_directory(target) as staging:
        (staging / "weights").write_text("old")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = atomic._host_tag()
    target.rename(tmp_path / f".old-export-{dead.pid}-{host}0000")  # killed between the renames
    assert remove_orphans(tmp_path) == 0  # restored, not removed
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]

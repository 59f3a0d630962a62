"""Resumable and idempotent: a client killed mid-run (SIGKILL) and rerun loses and duplicates
nothing; a torn last line is cut away and redone; a rerun of a complete run writes nothing new;
a directory of other settings, or in use by another run, is refused."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from common.errors import ConfigError, DataError
from datamodules.synthesis.guideline import Guideline
from datamodules.synthesis.problems import SamplerConfig, draw_groups, read_task_pools
from datamodules.synthesis.runner import SynthesisConfig, main, run_synthesis
from tests.datamodules.synthesis.chat_server import ChatServer
from tests.datamodules.synthesis.conftest import write_tasks

REPO = Path(__file__).resolve().parents[3]
SECRET = "sk-kill-test-SECRET-9876543210"


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _planned_ids(tasks, n: int) -> list[str]:
    pools = read_task_pools(tasks)
    return [
        g.id
        for g in draw_groups(pools, SamplerConfig(num_passages=n), Guideline().fingerprint()).groups
    ]


def test_kill_mid_run_then_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL the command while requests are in flight; the rerun completes: every planned id
    exactly once, none lost, none duplicated, the key in no file and no log line."""
    tasks = write_tasks(tmp_path / "tasks", n=24)
    out = tmp_path / "out"
    config = {
        "output_dir": str(out),
        "tasks": [{"task": t.task, "train": t.train, "test": t.test} for t in tasks],
        "sampler": {"num_passages": 24},
        "backend": {
            "kind": "openai",
            "openai": {
                "base_url": "PLACEHOLDER",
                "model": "slow-model",
                "api_key_env": "ADAPTLM_KILL_KEY",
                "timeout": 5,
                "max_concurrency": 2,
            },
        },
    }
    expected = _planned_ids(tasks, 24)
    with ChatServer(delay=0.25) as server:
        config["backend"]["openai"]["base_url"] = server.url
        config_path = tmp_path / "synthesis.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "ADAPTLM_KILL_KEY": SECRET, "OMP_NUM_THREADS": "1"}
        log_path = tmp_path / "first.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "datamodules.synthesis", "--config", str(config_path)],
                cwd=REPO,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 120
            try:
                while len(_lines(out / "passages.jsonl")) < 4:
                    assert process.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, "no passage written in 120 s"
                    time.sleep(0.02)
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()
        assert process.returncode == -signal.SIGKILL
        before = _lines(out / "passages.jsonl")
        assert 4 <= len(before) < 24, "the run finished before the kill: slow the server down"
        assert len({r["id"] for r in before}) == len(before)
        assert not (out / "manifest.json").exists()  # killed: no manifest yet
        requests_before = len(server.records)
        monkeypatch.setenv("ADAPTLM_KILL_KEY", SECRET)
        result = main(["--config", str(config_path)])
    passages = result.passages()
    ids = [p["id"] for p in passages]
    assert ids == expected  # every id once, in plan order
    assert result.manifest["this_run"]["skipped_already_done"] == len(before)
    assert result.manifest["this_run"]["generated"] == 24 - len(before)
    assert result.manifest["counts"] == {
        **result.manifest["counts"],
        "written": 24,
        "rejected": 0,
        "pending": 0,
    }
    by_id = {p["id"]: p for p in passages}
    for record in before:  # what was written before the kill is kept as it was
        assert by_id[record["id"]] == record
    # requests in flight at the kill were asked again; none asked twice otherwise
    assert len(server.records) - requests_before == 24 - len(before)
    for path in [*out.iterdir(), log_path]:
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace")


def _template_config(tasks, out: Path, **overrides) -> SynthesisConfig:
    values = {"output_dir": str(out), "tasks": tasks, "sampler": SamplerConfig(num_passages=12)}
    values.update(overrides)
    return SynthesisConfig(**values)


def test_torn_last_line_is_redone(tmp_path: Path, tasks) -> None:
    out = tmp_path / "out"
    config = _template_config(tasks, out)
    run_synthesis(config)
    path = out / "passages.jsonl"
    complete = path.read_bytes()
    lines = complete.splitlines(keepends=True)
    torn = b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2]  # killed mid-write
    path.write_bytes(torn)
    result = run_synthesis(config)
    assert result.manifest["this_run"]["torn_lines_repaired"] == 1
    assert result.manifest["this_run"]["generated"] == 1
    assert result.manifest["this_run"]["skipped_already_done"] == 11
    assert path.read_bytes() == complete  # the same passage, written again, same bytes
    # a torn line in the middle of a run (no newline yet) on the rejects file too
    rejects = out / "rejects.jsonl"
    rejects.write_bytes(b'{"id": "abc", "reason": "trunc')
    again = run_synthesis(config)
    assert again.manifest["this_run"]["torn_lines_repaired"] == 1
    assert rejects.read_bytes() == b""


def test_corrupt_line_is_an_error(tmp_path: Path, tasks) -> None:
    out = tmp_path / "out"
    config = _template_config(tasks, out)
    run_synthesis(config)
    path = out / "passages.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = "not json\n"
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=r"passages.jsonl:4: malformed line"):
        run_synthesis(config)


def test_order_is_plan_order_after_resume(tmp_path: Path, tasks) -> None:
    """Passages appended out of order (a resumed run) are rewritten in plan order at the end."""
    out = tmp_path / "out"
    config = _template_config(tasks, out)
    reference = run_synthesis(_template_config(tasks, tmp_path / "ref")).passages()
    run_synthesis(config)
    path = out / "passages.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[5:] + lines[:2]))  # 3..4 lost, order scrambled
    result = run_synthesis(config)
    assert result.passages() == reference
    assert result.manifest["this_run"]["generated"] == 3


def test_duplicated_line_is_dropped(tmp_path: Path, tasks) -> None:
    out = tmp_path / "out"
    config = _template_config(tasks, out)
    reference = run_synthesis(config).passages()
    path = out / "passages.jsonl"
    path.write_text(path.read_text() + json.dumps(reference[2]) + "\n")
    result = run_synthesis(config)
    assert result.manifest["this_run"]["duplicates_dropped"] == 1
    assert result.passages() == reference


def test_other_settings_are_refused_and_force_starts_over(tmp_path: Path, tasks) -> None:
    out = tmp_path / "out"
    run_synthesis(_template_config(tasks, out))
    other = _template_config(tasks, out, guideline=Guideline(enlightenment=False))
    with pytest.raises(ConfigError, match="output_dir.*other settings"):
        run_synthesis(other)
    result = run_synthesis(other, force=True)
    assert result.manifest["counts"]["written"] == 12
    assert not any(p["enlightenment"] for p in result.passages())


def test_num_passages_raised_appends_and_lowered_is_refused(tmp_path: Path, tasks) -> None:
    out = tmp_path / "out"
    small = run_synthesis(_template_config(tasks, out, sampler=SamplerConfig(num_passages=6)))
    first = small.passages()
    more = run_synthesis(_template_config(tasks, out))
    assert more.manifest["this_run"]["skipped_already_done"] == 6
    assert more.passages()[:6] == first and len(more.passages()) == 12
    with pytest.raises(ConfigError, match="sampler.num_passages"):
        run_synthesis(_template_config(tasks, out, sampler=SamplerConfig(num_passages=4)))


def test_directory_in_use_or_not_ours(tmp_path: Path, tasks) -> None:
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="another synthesis run"):
            run_synthesis(_template_config(tasks, out))
    finally:
        os.close(fd)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files"):
        run_synthesis(_template_config(tasks, out))


def test_world_template_needs_facts(tmp_path: Path) -> None:
    tasks = write_tasks(
        tmp_path, n=2, extra_train={"comparison": [{"question": "Q?", "answer": "A"}]}
    )
    config = _template_config(tasks, tmp_path / "out", sampler=SamplerConfig(num_passages=3))
    with pytest.raises(DataError, match=r"comparison_train.jsonl:3: .*has none"):
        run_synthesis(config)

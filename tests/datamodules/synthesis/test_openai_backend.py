"""The OpenAI-compatible backend against a loopback chat-completions server with injected faults:
retries with backoff (a fake sleep, so no time passes), rejects counted and written, no id lost
or duplicated, and the API key in the Authorization header only, never in an output or a log."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from common.errors import ConfigError
from datamodules.synthesis.backends import BackendConfig, OpenAIBackend, OpenAIConfig
from datamodules.synthesis.backends.openai_compat import AuthError, parse_retry_after
from datamodules.synthesis.problems import SamplerConfig, TaskSource, draw_groups, read_task_pools
from datamodules.synthesis.runner import SynthesisConfig, run_synthesis
from tests.datamodules.synthesis.chat_server import ChatServer

SECRET = "sk-test-THIS-MUST-NEVER-BE-WRITTEN-0123456789"


class FakeSleep:
    """Records the backoffs instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def _config(tasks: list[TaskSource], out: Path, url: str, **backend) -> SynthesisConfig:
    settings = {
        "base_url": url,
        "model": "test-model",
        "api_key_env": "ADAPTLM_TEST_KEY",
        "timeout": 2.0,
        "max_concurrency": 4,
        "max_retries": 3,
        "backoff_base": 0.5,
        "backoff_max": 4.0,
        **backend,
    }
    return SynthesisConfig(
        output_dir=str(out),
        tasks=tasks,
        sampler=SamplerConfig(num_passages=12),
        backend=BackendConfig(kind="openai", openai=OpenAIConfig(**settings)),
    )


def _run(config: SynthesisConfig, sleep: FakeSleep | None = None, **kwargs):
    backend = OpenAIBackend(config.backend.openai, sleep=sleep or FakeSleep(), rng=random.Random(0))
    return run_synthesis(config, backend=backend, **kwargs)


def _keys(tasks: list[TaskSource]) -> list[tuple[str, str]]:
    """`(id, first question)` of every planned group (the server's key), in plan order."""
    from datamodules.synthesis.guideline import Guideline

    pools = read_task_pools(tasks)
    groups = draw_groups(pools, SamplerConfig(num_passages=12), Guideline().fingerprint()).groups
    return [(g.id, g.problems[0].question) for g in groups]


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ADAPTLM_TEST_KEY", SECRET)
    return SECRET


def _assert_no_secret(out: Path, caplog: pytest.LogCaptureFixture) -> None:
    for path in out.iterdir():
        if path.is_file():
            assert SECRET not in path.read_text(encoding="utf-8", errors="replace"), path
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in str(record.args)


def test_happy_path(tmp_path: Path, tasks, key_env, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    with ChatServer() as server:
        result = _run(_config(tasks, tmp_path / "out", server.url))
    passages = result.passages()
    expected = [i for i, _ in _keys(tasks)]
    assert [p["id"] for p in passages] == expected
    assert result.complete and result.manifest["counts"]["written"] == 12
    assert result.manifest["counts"]["retried"] == 0
    assert len(server.records) == 12
    for record in server.records:
        assert record["path"] == "/v1/chat/completions"
        assert record["headers"]["Authorization"] == f"Bearer {SECRET}"
        body = record["body"]
        assert body["model"] == "test-model" and body["messages"][0]["role"] == "system"
    settings = result.manifest["settings"]["backend"]
    assert settings["api_key_env"] == "ADAPTLM_TEST_KEY" and settings["api_key_set"] is True
    assert all(p["backend"] == "openai" and p["model"] == "test-model" for p in passages)
    _assert_no_secret(tmp_path / "out", caplog)
    assert SECRET not in repr(OpenAIBackend(_config(tasks, tmp_path, server.url).backend.openai))


def test_fault_plan(tmp_path: Path, tasks, key_env, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    keys = _keys(tasks)
    plan = {
        keys[0][1]: ["429", "429", "ok"],
        keys[1][1]: ["429:1.5", "ok"],
        keys[2][1]: ["500", "503", "502", "ok"],
        keys[3][1]: ["hang", "ok"],
        keys[4][1]: ["malformed"],
        keys[5][1]: ["truncated"],
        keys[6][1]: ["missing_paragraph"],
        keys[7][1]: ["400"],
        keys[8][1]: ["500", "500", "500", "500", "500"],
        keys[9][1]: ["wrong_answer"],
        keys[10][1]: ["no_choices"],
        keys[11][1]: ["429:date", "ok"],
    }
    sleep = FakeSleep()
    out = tmp_path / "out"
    with ChatServer(plan, hang_seconds=3.0) as server:  # longer than the client's timeout
        result = _run(_config(tasks, out, server.url, timeout=1.0), sleep)
    ids = [i for i, _ in keys]
    passages = {p["id"]: p for p in result.passages()}
    rejects = {r["id"]: r for r in result.rejects()}
    # every id exactly once, as a passage or as a (final) reject
    assert sorted([*passages, *rejects]) == sorted(ids)
    assert not set(passages) & set(rejects)
    assert set(passages) == {ids[i] for i in (0, 1, 2, 3, 11)}
    reasons = {ids.index(i): r["reason"] for i, r in rejects.items()}
    assert reasons == {
        4: "malformed_response",
        5: "truncated",
        6: "missing_problem_paragraph",
        7: "http_400",
        8: "retries_exhausted",
        9: "wrong_answer",
        10: "malformed_response",
    }
    assert rejects[ids[4]]["raw"].startswith('{"choices"')  # the body, kept for inspection
    assert rejects[ids[5]]["finish_reason"] == "length"
    assert all(r["final"] and r["attempt"] == 1 for r in rejects.values())
    # retries: 2 + 1 + 3 + 1 (timeout) + 3 (exhausted) + 1
    assert passages[ids[0]]["retries"] == 2 and passages[ids[3]]["retries"] == 1
    assert rejects[ids[8]]["retries"] == 3
    assert result.manifest["counts"]["retried"] == 11 == len(sleep.calls)
    assert len(server.requests_for(keys[7][1])) == 1  # a 400 is not retried
    assert len(server.requests_for(keys[8][1])) == 4  # 1 + max_retries
    counts = result.manifest["counts"]
    assert (counts["written"], counts["rejected"], counts["pending"]) == (5, 7, 0)
    assert result.manifest["reject_reasons"]["malformed_response"] == 2
    # Retry-After is honoured (1.5 s and an HTTP date 2 s ahead: at least ~1 s), full jitter
    # otherwise stays within backoff_base * 2^retry
    assert sum(1 for s in sleep.calls if s >= 1.5) >= 1
    assert sum(1 for s in sleep.calls if s >= 0.9) >= 2
    assert all(0 <= s <= 4.0 for s in sleep.calls if s < 1.5)
    _assert_no_secret(out, caplog)


def test_backoff_is_exponential_with_full_jitter_and_retry_after() -> None:
    config = OpenAIConfig(model="m", api_key_env=None, backoff_base=1.0, backoff_max=8.0)
    backend = OpenAIBackend(config, rng=random.Random(1))
    draws = {r: [backend.backoff(r, None) for _ in range(300)] for r in range(6)}
    for retry, values in draws.items():
        cap = min(8.0, 2.0**retry)
        assert all(0 <= v <= cap for v in values)
        assert max(values) > 0.8 * cap  # full jitter reaches the cap
        assert min(values) < 0.2 * cap  # and goes down to 0
    assert backend.backoff(0, 5.0) >= 5.0
    assert backend.backoff(0, 10_000.0) == config.retry_after_max
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_reask_after_reject(tmp_path: Path, tasks, key_env) -> None:
    keys = _keys(tasks)
    plan = {keys[0][1]: ["malformed", "ok"], keys[1][1]: ["truncated", "truncated", "truncated"]}
    config = _config(tasks, tmp_path / "out", "")
    with ChatServer(plan) as server:
        config.backend.openai.base_url = server.url
        config.max_attempts = 2
        result = _run(config)
        passages = {p["id"]: p for p in result.passages()}
        assert passages[keys[0][0]]["attempt"] == 2
        rejects = result.rejects()
        assert [(r["id"], r["attempt"], r["final"]) for r in rejects] == [
            (keys[0][0], 1, False),
            (keys[1][0], 1, False),
            (keys[1][0], 2, True),
        ]
        counts = result.manifest["counts"]
        assert (counts["written"], counts["rejected"], counts["reasked"]) == (11, 1, 2)
        # raising max_attempts on a rerun asks the finally rejected one again (and only it)
        config.max_attempts = 3
        before = len(server.records)
        again = _run(config)
        assert len(server.records) - before == 1
        assert again.manifest["counts"]["rejected"] == 1
        assert again.manifest["this_run"]["skipped_already_done"] == 11
        assert [r["attempt"] for r in again.rejects() if r["id"] == keys[1][0]] == [1, 2, 3]


def test_connection_errors_are_retried(tmp_path: Path, tasks) -> None:
    keys = _keys(tasks)
    config = _config(tasks, tmp_path / "out", "", api_key_env=None, max_concurrency=1)
    with ChatServer({keys[2][1]: ["drop", "drop", "ok"]}) as server:
        config.backend.openai.base_url = server.url
        result = _run(config)
    assert result.manifest["counts"]["written"] == 12
    assert "Authorization" not in server.records[0]["headers"]  # api_key_env: null


def test_unreachable_server_exhausts_retries(tmp_path: Path, tasks) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = _config(tasks, tmp_path / "out", f"http://127.0.0.1:{port}/v1", api_key_env=None)
    config.sampler.num_passages = 2
    sleep = FakeSleep()
    result = _run(config, sleep)
    assert [r["reason"] for r in result.rejects()] == ["retries_exhausted"] * 2
    assert "connection error" in result.rejects()[0]["detail"]
    assert len(sleep.calls) == 6


def test_unauthorized_stops_the_run_and_rerun_continues(tmp_path: Path, tasks, key_env) -> None:
    keys = _keys(tasks)
    config = _config(tasks, tmp_path / "out", "", max_concurrency=1)
    with ChatServer({keys[3][1]: ["401"]}) as server:
        config.backend.openai.base_url = server.url
        with pytest.raises(AuthError, match=r"backend.openai.api_key_env.*ADAPTLM_TEST_KEY"):
            _run(config)
        written = [
            json.loads(x) for x in (tmp_path / "out/passages.jsonl").read_text().splitlines()
        ]
        assert 3 <= len(written) < 12
        assert not (tmp_path / "out/rejects.jsonl").read_text()
        manifest = json.loads((tmp_path / "out/manifest.json").read_text())
        assert manifest["complete"] is False and manifest["counts"]["pending"] > 0
        result = _run(config)
    assert [p["id"] for p in result.passages()] == [i for i, _ in keys]
    assert result.manifest["this_run"]["skipped_already_done"] == len(written)


def test_key_from_environment_only(tmp_path: Path, tasks, monkeypatch) -> None:
    config = _config(tasks, tmp_path / "out", "http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match="ADAPTLM_TEST_KEY is not set"):
        OpenAIBackend(config.backend.openai)
    with pytest.raises(ConfigError, match="backend.openai.model"):
        OpenAIConfig(model="").validate()
    with pytest.raises(ConfigError, match="backend.openai.base_url"):
        OpenAIConfig(model="m", base_url="localhost:8000").validate()

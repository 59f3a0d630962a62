"""`openai`: any OpenAI-compatible `/chat/completions` endpoint (a hosted API, a vLLM server).

Standard library only (`http.client`, one kept-alive connection per worker thread). Requests run
in a thread pool of `max_concurrency` workers; each response is yielded as it completes.

- **Retries.** A 429, a 408, a 5xx, a timeout (no byte for `timeout` seconds) or a connection
  error is retried up to `max_retries` times, after an exponential backoff with full jitter:
  `uniform(0, min(backoff_max, backoff_base · 2^retry))` seconds, or at least the server's
  `Retry-After` (seconds or an HTTP date, capped at `retry_after_max`). A request still failing
  is a reject, `retries_exhausted`. A stale kept-alive connection that the server closed is
  reopened at once (not a retry).
- **Other 4xx.** A 400, 404, 422, ... is a reject of that passage (`http_<status>`, the body kept
  for inspection), never retried. A 401 or 403 stops the run (one line naming `api_key_env`):
  every request would fail the same way, and nothing written is lost.
- **Responses.** `choices[0].message.content` and `finish_reason`; a body that is not JSON or has
  no string content is a reject, `malformed_response`, its text kept.
- **The API key** is read from the environment variable *named* by `api_key_env` (default
  `OPENAI_API_KEY`) when the backend is built, and sent as `Authorization: Bearer <key>` (or
  the raw key in `api_key_header` when that is another header, e.g. Azure's `api-key`). Only the
  variable's name is in the settings, the manifest and the logs; the key is held in a private
  attribute and never formatted into a message. `api_key_env: null`: no key (a local vLLM).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from common.errors import ConfigError
from datamodules.synthesis.backends.base import Backend, GenerationRequest, GenerationResponse

log = logging.getLogger("datamodules.synthesis")

RAW_LIMIT = 4000
"""Characters of an unreadable body kept in `rejects.jsonl`."""
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


@dataclass
class OpenAIConfig:
    """An OpenAI-compatible chat-completions endpoint.

    Args:
        base_url: The API root, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`
            (vLLM); requests go to `<base_url>/chat/completions`.
        model: The model name the endpoint serves.
        api_key_env: Name of the environment variable holding the API key (never the key
            itself); null: no key.
        api_key_header: Header carrying the key: `Authorization` sends `Bearer <key>`, any other
            header the raw key.
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass.
        max_tokens: Most tokens per passage (a passage cut there is rejected as truncated).
        seed: Sampling seed sent to the endpoint (plus the attempt number); null: none.
        extra_body: Further request fields (e.g. vLLM's `top_k`, `repetition_penalty`).
        timeout: Seconds without a byte from the server before a request counts as timed out.
        max_concurrency: Requests in flight at once.
        max_retries: Retries of a request after 429 / 408 / 5xx / timeout / connection errors.
        backoff_base: Backoff of the first retry, in seconds (doubling per retry, full jitter).
        backoff_max: The longest backoff, in seconds.
        retry_after_max: The longest `Retry-After` honoured, in seconds.
    """

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    api_key_env: str | None = "OPENAI_API_KEY"
    api_key_header: str = "Authorization"
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout: float = 120.0
    max_concurrency: int = 8
    max_retries: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    retry_after_max: float = 300.0

    def validate(self, key: str = "backend.openai") -> None:
        parts = urlsplit(self.base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{key}.base_url", f"must be an http(s) URL, got {self.base_url!r}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"{key}.model", "is required: the model name the endpoint serves")
        if self.api_key_env is not None and (
            not isinstance(self.api_key_env, str) or not self.api_key_env.strip()
        ):
            raise ConfigError(f"{key}.api_key_env", "must be an environment variable name or null")
        for name in ("max_tokens", "max_concurrency"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key}.{name}", f"must be an integer >= 1, got {value!r}")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(
                f"{key}.max_retries", f"must be an integer >= 0, got {self.max_retries!r}"
            )
        for name in ("timeout", "backoff_base", "backoff_max", "retry_after_max"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or value < 0
                or (name == "timeout" and value == 0)
            ):
                raise ConfigError(f"{key}.{name}", f"must be a number > 0, got {value!r}")
        if not isinstance(self.extra_body, dict):
            raise ConfigError(f"{key}.extra_body", "must be a mapping of request fields")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class AuthError(ConfigError):
    """The endpoint refused the key (401/403): the run stops."""


class OpenAIBackend(Backend):
    """Chat completions over HTTP with a concurrency limit, retries and backoff (module docstring).

    `sleep` and `rng` are injectable (tests pass a recording sleep, so backoffs take no time).
    """

    kind = "openai"

    def __init__(
        self,
        config: OpenAIConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        key: str = "backend.openai",
    ) -> None:
        config.validate(key)
        self.config = config
        self._key_name = key
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._api_key: str | None = None
        if config.api_key_env is not None:
            value = os.environ.get(config.api_key_env)
            if not value:
                raise ConfigError(
                    f"{key}.api_key_env",
                    f"the environment variable {config.api_key_env} is not set (export the API "
                    "key there, or set api_key_env: null for an endpoint without a key)",
                )
            self._api_key = value
        parts = urlsplit(config.base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = parts.path.rstrip("/") + "/chat/completions"
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self.requests_sent = 0

    def __repr__(self) -> str:  # never the key
        return f"OpenAIBackend(base_url={self.config.base_url!r}, model={self.config.model!r})"

    @property
    def model(self) -> str:
        return self.config.model

    def identity(self) -> dict[str, Any]:
        c = self.config
        return {
            "kind": self.kind,
            "model": c.model,
            "temperature": c.temperature,
            "top_p": c.top_p,
            "max_tokens": c.max_tokens,
            "seed": c.seed,
            "extra_body": c.extra_body,
        }

    def settings(self) -> dict[str, Any]:
        c = self.config
        return {
            **self.identity(),
            "base_url": c.base_url,
            "api_key_env": c.api_key_env,
            "api_key_header": c.api_key_header,
            "api_key_set": self._api_key is not None,
            "timeout": c.timeout,
            "max_concurrency": c.max_concurrency,
            "max_retries": c.max_retries,
            "backoff_base": c.backoff_base,
            "backoff_max": c.backoff_max,
            "retry_after_max": c.retry_after_max,
        }

    # --- HTTP -------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key is not None:
            header = self.config.api_key_header
            bearer = header.lower() == "authorization"
            headers[header] = f"Bearer {self._api_key}" if bearer else self._api_key
        return headers

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection and whether it was used before (may be stale)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection, True
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host,
                self._port,
                timeout=self.config.timeout,
                context=ssl.create_default_context(),
            )
        else:
            connection = http.client.HTTPConnection(
                self._host, self._port, timeout=self.config.timeout
            )
        self._local.connection = connection
        with self._lock:
            self._connections.append(connection)
        return connection, False

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)

    def _post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One POST; a stale kept-alive connection is reopened once (not a retry)."""
        for fresh_try in (False, True):
            connection, reused = self._connection()
            try:
                connection.request("POST", self._path, body=body, headers=self._headers())
                response = connection.getresponse()
                data = response.read()
            except _STALE:
                self._drop_connection()
                if reused and not fresh_try:
                    continue
                raise
            except BaseException:
                self._drop_connection()
                raise
            headers = {k.lower(): v for k, v in response.getheaders()}
            if response.will_close:
                self._drop_connection()
            with self._lock:
                self.requests_sent += 1
            return response.status, headers, data
        raise AssertionError("unreachable")

    def backoff(self, retry: int, retry_after: float | None) -> float:
        """Seconds before retry number `retry` (0-based): full jitter, at least `Retry-After`."""
        c = self.config
        delay = self._rng.uniform(0.0, min(c.backoff_max, c.backoff_base * (2.0**retry)))
        if retry_after is not None:
            delay = max(delay, min(retry_after, c.retry_after_max))
        return delay

    def payload(self, request: GenerationRequest) -> dict[str, Any]:
        c = self.config
        body: dict[str, Any] = {
            "model": c.model,
            "messages": request.messages,
            "temperature": c.temperature,
            "top_p": c.top_p,
            "max_tokens": c.max_tokens,
            "n": 1,
        }
        if c.seed is not None:
            body["seed"] = c.seed + request.attempt - 1
        body.update(c.extra_body)
        return body

    def complete(self, request: GenerationRequest) -> GenerationResponse:
        """One request with its retries (runs in a worker thread)."""
        body = json.dumps(self.payload(request), ensure_ascii=False).encode()
        retries = 0
        while True:
            retry_after = None
            try:
                status, headers, data = self._post(body)
            except TimeoutError:
                failure = "timeout"
            except (OSError, http.client.HTTPException) as error:
                failure = f"connection error ({type(error).__name__})"
            else:
                if status == 200:
                    return self._read(request, data, retries)
                if status in (401, 403):
                    env = self.config.api_key_env
                    hint = f"check the key in ${env}" if env else "no key is sent; set api_key_env"
                    raise AuthError(
                        f"{self._key_name}.api_key_env",
                        f"the endpoint answered {status} (not authorized): {hint}",
                    )
                if status in (408, 429) or status >= 500:
                    failure = f"HTTP {status}"
                    retry_after = parse_retry_after(headers.get("retry-after"))
                else:
                    text = data[:RAW_LIMIT].decode("utf-8", errors="replace")
                    return GenerationResponse(
                        request.id,
                        error=f"http_{status}",
                        detail=f"the endpoint answered {status}: {' '.join(text.split())[:200]}",
                        raw=text,
                        retries=retries,
                    )
            if retries >= self.config.max_retries:
                return GenerationResponse(
                    request.id,
                    error="retries_exhausted",
                    detail=f"{failure} after {retries} retries",
                    retries=retries,
                )
            delay = self.backoff(retries, retry_after)
            log.debug("passage %s: %s; retry %d in %.2f s", request.id, failure, retries + 1, delay)
            self._sleep(delay)
            retries += 1

    def _read(self, request: GenerationRequest, data: bytes, retries: int) -> GenerationResponse:
        text = data.decode("utf-8", errors="replace")
        try:
            body = json.loads(text)
            choice = body["choices"][0]
            content = choice["message"]["content"]
            if not isinstance(content, str):
                raise TypeError(f"content is {type(content).__name__}")
        except (ValueError, KeyError, IndexError, TypeError) as error:
            return GenerationResponse(
                request.id,
                error="malformed_response",
                detail=f"not a chat completion ({type(error).__name__}: {error})"[:300],
                raw=text[:RAW_LIMIT],
                retries=retries,
            )
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        return GenerationResponse(
            request.id,
            text=content,
            finish_reason=choice.get("finish_reason"),
            retries=retries,
            usage=usage,
        )

    # --- the backend ------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationResponse]:
        if not requests:
            return
        pool = ThreadPoolExecutor(
            max_workers=min(self.config.max_concurrency, len(requests)),
            thread_name_prefix="synthesis-http",
        )
        try:
            futures = [pool.submit(self.complete, request) for request in requests]
            for future in as_completed(futures):
                yield future.result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()


__all__ = ["AuthError", "OpenAIBackend", "OpenAIConfig", "parse_retry_after"]

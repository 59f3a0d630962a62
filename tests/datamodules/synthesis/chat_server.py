"""A loopback HTTP server speaking the OpenAI chat-completions protocol, with a scripted fault plan.

It answers a valid passage built from the request's problems (the `Question: …` / `Answer: …`
lines of the guideline's user message), unless the fault plan says otherwise. The plan maps a
request's *key* (its first question) to a list of actions consumed one per request with that
key; `default` applies to every key without its own list; after the list, `ok`. Actions:

- `ok`: a valid passage; `429`: Too Many Requests without `Retry-After`; `429:<seconds>`: with
  `Retry-After: <seconds>`; `429:date`: with an HTTP-date `Retry-After` 2 s ahead;
  `500`, `502`, `503`, `400`, `401`, `404`: that status with a JSON error body;
- `hang`: no answer for `hang_seconds` (longer than the client's timeout), then a valid one;
- `malformed`: a 200 whose body is not JSON; `no_choices`: JSON without `choices`;
- `truncated`: a passage cut in the middle with `finish_reason: length`;
- `missing_paragraph`: the last problem's paragraph left out; `wrong_answer`: the first
  answer changed; `no_enlightenment`: the closing paragraph left out;
- `drop`: the connection closed without an answer.

Every request is recorded (`records`: key, action, headers, body), thread-safe.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PROBLEM = re.compile(r"^Question: (?P<q>.*)\nAnswer: (?P<a>.*)$", re.MULTILINE)


def problems_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    """`(question, answer)` of every problem in the request's user message."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return [(m["q"].strip(), m["a"].strip()) for m in _PROBLEM.finditer(user)]


def wants_enlightenment(body: dict[str, Any]) -> bool:
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return "closing paragraph" in user


def valid_passage(problems: list[tuple[str, str]], enlightenment: bool) -> str:
    paragraphs = [
        f"Question: {q}\nAnswer: {a}\nThe facts given for this problem lead to this answer "
        "step by step."
        for q, a in problems
    ]
    if enlightenment:
        paragraphs.append(
            "All of these problems rest on facts about the same kind of people; they differ in "
            "what each one asks for and how its answer is found from those facts."
        )
    return "\n\n".join(paragraphs)


class ChatServer:
    """The server (see the module docstring); use as a context manager or `start()`/`stop()`."""

    def __init__(
        self,
        faults: dict[str, list[str]] | None = None,
        *,
        default: list[str] | None = None,
        delay: float = 0.0,
        hang_seconds: float = 1.0,
    ) -> None:
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.default = list(default or [])
        self._default_left: dict[str, list[str]] = {}
        self.delay = delay
        self.hang_seconds = hang_seconds
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def next_action(self, key: str) -> str:
        with self._lock:
            if key in self.faults:
                plan = self.faults[key]
            else:
                plan = self._default_left.setdefault(key, list(self.default))
            return plan.pop(0) if plan else "ok"

    def requests_for(self, key: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records if r["key"] == key]

    def start(self) -> ChatServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def _completion(self, text: str, finish_reason: str = "stop") -> bytes:
                return json.dumps(
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": finish_reason,
                            }
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 20},
                    }
                ).encode()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                problems = problems_of(body)
                key = problems[0][0] if problems else ""
                action = server.next_action(key)
                with server._lock:
                    server.records.append(
                        {
                            "key": key,
                            "action": action,
                            "path": self.path,
                            "headers": dict(self.headers.items()),
                            "body": body,
                            "time": time.monotonic(),
                        }
                    )
                if server.delay:
                    server._stop.wait(server.delay)
                enlightenment = wants_enlightenment(body)
                passage = valid_passage(problems, enlightenment)
                # BrokenPipe / reset: the client gave up (a timeout)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(action, problems, enlightenment, passage)

            def _answer(
                self, action: str, problems: list, enlightenment: bool, passage: str
            ) -> None:
                status, _, argument = action.partition(":")
                if action == "ok":
                    self._send(200, self._completion(passage))
                elif status == "429":
                    headers = {}
                    if argument == "date":
                        headers["Retry-After"] = email.utils.formatdate(
                            time.time() + 2, usegmt=True
                        )
                    elif argument:
                        headers["Retry-After"] = argument
                    self._send(429, b'{"error": {"message": "rate limited"}}', headers)
                elif status.isdigit():
                    self._send(int(status), b'{"error": {"message": "scripted error"}}')
                elif action == "hang":
                    server._stop.wait(server.hang_seconds)
                    self._send(200, self._completion(passage))
                elif action == "malformed":
                    self._send(200, b'{"choices": [{"message": {"content": "Question: unterminated')
                elif action == "no_choices":
                    self._send(200, b'{"object": "chat.completion", "choices": []}')
                elif action == "truncated":
                    self._send(200, self._completion(passage[: len(passage) // 2], "length"))
                elif action == "missing_paragraph":
                    self._send(200, self._completion(valid_passage(problems[:-1], enlightenment)))
                elif action == "wrong_answer":
                    changed = [(problems[0][0], "something else"), *problems[1:]]
                    self._send(200, self._completion(valid_passage(changed, enlightenment)))
                elif action == "no_enlightenment":
                    self._send(200, self._completion(valid_passage(problems, False)))
                elif action == "drop":
                    self.close_connection = True
                    self.connection.close()
                else:
                    raise AssertionError(f"unknown scripted action {action!r}")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def chat_server(**kwargs: Any) -> Iterator[ChatServer]:
    """`with chat_server(faults=...) as server:` the server, stopped afterwards."""
    server = ChatServer(**kwargs)
    with server:
        yield server


__all__ = ["ChatServer", "chat_server", "problems_of", "valid_passage"]

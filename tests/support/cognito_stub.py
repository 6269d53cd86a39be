"""An HTTP server speaking Cognito's JSON protocol (x-amz-json-1.1), answering what a test
programs: the errors moto cannot produce, slow answers, 5xx, Cognito's own rate limit. It records
every request it gets."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None  # sent as is instead of the JSON body
    content_type: str = "application/x-amz-json-1.1"
    # Answer only once the test sets it (at most 30 s): "Cognito has not answered yet" for as
    # long as the test needs, however slow the machine.
    hold: threading.Event | None = None


def error(code: str, message: str = "stub error", status: int = 400) -> Reply:
    return Reply(status, {"__type": code, "message": message})


@dataclass
class Received:
    target: str
    body: dict[str, Any]
    authorization: str
    at: float = field(default_factory=time.monotonic)  # when it arrived
    throttled: bool = False  # answered TooManyRequestsException by the stub's rate limit
    # The request as it came: method, path, headers in order, body bytes.
    method: str = ""
    path: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    raw: bytes = b""


# What Cognito answers a request over its rate limit (an HTTP 400 with this code).
THROTTLED = error("TooManyRequestsException", "Rate exceeded")
THROTTLE_WINDOW = 1.0  # seconds: Cognito's quotas are requests per second


def max_in_window(times: Sequence[float], width: float = 1.0, after: float | None = None) -> int:
    """The most arrivals in any window [t, t + width), t ranging over the arrival times; only
    arrivals at or after `after` count. The stub's throttle keeps this at or below
    `throttle_above` for the arrival times of the requests it accepted."""
    kept = sorted(t for t in times if after is None or t >= after)
    most = 0
    end = 0
    for start, t in enumerate(kept):
        end = max(end, start)
        while end < len(kept) and kept[end] < t + width:
            end += 1
        most = max(most, end - start)
    return most


# Custom attributes of the pool the stub describes; standard ones always exist.
DEFAULT_CUSTOM = ("tier", "role", "nickname", "country", "level", "pref_color")


def describe_reply(
    custom: tuple[str, ...] = DEFAULT_CUSTOM, auto_verified: tuple[str, ...] = ()
) -> Reply:
    return Reply(
        body={
            "UserPool": {
                "Id": "stub",
                "SchemaAttributes": [
                    {"Name": f"custom:{name}", "AttributeDataType": "String", "Mutable": True}
                    for name in custom
                ],
                "AutoVerifiedAttributes": list(auto_verified),
            }
        }
    )


class CognitoStub:
    """Programmed replies answer AdminUpdateUserAttributes; DescribeUserPool gets `describe`."""

    def __init__(self, backlog: int = 5) -> None:
        """`backlog`: the listen queue; a burst of new connections beyond it is dropped (a
        write whose connection dropped has an unknown outcome: load tests raise it)."""
        self.replies: deque[Reply] = deque()
        self.default = Reply()
        self.describe = describe_reply()
        self.received: list[Received] = []
        # Cognito's rate limit on AdminUpdateUserAttributes: an update arriving when this many
        # were accepted in the last THROTTLE_WINDOW is answered THROTTLED (a programmed reply
        # stays queued for the next accepted one). None: no limit.
        self.throttle_above: int | None = None
        self._accepted: deque[float] = deque()  # arrival times of accepted updates, in order
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                target = self.headers.get("X-Amz-Target", "")
                body = json.loads(raw or b"{}")
                with stub._lock:
                    # One clock reading both decides and is recorded: a test checking the
                    # recorded times with max_in_window sees exactly what the throttle saw.
                    now = time.monotonic()
                    throttled = target.endswith(".AdminUpdateUserAttributes") and stub._over(now)
                    stub.received.append(
                        Received(
                            target,
                            body,
                            self.headers.get("Authorization", ""),
                            at=now,
                            throttled=throttled,
                            method=self.command,
                            path=self.path,
                            headers=tuple(self.headers.items()),
                            raw=raw,
                        )
                    )
                    if throttled:
                        reply = THROTTLED
                    elif target.endswith(".DescribeUserPool"):
                        reply = stub.describe
                    else:
                        reply = stub.replies.popleft() if stub.replies else stub.default
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.hold is not None:
                    reply.hold.wait(30)
                payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (a read timeout under test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server_class = type("StubServer", (ThreadingHTTPServer,), {"request_queue_size": backlog})
        self._server = server_class(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _over(self, now: float) -> bool:
        """Whether an update arriving `now` is over the rate limit; if not, it is counted as
        accepted. Called with the lock held. Accepted updates are counted while no limit is
        set too: a limit set mid-test sees the second before it, as Cognito would."""
        while self._accepted and self._accepted[0] <= now - THROTTLE_WINDOW:
            self._accepted.popleft()
        if self.throttle_above is not None and len(self._accepted) >= self.throttle_above:
            return True
        self._accepted.append(now)
        return False

    def program(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def calls(self, operation: str = "AdminUpdateUserAttributes") -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.target.endswith("." + operation)]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""A Cognito stand-in for load: HTTP/1.1 keep-alive on asyncio, Nagle off, Cognito's JSON protocol
(x-amz-json-1.1, the operation in X-Amz-Target), every answer after a configurable latency. It
checks no signature and keeps no state beyond counters, so thousands of connections waiting out
a one-second latency cost it next to nothing.

    python -m perf.stub [--latency SECONDS]

prints {"port": N} once listening and serves until SIGTERM (or, with --until-stdin-closes, until
its stdin closes: the parent ended). Control requests,
not Cognito's: POST /__bench/latency with body {"seconds": S}; GET /__bench/stats answers the
counts of each operation and the connections open now and at most.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import uuid
from collections import Counter

from perf.lifetime import until_stopped
from perf.procstat import raise_nofile
from support.cognito_stub import describe_reply

CONTENT_TYPE = b"application/x-amz-json-1.1"
PREFIX = b"AWSCognitoIdentityProviderService."
# The pool DescribeUserPool describes: the tests' stub's (a few custom attributes; the standard
# ones always exist), a shape attrgate accepts.
DESCRIBE = describe_reply().body


class Stub:
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.counts: Counter[str] = Counter()
        self.open = 0
        self.most_open = 0

    def answer(self, target: bytes, body: bytes) -> tuple[int, bytes]:
        operation = target[len(PREFIX) :] if target.startswith(PREFIX) else target
        name = operation.decode("ascii", "replace")
        self.counts[name] += 1
        if operation == b"AdminUpdateUserAttributes":
            return 200, b"{}"
        if operation == b"DescribeUserPool":
            return 200, json.dumps(DESCRIBE).encode()
        if operation == b"AdminGetUser":
            asked = json.loads(body or b"{}")
            user = {
                "Username": asked.get("Username", "user"),
                "UserAttributes": [
                    {"Name": "sub", "Value": str(uuid.uuid5(uuid.NAMESPACE_URL, repr(asked)))}
                ],
                "Enabled": True,
                "UserStatus": "CONFIRMED",
            }
            return 200, json.dumps(user).encode()
        error = {"__type": "InvalidParameterException", "message": f"stub: no {name}"}
        return 400, json.dumps(error).encode()

    def control(self, path: bytes, body: bytes) -> tuple[int, bytes]:
        if path == b"/__bench/latency":
            self.latency = float(json.loads(body)["seconds"])
            return 200, json.dumps({"latency": self.latency}).encode()
        if path == b"/__bench/stats":
            stats = {"counts": dict(self.counts), "open": self.open, "most_open": self.most_open}
            return 200, json.dumps(stats).encode()
        return 404, b"{}"

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                path = lines[0].split(b" ")[1]
                length = 0
                target = b""
                close = lines[0].endswith(b"HTTP/1.0")
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"x-amz-target":
                        target = value.strip()
                    elif name == b"connection":
                        close = value.strip().lower() == b"close"
                body = await reader.readexactly(length) if length else b""
                if path.startswith(b"/__bench/"):
                    status, payload = self.control(path, body)
                else:
                    if self.latency > 0:
                        await asyncio.sleep(self.latency)
                    status, payload = self.answer(target, body)
                writer.write(
                    b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nx-amzn-RequestId: %s\r\n"
                    b"Content-Length: %d\r\n%s\r\n"
                    % (
                        status,
                        b"OK" if status == 200 else b"Error",
                        CONTENT_TYPE,
                        str(uuid.uuid4()).encode(),
                        len(payload),
                        b"Connection: close\r\n" if close else b"",
                    )
                    + payload
                )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # the client closed (or sent what this stub cannot read): drop the connection
        finally:
            self.open -= 1
            writer.close()


async def serve(latency: float, port: int, until_stdin_closes: bool) -> None:
    stub = Stub(latency)
    server = await asyncio.start_server(stub.connection, "127.0.0.1", port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": bound}), flush=True)
    async with server:
        await until_stopped(until_stdin_closes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--until-stdin-closes", action="store_true")
    args = parser.parse_args(argv)
    raise_nofile()
    asyncio.run(serve(args.latency, args.port, args.until_stdin_closes))


if __name__ == "__main__":
    main()

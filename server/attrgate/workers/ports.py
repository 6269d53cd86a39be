"""The parent's hold on the listening ports its workers share.

gRPC binds with SO_REUSEPORT in the workers (they must share the port), so a stale server that
also set it could join them unseen. The parent first binds each address without SO_REUSEPORT,
which fails when anybody holds the port, and takes the ephemeral port the system picks for
`:0`; then it binds a socket with SO_REUSEPORT on that port and keeps it, never listening, until
it exits: the workers join it, nobody else can bind the port meanwhile (not even between two
workers' lifetimes), and the socket takes no connections.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from attrgate.config import ConfigError, split_host_port

ATTEMPTS = 5  # for `:0` on several addresses (localhost: 127.0.0.1 and ::1), each free


@dataclass
class HeldPort:
    address: str  # HOST:PORT as the workers bind it (the port resolved)
    port: int
    _sockets: list[socket.socket] = field(default_factory=list)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()


def hold(address: str) -> HeldPort:
    """Hold HOST:PORT for the workers, or raise ConfigError (the one line a single server
    refuses a taken port with)."""
    host, port = split_host_port(address)
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        raise ConfigError(f"cannot listen on {address} (not a local address?)") from None
    targets = list(dict.fromkeys((info[0], str(info[4][0])) for info in found))
    for _attempt in range(ATTEMPTS if port == 0 else 1):
        held = _hold_all(targets, port)
        if held is not None:
            sockets, chosen = held
            bracketed = f"[{host}]" if ":" in host else host
            return HeldPort(f"{bracketed}:{chosen}", chosen, sockets)
    raise ConfigError(f"cannot listen on {address} (in use or not a local address?)")


def _hold_all(
    targets: Sequence[tuple[socket.AddressFamily, str]], port: int
) -> tuple[list[socket.socket], int] | None:
    sockets: list[socket.socket] = []
    try:
        for family, host in targets:
            port = _probe(family, host, port)  # the first picks the port for `:0`
            sockets.append(_holder(family, host, port))
    except OSError:
        for sock in sockets:
            sock.close()
        return None
    return sockets, port


def _probe(family: socket.AddressFamily, host: str, port: int) -> int:
    """Bind without SO_REUSEPORT (fails when anyone holds the port); the port bound."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        _dual_stack(probe, family)
        probe.bind((host, port))
        return int(probe.getsockname()[1])


def _holder(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        _dual_stack(sock, family)
        # As gRPC binds: both options, or the workers' binds conflict with this one.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _dual_stack(sock: socket.socket, family: socket.AddressFamily) -> None:
    """`[::]` takes IPv4 too, as gRPC's own listener does."""
    if family == socket.AF_INET6:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)

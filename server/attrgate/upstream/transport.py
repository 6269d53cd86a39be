"""HTTP/1.1 to Cognito on the event loop: aiohttp with keep-alive, no cap on connections.

Calls in flight are bounded by the quota governor's bulkheads (`maxInFlight`), not here: a pool
limit would be a second, hidden queue. Failures are raised as the botocore exceptions urllib3's
would become, so retries and classification treat both alike:
- never sent (refused, no route, DNS, TLS handshake, a proxy's refusal, a kept-alive connection
  found closing before the first byte): EndpointConnectionError;
- no connection within the connect timeout: ConnectTimeoutError;
- no byte of the answer within the read timeout: ReadTimeoutError;
- the connection closed or broke after the request went out: ConnectionClosedError (the request
  may have reached Cognito).
"""

from __future__ import annotations

import ssl
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import aiohttp
import botocore.exceptions
from botocore.awsrequest import HeadersDict
from botocore.httpsession import get_cert_path

# Failures that prove the request never left: no connection was made (refused, no route, DNS,
# TLS, a proxy that refused the tunnel), or the connection was found closing before a byte was
# written (a kept-alive connection the far end had just closed; aiohttp >= 3.10.x names it).
_NEVER_SENT: tuple[type[Exception], ...] = tuple(
    kind
    for kind in (
        aiohttp.ClientConnectorError,
        aiohttp.ClientHttpProxyError,
        getattr(aiohttp, "ClientConnectionResetError", None),
    )
    if kind is not None
)

# Connections idle longer than this are closed by attrgate first, well before AWS's load
# balancers drop theirs (so a reused connection is seldom one the far end just closed).
KEEPALIVE_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer, shaped as botocore's retry and parse steps read one."""

    status_code: int
    headers: HeadersDict
    content: bytes


class Transport:
    def __init__(
        self, url: str, connect_timeout: float, read_timeout: float, ca_bundle: str | None
    ) -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._ca_bundle = ca_bundle
        self._proxy = _proxy_for(url)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        # Built on first use: a ClientSession belongs to the running loop.
        session = self._session
        if session is None or session.closed:
            context = ssl.create_default_context(cafile=get_cert_path(self._ca_bundle or True))
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS, ssl=context
            )
            session = self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                # Only what botocore sends: no Accept, Accept-Encoding or aiohttp user agent.
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                # Not trust_env: it looks up .netrc and the proxy settings in a thread for every
                # request. The proxy is looked up once (`_proxy_for`).
                trust_env=False,
            )
        return session

    async def send(self, method: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        url = self._url
        if self._closed:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=url, error="closed")
        try:
            async with self._open().request(
                method, url, headers=headers, data=body, allow_redirects=False, proxy=self._proxy
            ) as response:
                content = await response.read()
                return Answer(response.status, HeadersDict(response.headers.items()), content)
        except aiohttp.ConnectionTimeoutError:
            raise botocore.exceptions.ConnectTimeoutError(endpoint_url=url) from None
        except aiohttp.SocketTimeoutError:
            raise botocore.exceptions.ReadTimeoutError(endpoint_url=url) from None
        except _NEVER_SENT as exc:
            raise botocore.exceptions.EndpointConnectionError(
                endpoint_url=url, error=_reason(exc)
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise botocore.exceptions.ConnectionClosedError(endpoint_url=url) from exc

    async def close(self) -> None:
        self._closed = True  # a call after this would open a session nobody closes
        if self._session is not None:
            await self._session.close()


def _proxy_for(url: str) -> str | None:
    """The proxy botocore would use for `url`: HTTPS_PROXY/HTTP_PROXY unless NO_PROXY covers its
    host (read once: the environment does not change under a running server)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _reason(exc: Any) -> str:
    return type(exc).__name__

"""Fetching one S3 object with boto3, conditionally on its ETag, within a size and a time bound.
The only module of rollout/ that knows boto3: it hands back bytes and an ETag, or says in one
line why S3 could not be read."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from attrgate.config import ConfigError
from attrgate.rollout.source import SourceUnavailable

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
# The whole fetch (connection, attempts, headers and body), from before get_object: below the
# reloader's 30 s, so that S3 too slow is reported as S3 unavailable, with its own reason, and
# leaves time to verify and compile what arrived. Read at each fetch.
FETCH_DEADLINE = 20.0
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Fetched:
    body: bytes
    etag: str


def parse_url(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ConfigError(f"{url}: give the bundle's object, s3://BUCKET/KEY")
    return bucket, key


class S3Object:
    """One object, fetched in whole (one client, built once; thread-safe). The endpoint comes
    from the standard configuration boto3 reads itself (AWS_ENDPOINT_URL_S3,
    AWS_ENDPOINT_URL, the config file), credentials from the standard chain."""

    def __init__(self, url: str, region: str | None) -> None:
        self.url = url
        self._bucket, self._key = parse_url(url)
        self._running: threading.Thread | None = None  # the last fetch's thread
        config = botocore.config.Config(
            region_name=region,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"mode": "standard", "total_max_attempts": 2},
            user_agent_extra="attrgate",
        )
        try:
            self._client: Any = boto3.session.Session(region_name=region).client(
                "s3", config=config
            )
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            raise ConfigError(f"cannot build the S3 client for {url}: {exc}") from None

    def fetch(self, etag: str | None, limit: int) -> Fetched | None:
        """The object's bytes and ETag; None when its ETag is still `etag` (HTTP 304).
        SourceUnavailable when S3 could not be read in full within FETCH_DEADLINE seconds;
        ConfigError when the object is over `limit` bytes."""
        seconds = FETCH_DEADLINE
        # botocore's timeouts bound each connection and each read, not their sum (attempts,
        # a body that trickles): the fetch runs in a daemon thread of its own, waited for at
        # most `seconds`. One given up ends by itself within botocore's timeouts, stopping at
        # its next read.
        running = self._running
        if running is not None and running.is_alive():
            # One given up while S3 still trickles its answer's head cannot be stopped: no
            # second one beside it (a thread per poll would pile up), until it ends.
            raise SourceUnavailable(
                f"{self.url}: the previous fetch, given up at its deadline, is still reading "
                "(S3 answers too slowly)"
            )
        given_up = threading.Event()
        done = threading.Event()
        outcome: list[Fetched | BaseException | None] = []

        def run() -> None:
            try:
                outcome.append(self._fetch(etag, limit, given_up))
            except BaseException as exc:  # handed to the waiting side
                outcome.append(exc)
            done.set()

        self._running = threading.Thread(target=run, name="attrgate-s3-fetch", daemon=True)
        self._running.start()
        if not done.wait(seconds):
            given_up.set()
            raise SourceUnavailable(f"{self.url}: S3 did not answer in full within {seconds:g}s")
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _fetch(self, etag: str | None, limit: int, given_up: threading.Event) -> Fetched | None:
        request: dict[str, str] = {"Bucket": self._bucket, "Key": self._key}
        if etag:
            request["IfNoneMatch"] = etag
        try:
            answer = self._client.get_object(**request)
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status == 304:
                return None
            code = exc.response.get("Error", {}).get("Code", "") or "no error code"
            raise SourceUnavailable(f"{self.url}: S3 answered {code} (HTTP {status})") from None
        except botocore.exceptions.NoCredentialsError:
            raise SourceUnavailable(f"{self.url}: no AWS credentials found") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise SourceUnavailable(f"{self.url}: cannot reach S3: {exc}") from None
        body = answer["Body"]
        try:
            size = int(answer.get("ContentLength", -1))
            if size > limit:
                raise ConfigError(f"{self.url}: {size} bytes, over the {limit} a bundle may have")
            data = _read_within(body, limit, self.url, given_up)
        finally:
            body.close()
        if size >= 0 and len(data) != size:
            raise SourceUnavailable(f"{self.url}: got {len(data)} of {size} bytes")
        return Fetched(data, str(answer.get("ETag", "")))


def _read_within(body: Any, limit: int, url: str, given_up: threading.Event) -> bytes:
    # read1: whatever one socket read brings, so a body that trickles still returns here often
    # enough to see the fetch given up (read(CHUNK) waits for CHUNK bytes, each byte resetting
    # the read timeout: a thread per poll would read on for as long as the body takes).
    # urllib3 2 has it; read() where it is missing.
    read = getattr(getattr(body, "_raw_stream", None), "read1", None) or body.read
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := read(CHUNK):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ConfigError(f"{url}: over the {limit} bytes a bundle may have")
            if given_up.is_set():
                raise SourceUnavailable(f"{url}: the download was given up")
    except botocore.exceptions.BotoCoreError as exc:  # cut off mid-body, read timeout
        raise SourceUnavailable(f"{url}: the download failed: {exc}") from None
    return b"".join(chunks)

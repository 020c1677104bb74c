"""The one small interface every upstream provider speaks, and the error it raises.

The worker only knows this module: it hands a provider a :class:`SubmitRequest`, keeps the task id
it gets back, asks for :class:`UpstreamStatus` until the task ends, and downloads the result URLs.
Each provider maps its own errors onto :class:`UpstreamError`, whose flags (retryable, ambiguous,
operator) drive retries, failover and the never-bill-twice rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx


@dataclass(frozen=True)
class InputImage:
    data: bytes
    content_type: str
    ext: str
    # A signed link under QES_PUBLIC_BASE_URL, when the studio is reachable from outside.
    public_url: str | None = None


@dataclass(frozen=True)
class SubmitRequest:
    model: str
    prompt: str
    images: list[InputImage]
    options: dict[str, Any] = field(default_factory=dict)
    callback_url: str | None = None
    # White = edit. Sent only to providers with ``supports_mask = True``; for the others the
    # worker composites the result onto the first input outside the mask (app/masks.py).
    mask: InputImage | None = None


@dataclass(frozen=True)
class UpstreamStatus:
    state: Literal["pending", "running", "succeeded", "failed"]
    progress: int = 0
    result_urls: list[str] = field(default_factory=list)
    estimated_time: int | None = None
    error: UpstreamError | None = None


@dataclass(frozen=True)
class Submitted:
    upstream_task_id: str
    status: UpstreamStatus


class UpstreamError(Exception):
    """A provider's refusal or fault, in plain words, classified for the worker.

    retryable: the same request may work later (5xx, 429, timeouts, "no channel").
    ambiguous: the request may have reached the provider and been billed, but the answer was lost.
    operator: the studio's own account is at fault (bad key, no credit); the user can do nothing.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        ambiguous: bool = False,
        operator: bool = False,
        retry_after: float | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.ambiguous = ambiguous
        self.operator = operator
        self.retry_after = retry_after
        self.http_status = http_status


class Provider(Protocol):
    name: str
    price: float

    async def submit(self, request: SubmitRequest) -> Submitted: ...
    async def poll(self, upstream_task_id: str) -> UpstreamStatus: ...
    async def download(self, url: str, max_bytes: int) -> bytes: ...
    async def aclose(self) -> None: ...


def default_timeout(connect: float = 10.0, read: float = 60.0) -> httpx.Timeout:
    """Every upstream call has a connect and a read deadline; none may hang a job forever."""
    return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def transport_error(exc: httpx.HTTPError, *, sending_create: bool) -> UpstreamError:
    """Map a network failure; a create whose request may have left us is ambiguous."""
    never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    if isinstance(exc, httpx.TimeoutException):
        msg = "The upstream did not answer in time."
    else:
        msg = "Could not reach the upstream service."
    return UpstreamError(
        "upstream_unreachable",
        msg,
        retryable=True,
        ambiguous=sending_create and not never_sent,
    )


async def download_capped(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    """Fetch a result image, refusing anything larger than max_bytes while it streams."""
    try:
        async with client.stream("GET", url) as response:
            if response.status_code in (403, 404, 410):
                raise UpstreamError(
                    "result_expired",
                    "The upstream's result link no longer works (links expire after 24 hours), "
                    "so the result could not be saved.",
                    http_status=response.status_code,
                )
            if response.status_code >= 400:
                raise UpstreamError(
                    "download_failed",
                    f"Downloading the result failed with HTTP {response.status_code}.",
                    retryable=True,
                    http_status=response.status_code,
                )
            chunks: list[bytes] = []
            total = 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise UpstreamError(
                        "result_too_large", "The upstream's result image is too large to keep."
                    )
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise UpstreamError(
            "download_failed", "Downloading the result failed; will try again.", retryable=True
        ) from exc

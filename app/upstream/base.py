"""The one small interface every upstream provider speaks, and the error it raises.

The worker only knows this module: it hands a provider a :class:`SubmitRequest`, keeps the task id
it gets back, asks for :class:`UpstreamStatus` until the task ends, and downloads the result URLs.
Each provider maps its own errors onto :class:`UpstreamError`, whose flags (retryable, ambiguous,
operator) drive retries, failover and the never-bill-twice rule.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

# An API answer is a few kilobytes of JSON; anything far larger is a fault, not an answer, and is
# not read into memory whole.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
# Codes are kept in a String(64) column and shown to people: a short token, or nothing.
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


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


def total_deadline(timeout: httpx.Timeout, reads: float = 2.0) -> float:
    """A deadline for a whole exchange: httpx's read timeout is per chunk, so an upstream that
    drips one byte a minute would otherwise hold a job (and its lease) forever."""
    return (timeout.connect or 10.0) + reads * (timeout.read or 60.0)


def api_client(
    headers: dict[str, str], timeout: httpx.Timeout, transport: httpx.AsyncBaseTransport | None
) -> httpx.AsyncClient:
    """The client that carries the studio's key: never follows a redirect, which could send the
    key's requests (and their inputs) somewhere else."""
    return httpx.AsyncClient(
        headers=headers, timeout=timeout, transport=transport, follow_redirects=False
    )


def download_client(
    timeout: httpx.Timeout, transport: httpx.AsyncBaseTransport | None
) -> httpx.AsyncClient:
    """The client for result links: no credentials (the links are signed by the provider), and
    redirects followed, since storage links often redirect."""
    return httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=True)


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    # "nan" and "inf" parse as floats; neither is a delay.
    return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None


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


async def call(
    client: httpx.AsyncClient, method: str, url: str, *, creating: bool, **kwargs: Any
) -> httpx.Response:
    """Send one API request and read its whole answer, capped in size and in total time.

    Every way the exchange can break becomes an UpstreamError: a create whose answer was lost
    (timeout after sending, broken or oversized answer) is ambiguous, as it may have been billed.
    The returned response is fully read, so ``.json()`` and ``.headers`` work on it.
    """
    try:
        async with asyncio.timeout(total_deadline(client.timeout)):
            async with client.stream(method, url, **kwargs) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise UpstreamError(
                            "bad_upstream_answer",
                            "The upstream sent an answer far too large to be a real one.",
                            retryable=True,
                            ambiguous=creating,
                        )
    except TimeoutError as exc:  # the total deadline, not httpx's per-chunk one
        raise UpstreamError(
            "upstream_unreachable",
            "The upstream did not finish its answer in time.",
            retryable=True,
            ambiguous=creating,
        ) from exc
    except httpx.InvalidURL as exc:  # raised before anything is sent
        raise UpstreamError(
            "upstream_bad_url",
            "The upstream's address is not a valid URL; an administrator must fix the settings.",
            operator=True,
        ) from exc
    except httpx.HTTPError as exc:
        raise transport_error(exc, sending_create=creating) from exc
    # The body is already decoded: drop the headers that describe the wire form.
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(
        response.status_code, headers=headers, content=bytes(body), request=response.request
    )


def json_body(response: httpx.Response) -> Any:
    """The parsed JSON of an answer, or None when it is not JSON.

    Not only JSONDecodeError: an integer of more than 4,300 digits raises a plain ValueError and
    deeply nested arrays a RecursionError, and neither may escape an adapter.
    """
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError):
        return None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def clean_code(value: Any, default: str) -> str:
    """An upstream's error code as a short token (ints allowed: some send numbers), or default."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return default
    text = str(value)
    return text if _CODE.fullmatch(text) else default


def clean_int(value: Any, low: int, high: int) -> int | None:
    """A number field of an upstream answer, clamped to what the studio can store, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        value = max(float(low), min(float(high), value))
    if not isinstance(value, int | float):
        return None
    return int(max(low, min(high, value)))


def is_web_url(value: Any) -> bool:
    """An http(s) link of sane length: what a result or an uploaded file's address must be."""
    return (
        isinstance(value, str)
        and len(value) <= 8192
        and value.lower().startswith(("http://", "https://"))
        and value.isprintable()
        and not any(char.isspace() for char in value)
    )


def join_detail(plain: str, detail: Any) -> str:
    """The studio's plain sentence, with the first line of the upstream's own words appended."""
    text = detail.strip() if isinstance(detail, str) else ""
    text = text.splitlines()[0][:300] if text else ""
    return f"{plain} ({text})" if text and text not in plain else plain


async def download_capped(
    client: httpx.AsyncClient, url: str, max_bytes: int, deadline: float | None = None
) -> bytes:
    """Fetch a result image, refusing anything larger than max_bytes while it streams.

    A link that is not http(s) can never work, so it is final rather than retried until the job
    times out. The whole download has a deadline (default: connect + 5 reads).
    """
    if not is_web_url(url):
        raise UpstreamError("bad_result", "The upstream's result link is not a web address.")
    try:
        async with asyncio.timeout(deadline or total_deadline(client.timeout, reads=5.0)):
            async with client.stream("GET", url) as response:
                if response.status_code in (403, 404, 410):
                    raise UpstreamError(
                        "result_expired",
                        "The upstream's result link no longer works (links expire after 24 "
                        "hours), so the result could not be saved.",
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
    except TimeoutError as exc:
        raise UpstreamError(
            "download_failed",
            "Downloading the result took too long; will try again.",
            retryable=True,
        ) from exc
    except httpx.InvalidURL as exc:
        raise UpstreamError("bad_result", "The upstream's result link is not a valid URL.") from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(
            "download_failed", "Downloading the result failed; will try again.", retryable=True
        ) from exc


# A provider's own id for a task: a short printable token. Anything else (too long for the
# String(128) column, control characters httpx refuses in a URL, "/" or "?" that would change
# which URL is asked) is not an id the studio can follow.
TOKEN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class HttpProvider:
    """What every HTTP provider shares: its name and price, an authenticated client for its API,
    and a credential-free client for result links (they are signed by the provider)."""

    # Providers that take a mask natively set this; for the others the worker composites.
    supports_mask = False

    def __init__(
        self,
        *,
        name: str,
        price: float,
        base_url: str,
        auth: dict[str, str],
        timeout: httpx.Timeout,
        transport: httpx.AsyncBaseTransport | None = None,
        download_timeout: httpx.Timeout | None = None,
    ) -> None:
        self.name = name
        self.price = price
        self._base = base_url.rstrip("/")
        self._client = api_client(auth, timeout, transport)
        self._downloads = download_client(download_timeout or timeout, transport)

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._downloads.aclose()

    async def download(self, url: str, max_bytes: int) -> bytes:
        return await download_capped(self._downloads, url, max_bytes)

"""A local stand-in for the studio's upstreams (EvoLink, fal.ai, DashScope), over real HTTP.

Why it exists: the studio has to be run end to end (uploads, signed input links, polling,
callbacks and every error path) without an EvoLink key or internet access, much as stripe-mock
stands in for Stripe. It speaks the documented protocol (docs.evolink.ai; copies live under
shared/reference/evolink) so the real client code runs unchanged against it, and it adds a small
control surface to inject faults:

- ``GET/POST /_sim/config`` read or partially update :class:`SimulatorConfig`;
  ``POST /_sim/reset`` restores the config the app was created with and forgets all state;
  ``GET /_sim/stats`` returns request counters.
- Prompt directives for page-level tests: ``[sim:fail=<code>]`` ends that task ``failed`` with the
  task error code; ``[sim:delay=<seconds>]`` overrides the delay for that task.
- ``GET /_sim/requests`` lists the last request bodies received per protocol (data URIs shortened
  to their type, size and SHA-256), so a test can see how an adapter mapped the options.

The same server also speaks fal.ai's queue protocol (``/fal-ai/...``, see sim_fal.py) and
DashScope's synchronous multimodal generation (``/api/v1/services/aigc/...``, see
sim_dashscope.py), with the same edit, the same result links and the same fault knobs where they
make sense, so every provider adapter is tested against a server.

The "edit" is a colour inversion of the first input, so tests can check the output pixel by pixel
and a human can see in the browser that something happened.

Deliberate differences from the real service: callback URLs may be plain http and point at
loopback addresses (EvoLink requires https and public hosts; tests need a local receiver), and
``image_urls`` sizes are not checked against the [384, 3072] px range.

How ``drop_create_response`` loses the answer: the task is created and runs normally, then the
simulator sends the status line and headers of a 200 answer (with a Content-Length) and closes the
connection without any body. httpx raises ``RemoteProtocolError``, exactly as when a connection
breaks mid-answer, so the client cannot know the task id although the task exists (and is billed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import io
import json
import logging
import math
import re
import secrets
import socket
import string
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from types import UnionType
from typing import Any, get_args, get_type_hints
from urllib.parse import quote, urlsplit

import httpx
import uvicorn
from PIL import Image, ImageOps
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)

MODELS = ("qwen-image-edit", "qwen-image-edit-plus")
PLUS_ONLY_FIELDS = ("n", "negative_prompt", "size", "seed", "prompt_extend", "watermark")
TASK_PREFIX = "task-unified-"
UPLOAD_MIME_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")

_PROMPT_MAX_CHARS = 2000
_NEGATIVE_PROMPT_MAX_CHARS = 500
_MAX_IMAGE_URLS = 3
_MAX_URL_CHARS = 2048
_SEED_MAX = 2_147_483_647
_SIZE_RANGE = (512, 2048)
_MAX_UPLOAD_BYTES = 100 * 1024 * 1024  # EvoLink's documented per-file limit
_MAX_FETCH_BYTES = 50 * 1024 * 1024
_FETCH_TIMEOUT = 30.0
_CALLBACK_TIMEOUT = 10.0
_CALLBACK_RETRY_DELAYS = (1.0, 2.0, 4.0)  # EvoLink: 3 retries after 1 s / 2 s / 4 s
_HANG_POLL = 0.05
_MAX_TASKS = 2000
_MAX_UPLOADS = 500
_CREDITS_PER_IMAGE = 2.3
_MAX_RECORDED = 50
_DATA_URI = re.compile(r"data:([^;,]*)(;base64)?,(.*)", re.DOTALL)
_ID_ALPHABET = string.ascii_lowercase + string.digits
_DIRECTIVE = re.compile(r"\[sim:(fail|delay)=([^\]]*)\]")

# HTTP faults of the create endpoint: (error.code, error.type, message), as EvoLink documents them.
_CREATE_ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request", "invalid_request_error", "Invalid request parameters"),
    401: ("unauthorized", "authentication_error", "Invalid or expired token"),
    402: (
        "insufficient_quota",
        "insufficient_quota",
        "Insufficient quota. Please top up your account.",
    ),
    403: (
        "model_access_denied",
        "invalid_request_error",
        "Token does not have access to model: {model}",
    ),
    429: ("rate_limit_exceeded", "rate_limit_error", "Too many requests, please try again later"),
    500: ("internal_error", "api_error", "Internal server error"),
    503: ("service_unavailable", "api_error", "No available channel for the requested model"),
}
# The task-query page documents a slightly different set of bodies.
_QUERY_ERRORS: dict[int, tuple[str, str, str]] = {
    400: (
        "invalid_task_id",
        "invalid_request_error",
        "Invalid task ID format, must start with 'task-unified-'",
    ),
    401: ("unauthorized", "authentication_error", "Authentication required"),
    402: (
        "quota_exceeded",
        "insufficient_quota",
        "Insufficient quota. Please top up your account.",
    ),
    403: (
        "permission_denied",
        "invalid_request_error",
        "You don't have permission to access this task",
    ),
    404: ("task_not_found", "invalid_request_error", "The requested task could not be found"),
    429: ("rate_limit_exceeded", "evo_api_error", "Rate limit exceeded"),
    500: ("internal_error", "api_error", "Failed to retrieve task status"),
    503: ("service_unavailable", "api_error", "No available channel for the requested model"),
}
# Plausible task-level messages, worded after EvoLink's error-codes page.
_TASK_ERROR_MESSAGES: dict[str, str] = {
    "content_policy_violation": "Content policy violation.\n"
    "Your request was blocked by safety filters (simulated).",
    "invalid_parameters": "Invalid parameters: the request does not meet the model's requirements.",
    "image_processing_error": "Image processing failed: the input image could not be processed.",
    "image_dimension_mismatch": "Image dimensions don't match the request.",
    "request_cancelled": "The request was cancelled.",
    "generation_failed_no_content": "The model failed to generate output for this request.",
    "service_error": "Internal service error. The system usually recovers; retry later.",
    "generation_timeout": "Task processing timed out. Retry later.",
    "resource_exhausted": "Upstream resources are temporarily depleted. Retry later.",
    "quota_exceeded": "Rate limit or quota exceeded. Reduce request frequency.",
    "service_unavailable": "Service temporarily unavailable. Retry later.",
    "resource_not_found": "Task ID invalid or expired.",
    "unknown_error": "Unclassified error. Contact support.",
}


@dataclass
class SimulatorConfig:
    """Behaviour knobs, mutable while the server runs so one server can serve many scenarios.

    Count fields limit a fault to the next N requests (or tasks) and clear the fault when they
    run out; 0 means the fault applies to every request until changed.
    """

    delay: float = 3.0
    api_key: str | None = None
    result_ttl: float = 86400.0
    upload_ttl: float = 72 * 3600.0
    create_status: int | None = None
    create_fail_count: int = 0
    query_status: int | None = None
    query_fail_count: int = 0
    task_error: str | None = None
    task_error_count: int = 0
    malformed_json: bool = False
    hang: bool = False
    hang_seconds: float = 3600.0
    drop_create_response: bool = False
    drop_create_count: int = 0
    lose_task: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update(self, changes: Mapping[str, Any]) -> None:
        """Applies all changes or none, so a bad control request leaves the config intact."""
        hints = get_type_hints(type(self))
        checked = {
            name: _checked_value(name, hints.get(name), value) for name, value in changes.items()
        }
        candidate = dataclasses.replace(self, **checked)
        candidate.validate()
        for name, value in checked.items():
            setattr(self, name, value)

    def validate(self) -> None:
        for name in ("delay", "result_ttl", "upload_ttl", "hang_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in (
            "create_fail_count",
            "query_fail_count",
            "task_error_count",
            "drop_create_count",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("create_status", "query_status"):
            status = getattr(self, name)
            if status is not None and not 400 <= status <= 599:
                raise ValueError(f"{name} must be an HTTP error status (400-599)")
        if self.task_error is not None and not re.fullmatch(r"[a-z0-9_]+", self.task_error):
            raise ValueError("task_error must be an error code such as 'service_error'")


def _checked_value(name: str, hint: Any, value: Any) -> Any:
    if hint is None:
        raise ValueError(f"unknown config field: {name}")
    options = get_args(hint) if isinstance(hint, UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"{name} may not be null")
    for kind in options:
        if kind is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue  # bool is an int subclass, but true is not a status code
        if kind is int and isinstance(value, int):
            return value
        if kind is float and isinstance(value, int | float):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    raise ValueError(f"{name} has the wrong type")


def _take_fault(config: SimulatorConfig, value_field: str, count_field: str) -> Any:
    """The fault to apply to this request (None if none), spending one of a limited budget."""
    value = getattr(config, value_field)
    if value is None or value is False:
        return None
    remaining = getattr(config, count_field)
    if remaining > 0:
        remaining -= 1
        setattr(config, count_field, remaining)
        if remaining == 0:
            setattr(config, value_field, False if isinstance(value, bool) else None)
    return value


class _InvalidRequest(Exception):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class _TaskFailed(Exception):
    def __init__(self, code: str, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # Which input was at fault, so other protocols can word the failure their own way.
        self.index = index


@dataclass(frozen=True)
class _CreateRequest:
    model: str
    prompt: str
    image_urls: list[str]
    callback_url: str | None
    n: int


@dataclass
class _Task:
    id: str
    model: str
    image_urls: list[str]
    n: int
    delay: float
    callback_url: str | None
    base_url: str
    created: int
    created_mono: float
    planned_error: str | None
    status: str = "pending"
    final_progress: int = 0
    results: list[str] = field(default_factory=list)
    result_ids: list[str] = field(default_factory=list)
    error: dict[str, str] | None = None
    ended_at: float | None = None


@dataclass
class _Upload:
    file_id: str
    file_name: str
    original_name: str
    upload_path: str
    mime_type: str
    data: bytes
    uploaded_at: float
    expires_at: float


class _LostAnswer(Response):
    """Sends a 200's headers, then ends the exchange without the promised body.

    uvicorn closes a connection whose app returned mid-answer, which is the closest an ASGI app can
    get to a reply lost on the wire.
    """

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"512")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})


class _Simulator:
    """All state of one simulated account (EvoLink, fal.ai and DashScope share it); one per app
    so servers stay independent."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.initial = dataclasses.replace(config)
        self.secret = secrets.token_bytes(32)
        self.tasks: dict[str, _Task] = {}
        self.uploads: dict[str, _Upload] = {}
        self.results: dict[str, bytes] = {}
        self.stats = self._zero_stats()
        self.background: set[asyncio.Task[None]] = set()
        self.received: dict[str, collections.deque[dict[str, Any]]] = {}
        # Set from another thread by SimulatorServer.stop() so hung requests let go at once.
        self.stopping = False
        # Imported here: both modules build on this one's helpers (no import cycle at load time).
        from app.upstream.sim_dashscope import DashScopeSync
        from app.upstream.sim_fal import FalQueue

        self.fal = FalQueue(self)
        self.dashscope = DashScopeSync(self)

    @staticmethod
    def _zero_stats() -> dict[str, int]:
        return {
            "creates": 0,
            "queries": 0,
            "uploads": 0,
            "fetches": 0,
            "tasks": 0,
            "callbacks": 0,
            # fal.ai queue: POSTs, requests accepted, status and result reads, webhook deliveries
            "fal_submits": 0,
            "fal_requests": 0,
            "fal_status": 0,
            "fal_results": 0,
            "fal_webhooks": 0,
            # DashScope: calls received, and calls that produced images (what DashScope bills)
            "dashscope_calls": 0,
            "dashscope_generations": 0,
        }

    def record(self, protocol: str, path: str, body: Any) -> None:
        """Keeps the last request bodies per protocol for tests, data URIs shortened."""
        log = self.received.setdefault(protocol, collections.deque(maxlen=_MAX_RECORDED))
        log.append({"path": path, "body": _shorten_data_uris(body)})

    def store_result(self, png: bytes, base_url: str) -> tuple[str, str]:
        """Keeps one result image and returns its id and signed, expiring link."""
        expires_ms = int((time.time() + self.config.result_ttl) * 1000)
        result_id = secrets.token_hex(8)
        self.results[result_id] = png
        token = f"{result_id}-{expires_ms}-{self._signature(result_id, expires_ms)}"
        return result_id, f"{base_url}/files/results/{token}.png"

    async def wait(self, request: Request, seconds: float) -> bool:
        """Sleeps like a slow upstream; False if the server stops or the caller goes away."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.stopping or await request.is_disconnected():
                return False
            await asyncio.sleep(min(_HANG_POLL, left))
        return True

    # --- control ---------------------------------------------------------------------------

    async def get_config(self, request: Request) -> Response:
        return JSONResponse(self.config.to_dict())

    async def set_config(self, request: Request) -> Response:
        try:
            changes = json.loads(await request.body())
            if not isinstance(changes, dict):
                raise ValueError("body must be a JSON object")
            self.config.update(changes)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            return _error(400, "invalid_request", "invalid_request_error", str(exc))
        return JSONResponse(self.config.to_dict())

    async def reset(self, request: Request) -> Response:
        for item in dataclasses.fields(self.config):
            setattr(self.config, item.name, getattr(self.initial, item.name))
        await self.cancel_background()
        self.tasks.clear()
        self.uploads.clear()
        self.results.clear()
        self.received.clear()
        self.fal.reset()
        self.dashscope.reset()
        self.stats = self._zero_stats()
        return JSONResponse(self.config.to_dict())

    async def get_stats(self, request: Request) -> Response:
        return JSONResponse(self.stats)

    async def get_requests(self, request: Request) -> Response:
        return JSONResponse({name: list(log) for name, log in self.received.items()})

    async def cancel_background(self) -> None:
        pending = list(self.background)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.background.clear()

    # --- tasks API -------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        self.stats["creates"] += 1
        denied = self._check_auth(request, files=False)
        if denied is not None:
            return denied
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
        if self.config.hang and await self._hang(request):
            return Response(status_code=503)
        status = _take_fault(self.config, "create_status", "create_fail_count")
        if status is not None:
            model = body.get("model") if isinstance(body, dict) else None
            return _fault(
                status, _CREATE_ERRORS, model=model if isinstance(model, str) else MODELS[0]
            )
        if self.config.malformed_json:
            return _malformed()
        self.record("evolink", request.url.path, body)
        try:
            parsed = _validate_create(body)
        except _InvalidRequest as exc:
            return _error(400, "invalid_request", "invalid_request_error", exc.message, exc.param)
        task = self._start_task(parsed, str(request.base_url).rstrip("/"))
        if _take_fault(self.config, "drop_create_response", "drop_create_count"):
            return _LostAnswer()
        return JSONResponse(self._task_json(task, creating=True))

    async def query(self, request: Request) -> Response:
        self.stats["queries"] += 1
        denied = self._check_auth(request, files=False)
        if denied is not None:
            return denied
        if self.config.hang and await self._hang(request):
            return Response(status_code=503)
        status = _take_fault(self.config, "query_status", "query_fail_count")
        if status is not None:
            return _fault(status, _QUERY_ERRORS)
        if self.config.malformed_json:
            return _malformed()
        task_id: str = request.path_params["task_id"]
        if not task_id.startswith(TASK_PREFIX):
            return _fault(400, _QUERY_ERRORS, param="task_id")
        task = self.tasks.get(task_id)
        if task is None or self.config.lose_task:
            return _fault(404, _QUERY_ERRORS)
        return JSONResponse(self._task_json(task))

    async def result_file(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        parts = name.removesuffix(".png").split("-") if name.endswith(".png") else []
        if len(parts) != 3 or not parts[1].isdigit():
            return _not_found()
        result_id, expires_ms, signature = parts
        if not hmac.compare_digest(signature, self._signature(result_id, int(expires_ms))):
            return _not_found()
        if time.time() * 1000 > int(expires_ms):
            self.results.pop(result_id, None)
            return _error(410, "link_expired", "invalid_request_error", "This link has expired")
        data = self.results.get(result_id)
        if data is None:
            return _not_found()
        return Response(data, media_type="image/png", headers={"Cache-Control": "private"})

    def _check_auth(self, request: Request, *, files: bool) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            message = "Authentication required"
        elif self.config.api_key is not None and not hmac.compare_digest(
            token.encode(), self.config.api_key.encode()
        ):
            message = "Invalid or expired token"
        else:
            return None
        if files:
            return JSONResponse({"success": False, "code": 401, "msg": message}, status_code=401)
        return _error(401, "unauthorized", "authentication_error", message)

    async def _hang(self, request: Request) -> bool:
        """Holds the request like a stuck upstream; True once nobody waits for the answer."""
        deadline = time.monotonic() + self.config.hang_seconds
        while self.config.hang and time.monotonic() < deadline:
            if self.stopping or await request.is_disconnected():
                return True
            await asyncio.sleep(_HANG_POLL)
        return False

    def _start_task(self, parsed: _CreateRequest, base_url: str) -> _Task:
        self._prune()
        fail, delay = _directives(parsed.prompt)
        planned = fail or _take_fault(self.config, "task_error", "task_error_count")
        now = time.time()
        task_id = (
            f"{TASK_PREFIX}{int(now)}-{''.join(secrets.choice(_ID_ALPHABET) for _ in range(8))}"
        )
        task = _Task(
            id=task_id,
            model=parsed.model,
            image_urls=parsed.image_urls,
            n=parsed.n,
            delay=self.config.delay if delay is None else delay,
            callback_url=parsed.callback_url,
            base_url=base_url,
            created=int(now),
            created_mono=time.monotonic(),
            planned_error=planned,
        )
        self.tasks[task.id] = task
        self.stats["tasks"] += 1
        runner = asyncio.create_task(self._run(task), name=f"sim-{task.id}")
        self.background.add(runner)
        runner.add_done_callback(self.background.discard)
        return task

    async def _run(self, task: _Task) -> None:
        try:
            pending_for = min(task.delay * 0.1, 1.0)  # long enough for a poll to see "pending"
            if pending_for > 0:
                await asyncio.sleep(pending_for)
            task.status = "processing"
            try:
                png = await self._fetch_and_edit(task)
            except _TaskFailed as exc:
                self._finish(task, error=(exc.code, exc.message))
            else:
                remaining = task.created_mono + task.delay - time.monotonic()
                if remaining > 0:
                    await asyncio.sleep(remaining)
                if task.planned_error:
                    code = task.planned_error
                    message = _TASK_ERROR_MESSAGES.get(code, f"Task failed ({code}).")
                    self._finish(task, error=(code, message))
                else:
                    self._finish(task, png=png)
        except asyncio.CancelledError:
            raise
        except Exception:  # a simulator bug must end the task, not leave it processing forever
            logger.exception("simulated task %s crashed", task.id)
            self._finish(task, error=("unknown_error", _TASK_ERROR_MESSAGES["unknown_error"]))
        if task.callback_url:
            await self._deliver_callback(task)

    async def _fetch_and_edit(self, task: _Task) -> bytes:
        images: list[bytes] = []
        async with httpx.AsyncClient(
            timeout=_FETCH_TIMEOUT, follow_redirects=True, trust_env=False
        ) as client:
            for index, url in enumerate(task.image_urls):
                self.stats["fetches"] += 1
                images.append(await _fetch_image(client, url, index))
        return await asyncio.to_thread(_invert_first, images)

    def _finish(
        self, task: _Task, *, png: bytes | None = None, error: tuple[str, str] | None = None
    ) -> None:
        if error is not None:
            task.final_progress = self._progress(task)
            task.status = "failed"
            task.error = {"code": error[0], "message": error[1], "type": "task_error"}
        else:
            assert png is not None
            for _ in range(task.n):
                result_id, url = self.store_result(png, task.base_url)
                task.result_ids.append(result_id)
                task.results.append(url)
            task.final_progress = 100
            task.status = "completed"
        task.ended_at = time.time()

    def _signature(self, result_id: str, expires_ms: int) -> str:
        message = f"{result_id}.{expires_ms}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()[:32]

    async def _deliver_callback(self, task: _Task) -> None:
        assert task.callback_url is not None
        body = self._task_json(task)
        async with httpx.AsyncClient(timeout=_CALLBACK_TIMEOUT, trust_env=False) as client:
            for wait in (0.0, *_CALLBACK_RETRY_DELAYS):
                if wait:
                    await asyncio.sleep(wait)
                self.stats["callbacks"] += 1
                try:
                    response = await client.post(task.callback_url, json=body)
                except httpx.HTTPError as exc:
                    logger.info("callback for %s failed: %r", task.id, exc)
                    continue
                if response.is_success:
                    return
                logger.info("callback for %s answered %s", task.id, response.status_code)

    def _progress(self, task: _Task) -> int:
        if task.status in ("completed", "failed"):
            return task.final_progress
        if task.status == "pending":
            return 0
        if task.delay <= 0:
            return 50
        elapsed = time.monotonic() - task.created_mono
        return max(1, min(99, int(elapsed / task.delay * 100)))

    def _task_json(self, task: _Task, *, creating: bool = False) -> dict[str, Any]:
        done = task.status in ("completed", "failed")
        info: dict[str, Any] = {"can_cancel": not done}
        if not done:
            remaining = task.created_mono + task.delay - time.monotonic()
            info["estimated_time"] = math.ceil(task.delay if creating else max(0.0, remaining))
        data: dict[str, Any] = {
            "created": task.created,
            "id": task.id,
            "model": task.model,
            "object": "image.generation.task",
            "progress": 0 if creating else self._progress(task),
            "status": "pending" if creating else task.status,
            "task_info": info,
            "type": "image",
            "usage": {
                "billing_rule": "per_call",
                "credits_reserved": round(_CREDITS_PER_IMAGE * task.n, 2),
                "user_group": "default",
            },
        }
        if creating:
            return data
        if task.status == "completed":
            data["results"] = list(task.results)
        if task.status == "failed":
            data["error"] = dict(task.error or {})
        return data

    def _prune(self) -> None:
        """Forgets ended tasks once their links have expired, and caps what is kept in memory."""
        now = time.time()
        ttl = self.config.result_ttl
        ended = [t for t in self.tasks.values() if t.ended_at is not None]
        expired = {t.id for t in ended if t.ended_at is not None and t.ended_at + ttl < now}
        overflow = len(self.tasks) - len(expired) - _MAX_TASKS
        if overflow > 0:
            survivors = sorted((t for t in ended if t.id not in expired), key=lambda t: t.created)
            expired.update(t.id for t in survivors[:overflow])
        for task_id in expired:
            for result_id in self.tasks.pop(task_id).result_ids:
                self.results.pop(result_id, None)
        for file_id in [f for f, u in self.uploads.items() if u.expires_at < now]:
            del self.uploads[file_id]
        while len(self.uploads) >= _MAX_UPLOADS:
            del self.uploads[next(iter(self.uploads))]

    # --- files API -------------------------------------------------------------------------

    async def upload_stream(self, request: Request) -> Response:
        self.stats["uploads"] += 1
        denied = self._check_auth(request, files=True)
        if denied is not None:
            return denied
        try:
            form = await request.form(max_files=1, max_fields=10)
        except HTTPException as exc:
            return _files_error(400, 400, f"Invalid multipart body: {exc.detail}")
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return _files_error(400, 400, "No file provided (multipart field 'file')")
            data = await upload.read()
            return self._store_upload(
                request,
                data,
                original_name=upload.filename,
                file_name=_form_text(form.get("file_name") or form.get("fileName")),
                upload_path=_form_text(form.get("upload_path") or form.get("uploadPath")),
            )
        finally:
            await form.close()

    async def upload_base64(self, request: Request) -> Response:
        self.stats["uploads"] += 1
        denied = self._check_auth(request, files=True)
        if denied is not None:
            return denied
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return _files_error(400, 400, "Request body must be JSON")
        encoded = body.get("base64_data") if isinstance(body, dict) else None
        if not isinstance(encoded, str) or not encoded.strip():
            return _files_error(400, 400, "base64_data is required")
        if encoded.startswith("data:"):
            header, _, encoded = encoded.partition(",")
            if not header.endswith(";base64"):
                return _files_error(400, 400, "Data URL must be base64 encoded")
        try:
            data = base64.b64decode("".join(encoded.split()), validate=True)
        except (binascii.Error, ValueError):
            return _files_error(400, 400, "base64_data is not valid base64")
        return self._store_upload(
            request,
            data,
            original_name=None,
            file_name=_form_text(body.get("file_name") or body.get("fileName")),
            upload_path=_form_text(body.get("upload_path") or body.get("uploadPath")),
        )

    def _store_upload(
        self,
        request: Request,
        data: bytes,
        *,
        original_name: str | None,
        file_name: str | None,
        upload_path: str | None,
    ) -> Response:
        if not data:
            return _files_error(400, 400, "File is empty")
        if len(data) > _MAX_UPLOAD_BYTES:
            return _files_error(400, 40001, "File too large (maximum 100 MB)")
        mime_type = sniff_image_type(data)
        if mime_type is None:
            allowed = ", ".join(UPLOAD_MIME_TYPES)
            return _files_error(400, 40002, f"File type not allowed. Supported types: {allowed}")
        self._prune()
        file_id = "file_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
        extension = "." + mime_type.split("/")[1].replace("jpeg", "jpg")
        stored_name = _safe_name(file_name) or f"{file_id}{extension}"
        now = time.time()
        upload = _Upload(
            file_id=file_id,
            file_name=stored_name,
            original_name=original_name or file_name or stored_name,
            upload_path=_safe_path(upload_path) or "images",
            mime_type=mime_type,
            data=data,
            uploaded_at=now,
            expires_at=now + self.config.upload_ttl,
        )
        self.uploads[file_id] = upload
        base = str(request.base_url).rstrip("/")
        payload = {
            "file_id": file_id,
            "file_name": upload.file_name,
            "original_name": upload.original_name,
            "file_size": len(data),
            "mime_type": mime_type,
            "upload_path": upload.upload_path,
            "file_url": f"{base}/files/uploads/{file_id}/{quote(upload.file_name)}",
            "download_url": f"{base}/api/v1/files/download/{file_id}",
            "upload_time": _iso(upload.uploaded_at),
            "expires_at": _iso(upload.expires_at),
        }
        return JSONResponse(
            {"success": True, "code": 200, "msg": "File uploaded successfully", "data": payload}
        )

    async def uploaded_file(self, request: Request) -> Response:
        upload = self._live_upload(request.path_params["file_id"])
        if isinstance(upload, Response):
            return upload
        if request.path_params["file_name"] != upload.file_name:
            return _not_found()
        return Response(upload.data, media_type=upload.mime_type)

    async def download_file(self, request: Request) -> Response:
        upload = self._live_upload(request.path_params["file_id"])
        if isinstance(upload, Response):
            return upload
        disposition = f"attachment; filename*=UTF-8''{quote(upload.file_name)}"
        return Response(
            upload.data, media_type=upload.mime_type, headers={"Content-Disposition": disposition}
        )

    def _live_upload(self, file_id: str) -> _Upload | Response:
        upload = self.uploads.get(file_id)
        if upload is None:
            return _not_found()
        if upload.expires_at < time.time():
            del self.uploads[file_id]
            return _error(410, "file_expired", "invalid_request_error", "This file has expired")
        return upload

    def routes(self) -> list[Route]:
        return [
            Route("/v1/images/generations", self.create, methods=["POST"]),
            Route("/v1/tasks/{task_id}", self.query, methods=["GET"]),
            Route("/files/results/{name}", self.result_file, methods=["GET"]),
            Route("/api/v1/files/upload/stream", self.upload_stream, methods=["POST"]),
            Route("/api/v1/files/upload/base64", self.upload_base64, methods=["POST"]),
            Route("/files/uploads/{file_id}/{file_name}", self.uploaded_file, methods=["GET"]),
            Route("/api/v1/files/download/{file_id}", self.download_file, methods=["GET"]),
            Route("/_sim/config", self.get_config, methods=["GET"]),
            Route("/_sim/config", self.set_config, methods=["POST"]),
            Route("/_sim/reset", self.reset, methods=["POST"]),
            Route("/_sim/stats", self.get_stats, methods=["GET"]),
            Route("/_sim/requests", self.get_requests, methods=["GET"]),
            *self.fal.routes(),
            *self.dashscope.routes(),
        ]


def _validate_create(body: Any) -> _CreateRequest:
    """Checks a create body against EvoLink's QwenImageEditRequest schemas (both models)."""
    if not isinstance(body, dict):
        raise _InvalidRequest("Request body must be a JSON object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _InvalidRequest("model is required", "model")
    if model not in MODELS:
        raise _InvalidRequest(f"Unsupported model: {model}", "model")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _InvalidRequest("prompt is required and must be a non-empty string", "prompt")
    if len(prompt) > _PROMPT_MAX_CHARS:
        raise _InvalidRequest(f"prompt must be at most {_PROMPT_MAX_CHARS} characters", "prompt")
    urls = body.get("image_urls")
    if not isinstance(urls, list) or not 1 <= len(urls) <= _MAX_IMAGE_URLS:
        raise _InvalidRequest(f"image_urls must hold 1 to {_MAX_IMAGE_URLS} URLs", "image_urls")
    for index, url in enumerate(urls):
        if not isinstance(url, str) or not _is_http_url(url):
            raise _InvalidRequest(f"image_urls[{index}] must be an http(s) URL", "image_urls")
    callback = body.get("callback_url")
    if callback is not None and (
        not isinstance(callback, str)
        or len(callback) > _MAX_URL_CHARS
        or not _is_http_url(callback)
    ):
        raise _InvalidRequest(
            "callback_url must be an http(s) URL of at most 2048 characters", "callback_url"
        )
    n = 1
    if model == "qwen-image-edit":
        for name in PLUS_ONLY_FIELDS:
            if name in body:
                raise _InvalidRequest(f"{name} is only supported by qwen-image-edit-plus", name)
    else:
        n = _validate_plus(body)
    return _CreateRequest(model, prompt, list(urls), callback, n)


def _validate_plus(body: dict[str, Any]) -> int:
    n = body.get("n", 1)
    if not _is_int(n) or not 1 <= n <= 6:
        raise _InvalidRequest("n must be an integer between 1 and 6", "n")
    negative = body.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise _InvalidRequest("negative_prompt must be a string", "negative_prompt")
    # Longer negative prompts are accepted: EvoLink truncates them to 500 characters.
    size = body.get("size")
    if size is not None:
        match = re.fullmatch(r"([0-9]+)x([0-9]+)", size) if isinstance(size, str) else None
        low, high = _SIZE_RANGE
        if match is None or not all(low <= int(side) <= high for side in match.groups()):
            raise _InvalidRequest(
                f"size must be WIDTHxHEIGHT with sides in [{low}, {high}]", "size"
            )
        if n != 1:
            raise _InvalidRequest("size is only available when n is 1", "size")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= _SEED_MAX):
        raise _InvalidRequest(f"seed must be an integer in [0, {_SEED_MAX}]", "seed")
    for name in ("prompt_extend", "watermark"):
        if name in body and not isinstance(body[name], bool):
            raise _InvalidRequest(f"{name} must be a boolean", name)
    return int(n)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _directives(prompt: str) -> tuple[str | None, float | None]:
    """Reads ``[sim:fail=...]`` and ``[sim:delay=...]``; malformed ones are ignored."""
    fail: str | None = None
    delay: float | None = None
    for kind, value in _DIRECTIVE.findall(prompt):
        value = value.strip()
        if kind == "fail" and re.fullmatch(r"[a-z0-9_]+", value):
            fail = value
        elif kind == "delay":
            with contextlib.suppress(ValueError):
                parsed = float(value)
                if math.isfinite(parsed):
                    delay = max(0.0, parsed)
    return fail, delay


async def _fetch_image(client: httpx.AsyncClient, url: str, index: int) -> bytes:
    """Downloads one input as EvoLink's workers would, failing the task the way EvoLink does."""
    try:
        async with client.stream("GET", url) as response:
            if not response.is_success:
                raise _TaskFailed(
                    "image_processing_error",
                    f"Image processing failed: image_urls[{index}] could not be downloaded "
                    f"(HTTP {response.status_code}).",
                    index,
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > _MAX_FETCH_BYTES:
                    raise _TaskFailed(
                        "image_processing_error",
                        f"Image processing failed: image_urls[{index}] is too large.",
                        index,
                    )
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise _TaskFailed(
            "image_processing_error",
            f"Image processing failed: image_urls[{index}] could not be downloaded "
            f"({type(exc).__name__}).",
            index,
        ) from exc
    return b"".join(chunks)


def _invert_first(images: list[bytes]) -> bytes:
    for index, data in enumerate(images):
        try:
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()
        except Exception as exc:  # Pillow raises many types for unreadable data
            raise _TaskFailed(
                "image_processing_error",
                f"Image processing failed: image_urls[{index}] is not a readable image.",
                index,
            ) from exc
    with Image.open(io.BytesIO(images[0])) as source:
        inverted = ImageOps.invert(source.convert("RGB"))
    out = io.BytesIO()
    inverted.save(out, format="PNG")
    return out.getvalue()


def decode_data_uri(ref: str, index: int) -> bytes:
    """The bytes of a ``data:<type>;base64,<data>`` input, as fal and DashScope accept them."""
    match = _DATA_URI.fullmatch(ref)
    if match is None or not match.group(2):
        raise _TaskFailed(
            "image_processing_error", f"input {index} is not a base64 data URI.", index
        )
    try:
        return base64.b64decode("".join(match.group(3).split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _TaskFailed(
            "image_processing_error", f"input {index} is not valid base64.", index
        ) from exc


async def load_and_edit(core: _Simulator, refs: Sequence[str]) -> bytes:
    """Reads every input (an http(s) URL fetched like the upstream would, or a data URI) and
    returns the deterministic edit: the first image inverted, as PNG."""
    images: list[bytes] = []
    async with httpx.AsyncClient(
        timeout=_FETCH_TIMEOUT, follow_redirects=True, trust_env=False
    ) as client:
        for index, ref in enumerate(refs):
            if ref.startswith("data:"):
                images.append(decode_data_uri(ref, index))
                continue
            if not _is_http_url(ref):
                raise _TaskFailed(
                    "image_processing_error", f"input {index} is not a URL or data URI.", index
                )
            core.stats["fetches"] += 1
            images.append(await _fetch_image(client, ref, index))
    return await asyncio.to_thread(_invert_first, images)


def blank_like(png: bytes) -> bytes:
    """A black PNG of the same size: what fal returns in place of an image its checker flagged."""
    with Image.open(io.BytesIO(png)) as source:
        size = source.size
    out = io.BytesIO()
    Image.new("RGB", size).save(out, format="PNG")
    return out.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        return image.size


def _shorten_data_uris(value: Any) -> Any:
    """Replaces each data URI by its type, size and hash, so recorded bodies stay small."""
    if isinstance(value, str) and value.startswith("data:"):
        match = _DATA_URI.fullmatch(value)
        if match is None or not match.group(2):
            return "data:(not base64)"
        try:
            data = base64.b64decode("".join(match.group(3).split()), validate=True)
        except (binascii.Error, ValueError):
            return f"data:{match.group(1)};base64,(invalid)"
        digest = hashlib.sha256(data).hexdigest()
        return f"data:{match.group(1)};base64,(bytes={len(data)},sha256={digest})"
    if isinstance(value, dict):
        return {key: _shorten_data_uris(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shorten_data_uris(item) for item in value]
    return value


def sniff_image_type(data: bytes) -> str | None:
    """The MIME type EvoLink's files API would accept for these bytes, judged by content."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _form_text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _safe_name(name: str | None) -> str | None:
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")[:128]
    return cleaned or None


def _safe_path(path: str | None) -> str | None:
    if not path:
        return None
    segments = [_safe_name(part) for part in path.split("/")]
    cleaned = "/".join(s for s in segments if s)
    return cleaned or None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds")


def _error(
    status: int,
    code: str,
    kind: str,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    error: dict[str, str] = {"code": code, "message": message, "type": kind}
    if param is not None:
        error["param"] = param
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _fault(
    status: int,
    table: Mapping[int, tuple[str, str, str]],
    *,
    model: str = MODELS[0],
    param: str | None = None,
) -> JSONResponse:
    if status in table:
        code, kind, message = table[status]
    else:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Upstream error"
        code, kind, message = phrase.lower().replace(" ", "_"), "api_error", phrase
    headers = {"Retry-After": "1"} if status == 429 else None
    return _error(status, code, kind, message.format(model=model), param, headers)


def _files_error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"success": False, "code": code, "msg": message}, status_code=status)


def _not_found() -> JSONResponse:
    return _error(404, "not_found", "invalid_request_error", "Not found")


def _malformed() -> Response:
    return Response('{"created": 1757156493, "id": "task-unified-', media_type="application/json")


def create_simulator_app(config: SimulatorConfig | None = None) -> Starlette:
    """The simulator as an ASGI app; ``app.state.config`` is the live, mutable config."""
    config = config if config is not None else SimulatorConfig()
    config.validate()
    simulator = _Simulator(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await simulator.cancel_background()

    app = Starlette(routes=simulator.routes(), lifespan=lifespan)
    app.state.config = config
    app.state.simulator = simulator
    return app


class SimulatorServer:
    """Runs the simulator under uvicorn in a daemon thread, for tests and keyless studio runs.

    Several can run in one process: each has its own app, state, event loop and socket.
    """

    def __init__(
        self, config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._config = config if config is not None else SimulatorConfig()
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self.app = create_simulator_app(self._config)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> SimulatorConfig:
        return self._config

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("the simulator is not running")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    def start(self, timeout: float = 10.0) -> SimulatorServer:
        if self._thread is not None:
            raise RuntimeError("the simulator is already running")
        # Binding here, not in uvicorn, gives the real port at once even when 0 was asked for.
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto
        # says TCP, and without it every keep-alive request waits ~40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._requested_port))
        except OSError:
            sock.close()
            raise
        simulator: _Simulator = self.app.state.simulator
        simulator.stopping = False
        config = uvicorn.Config(
            self.app,
            log_config=None,  # leave the host process's logging alone
            log_level=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        port = sock.getsockname()[1]
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"evolink-sim-{port}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(timeout=5)
                sock.close()
                raise RuntimeError("the simulator did not start")
            time.sleep(0.01)
        self._server, self._thread, self._port = server, thread, port
        return self

    def stop(self, timeout: float = 10.0) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self.app.state.simulator.stopping = True
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._server = self._thread = None
        self._port = None

    def __enter__(self) -> SimulatorServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app.upstream.simulator",
        description="Local upstream simulator: EvoLink tasks + files API, fal.ai queue and "
        "DashScope multimodal generation, on one server.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--delay", type=float, default=3.0, help="seconds until a task completes")
    parser.add_argument("--api-key", default=None, help="only accept this key (Bearer; fal: Key)")
    parser.add_argument("--result-ttl", type=float, default=86400.0, help="result link lifetime")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    config = SimulatorConfig(delay=args.delay, api_key=args.api_key, result_ttl=args.result_ttl)
    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    uvicorn.run(
        create_simulator_app(config),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()

"""fal.ai's queue protocol, spoken by the simulator: submit, status, result, webhooks.

Why it exists: the fal adapter (app/upstream/fal.py) has to run against a server that answers the
way ``queue.fal.run`` does, with every fault the studio must survive. Shapes follow the notes in
shared/reference/upstream-apis.md §3a (fal's llms.txt for ``fal-ai/qwen-image-edit``, the queue,
webhook, model-error and request-error pages):

- ``POST /fal-ai/{app}[?fal_webhook=URL]`` with ``Authorization: Key <key>`` queues a request and
  answers ``{request_id, gateway_request_id, status: "IN_QUEUE", queue_position, response_url,
  status_url, cancel_url}``. The queue does not check the input; the runner does, so a bad input
  shows up as the result's 422, as on fal.
- ``GET /fal-ai/{app}/requests/{id}/status[?logs=1]`` answers 202 ``IN_QUEUE`` (with
  ``queue_position``) or ``IN_PROGRESS`` (with ``logs``), then 200 ``COMPLETED`` (with ``logs``,
  ``metrics``; plus ``error`` and ``error_type`` when the request failed).
- ``GET /fal-ai/{app}/requests/{id}`` answers the model output ``{images: [{url, width, height,
  content_type}], timings, seed, has_nsfw_concepts, prompt}``, or the request's error: 422
  ``{"detail": [{loc, msg, type}]}`` for validation and content-policy errors, 5xx
  ``{"detail": "...", "error_type": "..."}`` with ``X-Fal-Error-Type`` for request errors.
- Apps: ``qwen-image-edit`` (one ``image_url``) and ``qwen-image-edit-plus`` (``image_urls`` list).

Fault knobs (SimulatorConfig): ``create_status``/``create_fail_count`` answer the submit with a
fal-style error (402 becomes fal's real no-credit answer, 403 "User is locked. Reason: Exhausted
balance."); ``query_status``/``query_fail_count`` apply to status and result reads; ``task_error``
(and ``[sim:fail=...]``) ends a request with the matching fal error (content_policy_violation →
422 content_policy_violation, invalid_parameters → 422 value_error, image_processing_error → 422
image_load_error, generation_timeout → 504 request_timeout, service_unavailable /
resource_exhausted → 503 runner_scheduling_failure, ``nsfw_output`` → success with black images
and ``has_nsfw_concepts: [true]``, anything else → 500 runner_server_error); ``hang``,
``malformed_json``, ``drop_create_response`` and ``lose_task`` work as for EvoLink.

Deliberate differences from fal: webhooks are delivered unsigned (fal signs them with Ed25519 keys
from its JWKS, which cannot be fetched offline) and may go to plain-http loopback URLs; results are
always PNG whatever ``output_format`` says; ``image_size`` is checked but the output keeps the first
input's size. Error bodies marked [M] in the notes (401 detail text, unknown ids) are best guesses.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.upstream.simulator import (
    _CALLBACK_RETRY_DELAYS,
    _CALLBACK_TIMEOUT,
    _MAX_TASKS,
    _directives,
    _is_http_url,
    _LostAnswer,
    _take_fault,
    _TaskFailed,
    blank_like,
    load_and_edit,
    png_size,
)

if TYPE_CHECKING:
    from app.upstream.simulator import _Simulator

logger = logging.getLogger(__name__)

OWNER = "fal-ai"
APPS = ("qwen-image-edit", "qwen-image-edit-plus")
_IMAGE_SIZE_ENUM = (
    "square_hd",
    "square",
    "portrait_4_3",
    "portrait_16_9",
    "landscape_4_3",
    "landscape_16_9",
)
_MAX_IMAGE_SIDE = 14142
_SEED_MAX = 2**63 - 1
_NO_CREDIT = (
    "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."
)
# HTTP faults of the queue endpoints: (status answered, body, X-Fal-Error-Type).
_HTTP_FAULTS: dict[int, tuple[int, Any, str | None]] = {
    400: (400, {"detail": "Bad request"}, None),
    401: (401, {"detail": "Unauthorized"}, None),
    402: (403, {"detail": _NO_CREDIT}, None),
    403: (
        403,
        {"detail": "User is locked. Reason: Admin lock. Please contact support@fal.ai"},
        None,
    ),
    404: (404, {"detail": "Request not found"}, None),
    422: (
        422,
        {"detail": [{"loc": ["body"], "msg": "Invalid request", "type": "value_error"}]},
        None,
    ),
    429: (429, {"detail": "Too many concurrent requests"}, None),
    500: (
        500,
        {"detail": "Internal server error", "error_type": "internal_error"},
        "internal_error",
    ),
    502: (
        502,
        {"detail": "Runner connection error", "error_type": "runner_connection_error"},
        "runner_connection_error",
    ),
    503: (
        503,
        {"detail": "No runner available", "error_type": "runner_scheduling_failure"},
        "runner_scheduling_failure",
    ),
    504: (504, {"detail": "Request timed out", "error_type": "request_timeout"}, "request_timeout"),
}


def _model_error(loc: list[Any], msg: str, kind: str, **extra: Any) -> tuple[int, Any, None]:
    entry: dict[str, Any] = {"loc": loc, "msg": msg, "type": kind, **extra}
    return 422, {"detail": [entry]}, None


def _request_error(status: int, detail: str, error_type: str) -> tuple[int, Any, str]:
    return status, {"detail": detail, "error_type": error_type}, error_type


def _task_error(code: str, image_field: str) -> tuple[int, Any, str | None]:
    """The fal answer for a studio task-error code (EvoLink's names, used by every protocol)."""
    if code == "content_policy_violation":
        return _model_error(
            ["body", "prompt"],
            "The content was flagged by a content checker.",
            "content_policy_violation",
            url="https://docs.fal.ai/errors#content_policy_violation",
        )
    if code == "invalid_parameters":
        return _model_error(
            ["body"], "Input does not meet the model's requirements.", "value_error"
        )
    if code in ("image_processing_error", "image_dimension_mismatch"):
        return _model_error(
            ["body", image_field],
            "Failed to load the image. Please ensure the image file is valid and accessible.",
            "image_load_error",
        )
    if code == "generation_timeout":
        return _request_error(504, "Request timed out", "request_timeout")
    if code in ("service_unavailable", "resource_exhausted"):
        return _request_error(503, "No runner available", "runner_scheduling_failure")
    return _request_error(500, "Runner returned an error", "runner_server_error")


class _Invalid(Exception):
    def __init__(self, loc: list[Any], msg: str, kind: str = "value_error") -> None:
        super().__init__(msg)
        self.answer = _model_error(loc, msg, kind)


@dataclass
class _FalRequest:
    id: str
    app: str
    body: Any
    base_url: str
    delay: float
    planned_error: str | None
    webhook: str | None
    created_mono: float
    status: str = "IN_QUEUE"
    ended_at: float | None = None
    inference_time: float = 0.0
    outcome: tuple[int, Any, str | None] | None = None
    result_ids: list[str] = field(default_factory=list)
    logs: list[dict[str, str]] = field(default_factory=list)


class FalQueue:
    """The fal.ai queue of one simulator; its state lives and is reset with the simulator's."""

    def __init__(self, core: _Simulator) -> None:
        self.core = core
        self.requests: dict[str, _FalRequest] = {}

    def reset(self) -> None:
        self.requests.clear()

    def routes(self) -> list[Route]:
        base = f"/{OWNER}/{{app}}"
        return [
            Route(base, self.submit, methods=["POST"]),
            Route(f"{base}/requests/{{request_id}}/status", self.status, methods=["GET"]),
            Route(f"{base}/requests/{{request_id}}", self.result, methods=["GET"]),
        ]

    # --- endpoints ------------------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        core = self.core
        core.stats["fal_submits"] += 1
        denied = self._check(request)
        if denied is not None:
            return denied
        raw = await request.body()
        if core.config.hang and await core._hang(request):
            return Response(status_code=503)
        status = _take_fault(core.config, "create_status", "create_fail_count")
        if status is not None:
            return _http_fault(status)
        if core.config.malformed_json:
            return Response('{"request_id": "', media_type="application/json")
        try:
            body: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _answer(_model_error(["body"], "Input should be a valid JSON object", "json"))
        webhook = request.query_params.get("fal_webhook")
        if webhook is not None and not _is_http_url(webhook):
            return _answer(
                _model_error(["query", "fal_webhook"], "fal_webhook must be an http(s) URL", "url")
            )
        core.record("fal", request.url.path, body)
        app = request.path_params["app"]
        prompt = body.get("prompt") if isinstance(body, dict) else None
        fail, delay = _directives(prompt) if isinstance(prompt, str) else (None, None)
        planned = fail or _take_fault(core.config, "task_error", "task_error_count")
        self._prune()
        item = _FalRequest(
            id=str(uuid.uuid4()),
            app=app,
            body=body,
            base_url=str(request.base_url).rstrip("/"),
            delay=core.config.delay if delay is None else delay,
            planned_error=planned,
            webhook=webhook,
            created_mono=time.monotonic(),
        )
        self.requests[item.id] = item
        core.stats["fal_requests"] += 1
        runner = asyncio.create_task(self._run(item), name=f"sim-fal-{item.id}")
        core.background.add(runner)
        runner.add_done_callback(core.background.discard)
        if _take_fault(core.config, "drop_create_response", "drop_create_count"):
            return _LostAnswer()
        return JSONResponse(
            {
                **self._urls(item),
                "status": "IN_QUEUE",
                "queue_position": 0,
                "gateway_request_id": item.id,
            }
        )

    async def status(self, request: Request) -> Response:
        self.core.stats["fal_status"] += 1
        found = await self._find(request)
        if isinstance(found, Response):
            return found
        body: dict[str, Any] = {**self._urls(found), "status": found.status}
        with_logs = request.query_params.get("logs") in ("1", "true")
        if found.status == "IN_QUEUE":
            body["queue_position"] = 0
            return JSONResponse(body, status_code=202)
        body["logs"] = list(found.logs) if with_logs else None
        if found.status == "IN_PROGRESS":
            return JSONResponse(body, status_code=202)
        body["metrics"] = {"inference_time": found.inference_time}
        assert found.outcome is not None
        code, payload, error_type = found.outcome
        if code >= 300:
            body["error"] = _error_text(code, payload)
            body["error_type"] = error_type or ("validation_error" if code == 422 else "unknown")
        return JSONResponse(body)

    async def result(self, request: Request) -> Response:
        self.core.stats["fal_results"] += 1
        found = await self._find(request)
        if isinstance(found, Response):
            return found
        if found.outcome is None:
            return JSONResponse({"detail": "Request is still in progress"}, status_code=400)
        return _answer(found.outcome)

    # --- the runner -----------------------------------------------------------------------------

    async def _run(self, item: _FalRequest) -> None:
        image_field = "image_urls" if item.app.endswith("-plus") else "image_url"
        try:
            queued_for = min(item.delay * 0.1, 1.0)  # long enough for a poll to see IN_QUEUE
            if queued_for > 0:
                await asyncio.sleep(queued_for)
            item.status = "IN_PROGRESS"
            started = time.monotonic()
            item.logs.append(_log("Processing request"))
            try:
                prompt, refs, count, seed = _validate(item.app, item.body)
                png = await load_and_edit(self.core, refs)
            except _Invalid as exc:
                item.outcome = exc.answer
            except _TaskFailed as exc:
                index = exc.index or 0
                loc = ["body", image_field] + ([index] if image_field == "image_urls" else [])
                item.outcome = _model_error(
                    loc,
                    f"Failed to load the image at {image_field}"
                    f"{f'[{index}]' if image_field == 'image_urls' else ''}: {exc.message}",
                    "image_load_error",
                )
            else:
                remaining = item.created_mono + item.delay - time.monotonic()
                if remaining > 0:
                    await asyncio.sleep(remaining)
                item.outcome = self._outcome(item, png, prompt, count, seed, image_field)
            item.inference_time = round(time.monotonic() - started, 3)
        except asyncio.CancelledError:
            raise
        except Exception:  # a simulator bug must end the request, not leave it running forever
            logger.exception("simulated fal request %s crashed", item.id)
            item.outcome = _request_error(500, "Runner returned an error", "runner_server_error")
        item.logs.append(_log("Request finished"))
        item.status = "COMPLETED"
        item.ended_at = time.time()
        if item.webhook:
            await self._deliver_webhook(item)

    def _outcome(
        self, item: _FalRequest, png: bytes, prompt: str, count: int, seed: int, image_field: str
    ) -> tuple[int, Any, str | None]:
        flagged = item.planned_error == "nsfw_output"
        if item.planned_error and not flagged:
            return _task_error(item.planned_error, image_field)
        output = blank_like(png) if flagged else png
        width, height = png_size(output)
        images = []
        for _ in range(count):
            result_id, url = self.core.store_result(output, item.base_url)
            item.result_ids.append(result_id)
            images.append(
                {"url": url, "width": width, "height": height, "content_type": "image/png"}
            )
        return (
            200,
            {
                "images": images,
                "timings": {"inference": round(item.delay, 3)},
                "seed": seed,
                "has_nsfw_concepts": [flagged] * count,
                "prompt": prompt,
            },
            None,
        )

    async def _deliver_webhook(self, item: _FalRequest) -> None:
        assert item.webhook is not None and item.outcome is not None
        code, payload, _ = item.outcome
        body = {
            "request_id": item.id,
            "gateway_request_id": item.id,
            "status": "OK" if code < 300 else "ERROR",
            "payload": payload,
            "error": None if code < 300 else f"Invalid status code: {code}",
        }
        headers = {
            "X-Fal-Webhook-Request-Id": item.id,
            "X-Fal-Webhook-User-Id": "simulator",
            "X-Fal-Webhook-Timestamp": str(int(time.time())),
        }
        async with httpx.AsyncClient(timeout=_CALLBACK_TIMEOUT, trust_env=False) as client:
            for wait in (0.0, *_CALLBACK_RETRY_DELAYS):
                if wait:
                    await asyncio.sleep(wait)
                self.core.stats["fal_webhooks"] += 1
                try:
                    response = await client.post(item.webhook, json=body, headers=headers)
                except httpx.HTTPError as exc:
                    logger.info("fal webhook for %s failed: %r", item.id, exc)
                    continue
                if response.is_success:
                    return

    # --- plumbing -------------------------------------------------------------------------------

    def _check(self, request: Request) -> Response | None:
        """Auth (``Key <key>``) and a known app; fal answers unknown apps with 404."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        expected = self.core.config.api_key
        if (
            scheme.lower() != "key"
            or not token
            or (expected is not None and not hmac.compare_digest(token.encode(), expected.encode()))
        ):
            return JSONResponse({"detail": "Unauthorized"}, status_code=401)
        if request.path_params["app"] not in APPS:
            app = request.path_params["app"]
            return JSONResponse(
                {"detail": f"Application '{OWNER}/{app}' not found"}, status_code=404
            )
        return None

    async def _find(self, request: Request) -> _FalRequest | Response:
        denied = self._check(request)
        if denied is not None:
            return denied
        core = self.core
        if core.config.hang and await core._hang(request):
            return Response(status_code=503)
        status = _take_fault(core.config, "query_status", "query_fail_count")
        if status is not None:
            return _http_fault(status)
        if core.config.malformed_json:
            return Response('{"status": "IN_PROG', media_type="application/json")
        item = self.requests.get(request.path_params["request_id"])
        if item is None or item.app != request.path_params["app"] or core.config.lose_task:
            return JSONResponse({"detail": "Request not found"}, status_code=404)
        return item

    def _urls(self, item: _FalRequest) -> dict[str, str]:
        base = f"{item.base_url}/{OWNER}/{item.app}/requests/{item.id}"
        return {
            "request_id": item.id,
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    def _prune(self) -> None:
        """Forgets ended requests once their links expired, and caps what is kept in memory."""
        now = time.time()
        ttl = self.core.config.result_ttl
        ended = sorted(
            (r for r in self.requests.values() if r.ended_at is not None),
            key=lambda r: r.ended_at or 0.0,
        )
        gone = {r.id for r in ended if (r.ended_at or 0.0) + ttl < now}
        overflow = len(self.requests) - len(gone) - _MAX_TASKS
        if overflow > 0:
            gone.update(r.id for r in [r for r in ended if r.id not in gone][:overflow])
        for request_id in gone:
            for result_id in self.requests.pop(request_id).result_ids:
                self.core.results.pop(result_id, None)


def _validate(app: str, body: Any) -> tuple[str, list[str], int, int]:
    """Checks an input against the endpoint's schema the way fal's runner would (pydantic-style
    422 answers); returns the prompt, the inputs, the number of images and the seed."""
    if not isinstance(body, dict):
        raise _Invalid(["body"], "Input should be a valid dictionary", "dict_type")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _Invalid(["body", "prompt"], "Field required", "missing")
    if app.endswith("-plus"):
        refs = body.get("image_urls")
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise _Invalid(
                ["body", "image_urls"], "Field required: a list of image URLs", "missing"
            )
    else:
        ref = body.get("image_url")
        if not isinstance(ref, str) or not ref:
            raise _Invalid(["body", "image_url"], "Field required", "missing")
        refs = [ref]
    count = body.get("num_images", 1)
    if not _is_int(count) or not 1 <= count <= 4:
        raise _Invalid(["body", "num_images"], "Input should be between 1 and 4")
    size = body.get("image_size")
    if size is not None and size not in _IMAGE_SIZE_ENUM:
        if not isinstance(size, dict) or set(size) - {"width", "height"}:
            raise _Invalid(
                ["body", "image_size"], "Input should be an enum value or {width, height}"
            )
        for side in ("width", "height"):
            value = size.get(side)
            if not _is_int(value) or not 1 <= value <= _MAX_IMAGE_SIDE:
                raise _Invalid(
                    ["body", "image_size", side], f"Input should be between 1 and {_MAX_IMAGE_SIDE}"
                )
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= _SEED_MAX):
        raise _Invalid(["body", "seed"], "Input should be a valid integer")
    negative = body.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise _Invalid(["body", "negative_prompt"], "Input should be a valid string")
    checks: list[tuple[str, Any]] = [
        ("num_inference_steps", lambda v: _is_int(v) and 2 <= v <= 50),
        ("guidance_scale", lambda v: _is_number(v) and 0 <= v <= 20),
        ("output_format", lambda v: v in ("jpeg", "png")),
        ("acceleration", lambda v: v in ("none", "regular", "high")),
        ("enable_safety_checker", lambda v: isinstance(v, bool)),
        ("sync_mode", lambda v: isinstance(v, bool)),
    ]
    for name, ok in checks:
        if name in body and not ok(body[name]):
            raise _Invalid(["body", name], f"Invalid value for {name}")
    return prompt, refs, int(count), int(seed) if seed is not None else secrets.randbelow(2**31)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _answer(outcome: tuple[int, Any, str | None]) -> JSONResponse:
    status, body, error_type = outcome
    headers = {"X-Fal-Error-Type": error_type} if error_type else {}
    if status == 429:
        headers["Retry-After"] = "1"
    return JSONResponse(body, status_code=status, headers=headers)


def _http_fault(status: int) -> JSONResponse:
    if status in _HTTP_FAULTS:
        return _answer(_HTTP_FAULTS[status])
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Upstream error"
    return JSONResponse({"detail": phrase}, status_code=status)


def _error_text(status: int, payload: Any) -> str:
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if isinstance(detail, str):
        return detail
    return f"Invalid status code: {status}"


def _log(message: str) -> dict[str, str]:
    stamp = datetime.now(tz=UTC).isoformat(timespec="milliseconds")
    return {"message": message, "level": "INFO", "source": "user", "timestamp": stamp}

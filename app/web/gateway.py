"""The gateway that speaks EvoLink's API, so a script written for the hosted API works against
the studio by changing its base URL (and its key to a personal API token).

``POST /v1/images/generations`` and ``GET /v1/tasks/{id}`` take and give EvoLink's documented
shapes (reference/evolink/*.json): a create answers 200 with an ``ImageGenerationResponse``, the
task detail has ``status`` exactly ``pending|processing|completed|failed``, ``results`` when
completed and ``error {code, message, type: "task_error"}`` when failed; refusals are
``{"error": {"code", "message", "type"}}`` with EvoLink's statuses (400, never 422; 401; 404 for a
task that is not the caller's; 429). Fields the gateway does not know are ignored, as the hosted
API does (published clients send ``size: "auto"``, ``resolution``, ``quality`` to every model).

Behind the door a gateway job is an ordinary job: the images are fetched (through the SSRF guard
of :mod:`app.fetcher`), ingested like uploads, stored, and queued with ``source="gateway"``; the
worker runs it with history, stored results and failover. A GET reads only the database, so an
upstream hiccup never turns into a 5xx or 429 there (published clients give up on the first one):
the job simply stays ``processing`` while the worker retries. Result links are signed, expiring
``/s/...`` links, signed afresh on every read, so they work without credentials like the hosted
ones. Ids look like EvoLink's (``task-unified-<unix>-<our id>``) because clients check the prefix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from app import spend, tasks
from app.auth import Principal, Unauthorized, user_from_token
from app.db import session_scope
from app.errors import InputError, NotFound, StudioError
from app.fetcher import SafeFetcher
from app.images import MAX_IMAGES, ingest_image
from app.intake import check_model_and_options, display_name, store_job
from app.models import Task
from app.prompts import check_prompt
from app.web import files
from app.web.deps import Studio, UserDep, client_ip
from app.webhooks import CallbackSender, webhook_secret

log = logging.getLogger("qes.gateway")

router = APIRouter(tags=["gateway (EvoLink-compatible)"])

TASK_PREFIX = "task-unified-"
_TASK_ID = re.compile(r"task-unified-(\d{1,12})-([0-9a-f]{16})")
MAX_BODY_BYTES = 1024 * 1024
DEFAULT_ESTIMATE = 30  # seconds; what EvoLink's own examples announce before anything is known
PLUS_OPTIONS = ("n", "negative_prompt", "size", "seed", "prompt_extend", "watermark")
NEGATIVE_PROMPT_MAX = 500

# Studio status -> EvoLink status. A queued job that already had a try (a retry after a transient
# fault) stays "processing": a client must never see its job go backwards.
_STATUS = {"running": "processing", "succeeded": "completed", "failed": "failed"}
# Our own failure codes, in EvoLink's vocabulary where it has a word for them.
_ERROR_CODES = {"timeout": "generation_timeout", "canceled": "request_cancelled"}


# --- errors in EvoLink's shape ------------------------------------------------------------------


class GatewayInputError(InputError):
    """A 400 that also names the request field (EvoLink's optional ``error.param``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__("invalid_request", message, 400)
        self.param = param


def error_response(
    status: int,
    code: str,
    message: str,
    kind: str,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "code": code or "error",
        "message": message or "The request was refused.",
        "type": kind,
    }
    if param:
        body["param"] = param
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _from_studio_error(exc: StudioError, param: str | None = None) -> JSONResponse:
    if isinstance(exc, tasks.LimitError):
        # EvoLink's code for a rate limit; our own for the other limits (running jobs, the
        # history cap, the daily spend), so a script can tell them apart. Same status and type.
        return error_response(
            429,
            "rate_limit_exceeded" if exc.code == "rate_limited" else exc.code,
            exc.message,
            "rate_limit_error",
            headers={"Retry-After": str(exc.retry_after)},
        )
    if isinstance(exc, Unauthorized):
        return error_response(401, "unauthorized", exc.message, "authentication_error")
    if isinstance(exc, NotFound):
        return error_response(
            404, "task_not_found", "The requested task could not be found.", "invalid_request_error"
        )
    if isinstance(exc, InputError):
        return error_response(
            400,
            "invalid_request",
            exc.message,
            "invalid_request_error",
            param=getattr(exc, "param", None) or param,
        )
    status = exc.status_code
    return error_response(
        status, exc.code, exc.message, "invalid_request_error" if status < 500 else "api_error"
    )


# --- the gateway's shared parts -----------------------------------------------------------------


@dataclass
class Gateway:
    """Per-app state: the guarded fetcher and the callback sender (tests may swap the sender)."""

    studio: Studio
    fetcher: SafeFetcher
    callbacks: CallbackSender
    # Base URL a job was created under, so its callback's result links point where the client
    # reached us (when QES_PUBLIC_BASE_URL is not set).
    # Never another request's Host: that is the client's word, and must not steer links sent to
    # someone else's receiver. After a restart the fallback is the configured address.
    base_urls: dict[str, str] = field(default_factory=dict)
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    def base_url_for(self, job_id: str) -> str:
        settings = self.studio.settings
        return (
            settings.public_base_url
            or self.base_urls.pop(job_id, None)
            or f"http://{settings.host}:{settings.port}"
        )

    def request_base(self, request: Request) -> str:
        return self.studio.settings.public_base_url or str(request.base_url).rstrip("/")


def make_callbacks(gateway: Gateway, **options: Any) -> CallbackSender:
    """A callback sender wired to this gateway; ``options`` go to :class:`CallbackSender`."""
    studio = gateway.studio
    return CallbackSender(
        studio.sessions,
        gateway.fetcher,
        studio.settings.signing_key,
        lambda task, base: task_detail(studio, task, base),
        base_url=gateway.base_url_for,
        **options,
    )


def install(app: FastAPI) -> Gateway:
    """Set the gateway up for this app: called once by the lifespan after the worker exists.

    Registers the callback delivery as a worker finish hook and re-sends, in the background, the
    callbacks a previous run left pending.
    """
    gateway = _build(app)
    studio = gateway.studio

    async def finished(job_id: str) -> None:
        # Looked up at call time, so a test can swap in its own sender.
        await app.state.gateway.callbacks.on_finished(job_id)

    if studio.worker is not None:
        studio.worker.finish_hooks.append(finished)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return gateway
    resend = loop.create_task(gateway.callbacks.resend_pending(), name="qes-callback-resend")
    gateway._background.add(resend)
    resend.add_done_callback(gateway._background.discard)
    return gateway


def get_gateway(app: FastAPI) -> Gateway:
    gateway = getattr(app.state, "gateway", None)
    if gateway is None:  # the app was not started through its lifespan (only in odd test setups)
        gateway = _build(app)
    return gateway


def _build(app: FastAPI) -> Gateway:
    studio: Studio = app.state.studio
    gateway = Gateway(
        studio=studio,
        fetcher=SafeFetcher(studio.settings.fetch_allowed_networks),
        callbacks=None,  # type: ignore[arg-type]
    )
    # A code-level seam for tests only (e.g. plain-http receivers on 127.0.0.1): set on the app
    # object before it starts; no setting or request can reach it.
    options = getattr(app.state, "gateway_callback_options", None) or {}
    gateway.callbacks = make_callbacks(gateway, **options)
    app.state.gateway = gateway
    return gateway


# --- rendering in EvoLink's shapes --------------------------------------------------------------


def gateway_id(task: Task) -> str:
    return f"{TASK_PREFIX}{_unix(task)}-{task.id}"


def _unix(task: Task) -> int:
    return int(task.created_at.replace(tzinfo=UTC).timestamp())


def evolink_status(task: Task) -> str:
    if task.status == "queued":
        return "processing" if task.attempts > 0 else "pending"
    return _STATUS.get(task.status, "failed")  # canceled -> failed (request_cancelled)


def result_links(studio: Studio, task: Task, base: str) -> list[str]:
    """Signed, expiring links to the results: no credentials needed, fresh on every call."""
    links = []
    for f in task.results:
        token = studio.signer.sign(task.id, f.role, f.position)
        links.append(files.signed_url(base, token, f.ext, f.role, f.position))
    return links


def task_detail(
    studio: Studio, task: Task, base: str, shown_id: str | None = None
) -> dict[str, Any]:
    """The job as EvoLink's ``TaskDetailResponse`` (also the body of a callback)."""
    status = evolink_status(task)
    out: dict[str, Any] = {
        "created": _unix(task),
        "id": shown_id or gateway_id(task),
        "model": task.model,
        "object": "image.generation.task",
        "progress": 100 if status == "completed" else max(0, min(99, task.progress or 0)),
        "status": status,
        "task_info": {"can_cancel": False},
        "type": "image",
    }
    if status in ("pending", "processing"):
        out["task_info"]["estimated_time"] = task.estimated_time or DEFAULT_ESTIMATE
    if status == "completed":
        out["results"] = result_links(studio, task, base)
    if status == "failed":
        code = task.error_code or ("canceled" if task.status == "canceled" else "unknown_error")
        message = task.error_message or (
            "The job was canceled." if task.status == "canceled" else "The job failed."
        )
        out["error"] = {
            "code": _ERROR_CODES.get(code, code),
            "message": message,
            "type": "task_error",
        }
    return out


def _created_response(studio: Studio, task: Task) -> dict[str, Any]:
    """EvoLink's ``ImageGenerationResponse`` for a job just queued."""
    n = int((task.options or {}).get("n", 1))
    return {
        "created": _unix(task),
        "id": gateway_id(task),
        "model": task.model,
        "object": "image.generation.task",
        "progress": 0,
        "status": "pending",
        "task_info": {"can_cancel": False, "estimated_time": DEFAULT_ESTIMATE},
        "type": "image",
        "usage": {
            "billing_rule": "per_call",
            "credits_reserved": round(n * spend.reservation_price(studio.settings), 6),
            "user_group": "default",
        },
    }


# --- the request --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    prompt: str
    image_urls: list[str]
    options: dict[str, Any]
    callback_url: str | None


def _authenticate(studio: Studio, request: Request) -> Principal:
    """Only a personal API token opens the gateway (no cookie, no proxy header)."""
    header = request.headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "Authentication required: send 'Authorization: Bearer <token>' with a personal API "
            "token (create one on the studio's settings page or with POST /api/tokens)."
        )
    with session_scope(studio.sessions) as session:
        return user_from_token(session, token.strip())


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise GatewayInputError(
            f"The request body is {len(raw)} bytes; at most {MAX_BODY_BYTES} are accepted "
            "(images go by URL in image_urls, not inline)."
        )
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayInputError("The request body must be JSON.") from exc
    except RecursionError as exc:  # "[[[[...]]]]" within the size cap: the parser gives up
        raise GatewayInputError(
            "The request body is JSON nested too deeply; send a flat JSON object."
        ) from exc
    if not isinstance(body, dict):
        raise GatewayInputError(
            'The request body must be a JSON object such as {"model": "qwen-image-edit", '
            '"prompt": "...", "image_urls": ["https://..."]}.'
        )
    return body


def _option_text(name: str, value: Any) -> str | None:
    """A plus-model option from JSON, as the text check_model_and_options validates."""
    if value is None:
        return None
    if name in ("prompt_extend", "watermark"):
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return value
        raise GatewayInputError(f"{name} must be true or false.", name)
    if name in ("n", "seed"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise GatewayInputError(f"{name} must be a whole number.", name)
        return str(value)
    if not isinstance(value, str):
        raise GatewayInputError(f"{name} must be a string.", name)
    if name == "size" and value.strip().lower() == "auto":
        return None  # what published clients send to mean "the default"
    if name == "negative_prompt":
        return value.strip()[:NEGATIVE_PROMPT_MAX]  # EvoLink truncates, it does not refuse
    return value


def parse_request(body: dict[str, Any]) -> GenerationRequest:
    """Check the documented fields; everything else in the body is ignored."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise GatewayInputError("model must be a string.", "model")
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise GatewayInputError(
            "prompt is required: a string describing the edit (at most 2000 tokens).", "prompt"
        )
    try:
        text = check_prompt(prompt)
    except InputError as exc:
        raise GatewayInputError(exc.message, "prompt") from exc

    urls = body.get("image_urls")
    if urls is None:
        raise GatewayInputError(
            f"image_urls is required: a list of 1 to {MAX_IMAGES} image URLs.", "image_urls"
        )
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not urls:
        raise GatewayInputError(
            f"image_urls must be a list of 1 to {MAX_IMAGES} image URLs.", "image_urls"
        )
    if len(urls) > MAX_IMAGES:
        raise GatewayInputError(
            f"image_urls has {len(urls)} URLs; at most {MAX_IMAGES} images are allowed.",
            "image_urls",
        )
    for index, url in enumerate(urls):
        if not isinstance(url, str) or not url.strip():
            raise GatewayInputError(f"image_urls[{index}] must be a non-empty URL.", "image_urls")

    raw: dict[str, str] = {}
    name = (model or "qwen-image-edit").strip()
    if name == "qwen-image-edit-plus":
        for key in PLUS_OPTIONS:
            value = _option_text(key, body.get(key))
            if value is not None:
                raw[key] = value
    # For the base model the plus options are unknown fields, so ignored like any other.
    try:
        checked_model, options = check_model_and_options(name, raw)
    except InputError as exc:
        param = "model" if exc.code == "invalid_model" else None
        raise GatewayInputError(exc.message, param) from exc

    callback = body.get("callback_url")
    if callback is not None and not isinstance(callback, str):
        raise GatewayInputError("callback_url must be a string (an https URL).", "callback_url")
    return GenerationRequest(
        model=checked_model,
        prompt=text,
        image_urls=[u.strip() for u in urls],
        options=options,
        callback_url=callback.strip() if callback and callback.strip() else None,
    )


async def _fetch_inputs(gateway: Gateway, urls: list[str]) -> list[tasks.NewInput]:
    """Fetch every URL (in parallel) and ingest each like an upload; the first failure wins."""
    labels = [f"image_urls[{i}]" for i in range(len(urls))]
    fetched = await asyncio.gather(
        *(gateway.fetcher.fetch(url, label) for url, label in zip(urls, labels, strict=True)),
        return_exceptions=True,
    )
    for item in fetched:
        if isinstance(item, BaseException):
            raise item
    inputs = []
    for url, label, item in zip(urls, labels, fetched, strict=True):
        try:
            image = await run_in_threadpool(ingest_image, item.data, label=label)  # type: ignore[union-attr]
        except InputError as exc:
            raise GatewayInputError(exc.message, "image_urls") from exc
        inputs.append(tasks.NewInput(image, display_name(urlsplit(url).path)))
    return inputs


def _store_job(
    studio: Studio,
    user: Principal,
    parsed: GenerationRequest,
    inputs: list[tasks.NewInput],
    ip: str | None,
) -> Task:
    """Queue the job through the same door as the page and /api (intake.store_job)."""
    return store_job(
        studio,
        user,
        prompt=parsed.prompt,
        model=parsed.model,
        options=parsed.options,
        inputs=inputs,
        client_ip=ip,
        source="gateway",
        client_callback_url=parsed.callback_url,
    )


# --- routes -------------------------------------------------------------------------------------


_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["model", "prompt", "image_urls"],
                    "properties": {
                        "model": {"type": "string", "enum": list(tasks.MODELS)},
                        "prompt": {"type": "string", "description": "At most 2000 tokens."},
                        "image_urls": {
                            "type": "array",
                            "items": {"type": "string", "format": "uri"},
                            "minItems": 1,
                            "maxItems": MAX_IMAGES,
                            "description": "Fetched by the studio (public addresses only, or "
                            "QES_FETCH_ALLOWED_NETWORKS); 10 MB and 384-3072 px per image.",
                        },
                        "callback_url": {
                            "type": "string",
                            "format": "uri",
                            "maxLength": 2048,
                            "description": "https only; POSTed the task detail when the task "
                            "ends, signed with Standard Webhooks headers.",
                        },
                        "n": {"type": "integer", "minimum": 1, "maximum": 6},
                        "negative_prompt": {"type": "string", "maxLength": NEGATIVE_PROMPT_MAX},
                        "size": {"type": "string", "pattern": "^[0-9]+x[0-9]+$"},
                        "seed": {"type": "integer", "minimum": 0, "maximum": 2147483647},
                        "prompt_extend": {"type": "boolean"},
                        "watermark": {"type": "boolean"},
                    },
                }
            }
        },
    }
}


@router.post(
    "/v1/images/generations",
    openapi_extra=_CREATE_BODY,
    summary="Create an edit task (EvoLink-compatible)",
    description="EvoLink's request: model, prompt, image_urls (1-3), optional callback_url and, "
    "for qwen-image-edit-plus, n, negative_prompt, size, seed, prompt_extend, watermark. "
    "Authenticated with a personal API token.",
)
async def create_generation(request: Request) -> JSONResponse:
    studio: Studio = request.app.state.studio
    gateway = get_gateway(request.app)
    try:
        user = await run_in_threadpool(_authenticate, studio, request)
        parsed = parse_request(await _json_object(request))
        if parsed.callback_url:
            try:
                await gateway.callbacks.check_url(parsed.callback_url)
            except InputError as exc:
                raise GatewayInputError(exc.message, "callback_url") from exc
        ip = client_ip(request)
        # Limits before fetching: a refused request must not make the studio download anything.
        await run_in_threadpool(_check_limits, studio, user, ip, parsed.options)
        try:
            inputs = await _fetch_inputs(gateway, parsed.image_urls)
        except InputError as exc:
            raise GatewayInputError(exc.message, "image_urls") from exc
        task = await run_in_threadpool(_store_job, studio, user, parsed, inputs, ip)
    except StudioError as exc:
        return _from_studio_error(exc)
    except Exception:
        log.exception("gateway create failed")
        return error_response(500, "internal_error", "Internal server error.", "api_error")
    base = gateway.request_base(request)
    if parsed.callback_url:
        gateway.base_urls[task.id] = base
    if studio.worker is not None:
        studio.worker.wake()
    return JSONResponse(_created_response(studio, task))


def _check_limits(studio: Studio, user: Principal, ip: str | None, options: dict[str, Any]) -> None:
    with session_scope(studio.sessions) as session:
        tasks.check_limits(
            session, studio.settings, user.user_id, ip, spend.requested_images(options)
        )


@router.get(
    "/v1/tasks/{task_id}",
    summary="Query a task (EvoLink-compatible)",
    description="Status pending|processing|completed|failed; results (signed links that work "
    "without credentials, signed afresh on every call) when completed; error when failed.",
)
async def get_task_detail(task_id: str, request: Request) -> JSONResponse:
    studio: Studio = request.app.state.studio
    gateway = get_gateway(request.app)
    try:
        user = await run_in_threadpool(_authenticate, studio, request)
        if not task_id.startswith(TASK_PREFIX):
            return error_response(
                400,
                "invalid_task_id",
                f"Invalid task ID format, must start with '{TASK_PREFIX}'.",
                "invalid_request_error",
                param="task_id",
            )
        match = _TASK_ID.fullmatch(task_id)
        if match is None:
            raise NotFound()
        base = gateway.request_base(request)
        body = await run_in_threadpool(_read_detail, studio, user, match.group(2), base, task_id)
    except StudioError as exc:
        return _from_studio_error(exc)
    return JSONResponse(body)


def _read_detail(
    studio: Studio, user: Principal, our_id: str, base: str, shown_id: str
) -> dict[str, Any]:
    """Read from the database only; a briefly locked database is retried, not reported."""
    for attempt in range(5):
        try:
            with session_scope(studio.sessions) as session:
                task = tasks.get_task(session, user.user_id, our_id)
                return task_detail(studio, task, base, shown_id)
        except OperationalError:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


_KNOWN_PATHS = {"images/generations": "POST"}


@router.api_route(
    "/v1/{rest:path}",
    # HEAD and OPTIONS too: otherwise the studio-wide 405 answers them without ``type``.
    methods=["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
async def unknown_v1(rest: str, request: Request) -> JSONResponse:
    """Anything else under /v1 answers in EvoLink's error shape, not the studio's."""
    if rest in _KNOWN_PATHS or rest.startswith("tasks/") and rest.count("/") == 1:
        allowed = _KNOWN_PATHS.get(rest, "GET")
        return error_response(
            405,
            "method_not_allowed",
            f"Use {allowed} for /v1/{rest}.",
            "invalid_request_error",
            headers={"Allow": allowed},
        )
    return error_response(
        404, "not_found", f"No such endpoint: /v1/{rest}.", "invalid_request_error"
    )


@router.get("/api/webhook-secret", summary="The caller's secret for verifying gateway callbacks")
def get_webhook_secret(request: Request, user: UserDep) -> dict[str, str]:
    """Standard Webhooks secret (``whsec_...``) that signs this user's callbacks."""
    studio: Studio = request.app.state.studio
    return {"secret": webhook_secret(studio.settings.signing_key, user.user_id)}

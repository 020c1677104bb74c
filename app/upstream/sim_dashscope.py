"""Alibaba Model Studio / DashScope's synchronous image edit, spoken by the simulator.

Why it exists: the DashScope adapter (app/upstream/dashscope.py) has to run against a server that
answers the way ``dashscope-intl.aliyuncs.com`` does. Shapes follow the notes in
shared/reference/upstream-apis.md §2 (Model Studio's qwen-image-edit API page and error codes):

- ``POST /api/v1/services/aigc/multimodal-generation/generation`` with ``Authorization: Bearer``
  and ``{model, input: {messages: [{role: "user", content: [{image}, ..., {text}]}]},
  parameters: {n, negative_prompt, size "W*H", seed, prompt_extend, watermark}}``. There is no
  task: the call holds until the images exist (``delay`` seconds here) and answers
  ``{output: {choices: [{finish_reason, message: {role, content: [{image: url}, ...]}}]},
  usage: {width, height, image_count}, request_id}``.
- Images are http(s) URLs (fetched) or ``data:<type>;base64,...`` URIs; 1-3 of them.
- Errors are ``{request_id, code, message}``: 400 InvalidParameter, 400 DataInspectionFailed,
  400 Arrearage, 401 InvalidApiKey, 403 AccessDenied, 429 Throttling.RateQuota, 500 InternalError.

Fault knobs (SimulatorConfig): ``create_status``/``create_fail_count`` answer the call with a
DashScope error for that status (402 becomes the real no-credit answer, 400 Arrearage);
``task_error`` (and ``[sim:fail=...]``) ends the call with the matching DashScope error
(content_policy_violation / nsfw_output → DataInspectionFailed, invalid_parameters /
image_processing_error → InvalidParameter, resource_exhausted / quota_exceeded / rate_limited →
429 Throttling.RateQuota, anything else → 500 InternalError); ``hang`` holds the call;
``malformed_json`` breaks the answer; ``drop_create_response`` makes the images (billed) and then
loses the answer. The query knobs do not apply: there is nothing to query.

Deliberate differences: the output keeps the first input's size (DashScope follows ``size`` or the
last input's aspect); the text is accepted at any length (DashScope truncates it to 800
characters without an error); no Retry-After header is sent with 429 (none is documented).
"""

from __future__ import annotations

import hmac
import json
import re
import uuid
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.upstream.simulator import (
    _directives,
    _is_http_url,
    _LostAnswer,
    _take_fault,
    _TaskFailed,
    load_and_edit,
    png_size,
)

if TYPE_CHECKING:
    from app.upstream.simulator import _Simulator

PATH = "/api/v1/services/aigc/multimodal-generation/generation"
MODELS = (
    "qwen-image-edit",
    "qwen-image-edit-plus",
    "qwen-image-edit-plus-2025-10-30",
    "qwen-image-edit-plus-2025-12-15",
)
_MAX_IMAGES = 3
_SIZE_RANGE = (512, 2048)
_SEED_MAX = 2_147_483_647
_MAX_KEPT_RESULTS = 5000

# Errors for an HTTP status asked for by create_status: (status answered, code, message).
_HTTP_FAULTS: dict[int, tuple[int, str, str]] = {
    400: (400, "InvalidParameter", "The request is invalid."),
    401: (401, "InvalidApiKey", "Invalid API-key provided."),
    402: (
        400,
        "Arrearage",
        "Access denied, please make sure your account is in good standing.",
    ),
    403: (403, "AccessDenied", "Access denied."),
    429: (429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."),
    500: (
        500,
        "InternalError",
        "An internal error has occured, please try again later or contact service support.",
    ),
}
_TASK_ERRORS: dict[str, tuple[int, str, str]] = {
    "content_policy_violation": (
        400,
        "DataInspectionFailed",
        "Input data may contain inappropriate content.",
    ),
    "nsfw_output": (400, "DataInspectionFailed", "Output data may contain inappropriate content."),
    "invalid_parameters": (400, "InvalidParameter", "The parameters do not meet the requirements."),
    "image_processing_error": (400, "InvalidParameter", "The image could not be read."),
    "image_dimension_mismatch": (
        400,
        "InvalidParameter",
        "The image size is out of the supported range.",
    ),
    "resource_exhausted": _HTTP_FAULTS[429],
    "quota_exceeded": _HTTP_FAULTS[429],
    "rate_limited": _HTTP_FAULTS[429],
}


class _Invalid(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DashScopeSync:
    """DashScope's one synchronous endpoint; results live in the simulator's link store."""

    def __init__(self, core: _Simulator) -> None:
        self.core = core
        self.kept: list[str] = []  # result ids, oldest first, so memory stays bounded

    def reset(self) -> None:
        self.kept.clear()

    def routes(self) -> list[Route]:
        return [Route(PATH, self.generate, methods=["POST"])]

    async def generate(self, request: Request) -> Response:
        core = self.core
        core.stats["dashscope_calls"] += 1
        request_id = str(uuid.uuid4())
        denied = self._check_auth(request, request_id)
        if denied is not None:
            return denied
        raw = await request.body()
        if core.config.hang and await core._hang(request):
            return Response(status_code=503)
        status = _take_fault(core.config, "create_status", "create_fail_count")
        if status is not None:
            return _fault(request_id, *_http_fault(status))
        if core.config.malformed_json:
            return Response('{"output": {"choices": [', media_type="application/json")
        try:
            body: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _fault(request_id, 400, "InvalidParameter", "The request body is not JSON.")
        core.record("dashscope", request.url.path, body)
        try:
            refs, text, count = _validate(body)
        except _Invalid as exc:
            return _fault(request_id, 400, "InvalidParameter", exc.message)
        fail, delay = _directives(text)
        planned = fail or _take_fault(core.config, "task_error", "task_error_count")
        try:
            png = await load_and_edit(core, refs)
        except _TaskFailed as exc:
            where = f"content[{exc.index}]" if exc.index is not None else "an image"
            return _fault(
                request_id,
                400,
                "InvalidParameter",
                f"The image at {where} could not be downloaded or read: {exc.message}",
            )
        if not await core.wait(request, core.config.delay if delay is None else delay):
            return Response(status_code=503)  # nobody is listening any more
        if planned is not None:
            status_code, code, message = _TASK_ERRORS.get(
                planned, (500, "InternalError", f"Generation failed ({planned}).")
            )
            return _fault(request_id, status_code, code, message)
        base_url = str(request.base_url).rstrip("/")
        content = []
        for _ in range(count):
            result_id, url = core.store_result(png, base_url)
            self._keep(result_id)
            content.append({"image": url})
        core.stats["dashscope_generations"] += 1
        if _take_fault(core.config, "drop_create_response", "drop_create_count"):
            return _LostAnswer()
        width, height = png_size(png)
        return JSONResponse(
            {
                "output": {
                    "choices": [
                        {
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content},
                        }
                    ]
                },
                "usage": {"width": width, "height": height, "image_count": count},
                "request_id": request_id,
            }
        )

    def _check_auth(self, request: Request, request_id: str) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        expected = self.core.config.api_key
        if (
            scheme.lower() != "bearer"
            or not token
            or (expected is not None and not hmac.compare_digest(token.encode(), expected.encode()))
        ):
            return _fault(request_id, 401, "InvalidApiKey", "Invalid API-key provided.")
        return None

    def _keep(self, result_id: str) -> None:
        """Result links expire on their own; this only caps how many images stay in memory."""
        self.kept.append(result_id)
        while len(self.kept) > _MAX_KEPT_RESULTS:
            self.core.results.pop(self.kept.pop(0), None)


def _validate(body: Any) -> tuple[list[str], str, int]:
    """Checks a call against the documented request; returns inputs, text and image count."""
    if not isinstance(body, dict):
        raise _Invalid("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("Required parameter 'model' missing.")
    if model not in MODELS:
        raise _Invalid("Model not exist.")
    given = body.get("input")
    messages = given.get("messages") if isinstance(given, dict) else None
    if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict):
        raise _Invalid("input.messages must hold exactly one message.")
    message = messages[0]
    if message.get("role") != "user":
        raise _Invalid("The message role must be 'user'.")
    content = message.get("content")
    if not isinstance(content, list):
        raise _Invalid("The message content must be a list.")
    refs: list[str] = []
    texts: list[str] = []
    for item in content:
        if not isinstance(item, dict) or len(item) != 1:
            raise _Invalid("Each content item holds exactly one of 'image' or 'text'.")
        if isinstance(item.get("image"), str):
            ref = item["image"]
            if not (ref.startswith("data:") or _is_http_url(ref)):
                raise _Invalid("An image must be an http(s) URL or a base64 data URI.")
            refs.append(ref)
        elif isinstance(item.get("text"), str):
            texts.append(item["text"])
        else:
            raise _Invalid("Each content item holds exactly one of 'image' or 'text'.")
    if not 1 <= len(refs) <= _MAX_IMAGES:
        raise _Invalid(f"The message must hold 1 to {_MAX_IMAGES} images.")
    if len(texts) != 1 or not texts[0].strip():
        raise _Invalid("The message must hold exactly one non-empty text.")
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        raise _Invalid("parameters must be an object.")
    plus = model != "qwen-image-edit"
    count = params.get("n", 1)
    if not _is_int(count) or not 1 <= count <= (6 if plus else 1):
        raise _Invalid(f"n must be an integer between 1 and {6 if plus else 1} for {model}.")
    size = params.get("size")
    if size is not None:
        if not plus:
            raise _Invalid(f"size is not supported by {model}.")
        match = re.fullmatch(r"([0-9]+)\*([0-9]+)", size) if isinstance(size, str) else None
        low, high = _SIZE_RANGE
        if match is None or not all(low <= int(side) <= high for side in match.groups()):
            raise _Invalid(f"size must be 'W*H' with each side in [{low}, {high}].")
        if count != 1:
            raise _Invalid("size can only be set when n is 1.")
    seed = params.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= _SEED_MAX):
        raise _Invalid(f"seed must be an integer in [0, {_SEED_MAX}].")
    negative = params.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise _Invalid("negative_prompt must be a string.")
    for name in ("prompt_extend", "watermark"):
        if name in params and not isinstance(params[name], bool):
            raise _Invalid(f"{name} must be a boolean.")
    return refs, texts[0], int(count)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _http_fault(status: int) -> tuple[int, str, str]:
    if status in _HTTP_FAULTS:
        return _HTTP_FAULTS[status]
    if status >= 500:
        return status, "InternalError", "An internal error has occured."
    return status, "BadRequest", "The request was refused."


def _fault(request_id: str, status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"request_id": request_id, "code": code, "message": message}, status_code=status
    )

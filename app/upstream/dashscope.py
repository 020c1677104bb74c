"""Alibaba Model Studio / DashScope's synchronous image edit (multimodal generation).

The only module that speaks DashScope's HTTP. Notes: shared/reference/upstream-apis.md §2.

DashScope has no task API for Qwen Image Edit: one ``POST
/api/v1/services/aigc/multimodal-generation/generation`` holds until the images exist and answers
their URLs (valid 24 h). So ``submit()`` does the whole job, with a long read timeout (180 s), and
returns a terminal status at once: ``succeeded`` with the result URLs, or ``failed``. The worker
then downloads the results without ever polling. The task id saved is DashScope's ``request_id``.

``poll()`` exists for the interface's sake: the worker only polls jobs still ``running``, and a
synchronous submit never leaves one running. If it is called anyway (a download failed and the
worker looks again), it answers the outcome this process remembers for that id (the last 1,000).
An id it does not remember (the studio restarted in between) cannot be looked up at DashScope, so
it raises a final ``result_lost`` error that says so, rather than sending the job again behind the
person's back (the first call was billed).

Inputs go as the signed public link when the studio has one, otherwise inline as a base64 data URI
(DashScope accepts ``data:{MIME};base64,...``), so no upload step is needed. Options arrive under
EvoLink's names and keep them, in ``parameters``: ``n``, ``negative_prompt``, ``seed``,
``prompt_extend``, ``watermark``; ``size`` "WxH" becomes DashScope's "W*H". The model keeps its
name (``qwen-image-edit`` / ``qwen-image-edit-plus``). DashScope truncates the text to 800
characters without a word; a longer prompt is refused here instead, with a retryable
``unsupported_input`` error, so that the worker moves the job to a provider that reads all of it.

Errors in plain words, classified like evolink.py: InvalidApiKey (401), Arrearage (400: the
account is overdue) and AccessDenied (403) → operator; DataInspectionFailed → final content
policy; InvalidParameter and other 400s → final; Throttling (429) → retryable with Retry-After
when sent; 5xx → retryable. DashScope bills successful images only ("failures free"), so an error
answer is never ambiguous; a call whose answer was lost (a timeout after sending, a broken or
malformed answer) is, because the images may have been made and billed.
"""

from __future__ import annotations

import base64
import uuid
from collections import OrderedDict
from typing import Any

import httpx

from app.upstream.base import (
    TOKEN_ID,
    HttpProvider,
    InputImage,
    SubmitRequest,
    Submitted,
    UpstreamError,
    UpstreamStatus,
    as_dict,
    as_list,
    call,
    clean_code,
    default_timeout,
    is_web_url,
    json_body,
    retry_after_seconds,
)
from app.upstream.base import join_detail as _join

PATH = "/api/v1/services/aigc/multimodal-generation/generation"
MODELS = ("qwen-image-edit", "qwen-image-edit-plus")
MAX_TEXT_CHARS = 800  # DashScope truncates longer text silently
# The call holds until the images exist: a long read deadline, still a deadline.
CALL_TIMEOUT = default_timeout(read=180.0)
_REMEMBERED = 1000
_PARAMETERS = ("n", "negative_prompt", "size", "seed", "prompt_extend", "watermark")
# DashScope's request ids are UUIDs; one that is not a short printable token (base.TOKEN_ID)
# is replaced by our own.
_REQUEST_ID = TOKEN_ID


class DashScopeProvider(HttpProvider):
    """Talks to https://dashscope-intl.aliyuncs.com (or the simulator, which speaks the same)."""

    # Qwen Image Edit on DashScope takes no mask; the worker composites masked jobs itself.

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        price: float,
        name: str = "dashscope",
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = CALL_TIMEOUT,
    ) -> None:
        super().__init__(
            name=name,
            price=price,
            base_url=base_url,
            auth={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
            # Downloads are ordinary: only the generating call needs the long read deadline.
            download_timeout=default_timeout(),
        )
        self._outcomes: OrderedDict[str, UpstreamStatus] = OrderedDict()

    async def submit(self, request: SubmitRequest) -> Submitted:
        body = _body(request)
        response = await call(self._client, "POST", f"{self._base}{PATH}", creating=True, json=body)
        data = _json_or_error(response)
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
            request_id = f"dashscope-{uuid.uuid4()}"
        status = _outcome(data)
        self._outcomes[request_id] = status
        while len(self._outcomes) > _REMEMBERED:
            self._outcomes.popitem(last=False)
        return Submitted(request_id, status)

    async def poll(self, upstream_task_id: str) -> UpstreamStatus:
        status = self._outcomes.get(upstream_task_id)
        if status is not None:
            return status
        raise UpstreamError(
            "result_lost",
            "DashScope answers at once and keeps no task to look up, and the studio restarted "
            "before it saved this result. The job was not sent again, so it cannot be billed "
            "twice; press Retry to send it again.",
        )


def _body(request: SubmitRequest) -> dict[str, Any]:
    """DashScope's request for this job, or ``unsupported_input`` if it cannot run as asked."""
    if request.model not in MODELS:
        raise UpstreamError(
            "unsupported_input",
            f"DashScope is not set up for the model {request.model!r} here.",
            retryable=True,
        )
    if not request.images:
        raise UpstreamError("invalid_parameters", "The job has no input image.")
    if len(request.prompt) > MAX_TEXT_CHARS:
        raise UpstreamError(
            "unsupported_input",
            f"DashScope reads at most {MAX_TEXT_CHARS} characters of a prompt and this one has "
            f"{len(request.prompt)}; it would be cut short, so another provider must take it.",
            retryable=True,
        )
    unknown = sorted(set(request.options) - set(_PARAMETERS))
    if unknown:
        raise UpstreamError(
            "unsupported_input",
            f"DashScope has no equivalent for the option(s) {', '.join(unknown)}.",
            retryable=True,
        )
    parameters: dict[str, Any] = {}
    for name in _PARAMETERS:
        value = request.options.get(name)
        if value is None or value == "":
            continue
        parameters[name] = str(value).replace("x", "*") if name == "size" else value
    content: list[dict[str, str]] = [{"image": _image_ref(image)} for image in request.images]
    content.append({"text": request.prompt})
    return {
        "model": request.model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }


def _image_ref(image: InputImage) -> str:
    """The signed public link when the studio has one, else the bytes inline as a data URI."""
    if image.public_url:
        return image.public_url
    return f"data:{image.content_type};base64,{base64.b64encode(image.data).decode('ascii')}"


def _outcome(data: dict[str, Any]) -> UpstreamStatus:
    """The finished call: every image URL in every choice, or a failure if there is none."""
    choices = as_list(as_dict(data.get("output")).get("choices"))
    urls: list[str] = []
    reasons: list[str] = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        reasons.append(clean_code(choice.get("finish_reason"), ""))
        for item in as_list(as_dict(choice.get("message")).get("content")):
            url = as_dict(item).get("image")
            if is_web_url(url):
                urls.append(url)
    if urls:
        return UpstreamStatus("succeeded", 100, result_urls=urls)
    reason = ", ".join(sorted({r for r in reasons if r})) or "none"
    return UpstreamStatus(
        "failed",
        error=UpstreamError(
            "generation_failed_no_content",
            f"DashScope finished without a result image (finish reason: {reason}).",
            retryable=True,
        ),
    )


def _json_or_error(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a successful call, or the matching UpstreamError."""
    data: Any = json_body(response)
    status = response.status_code
    if status < 300 and isinstance(data, dict) and not (data.get("code") and "output" not in data):
        return data
    if status < 300:
        if not isinstance(data, dict):
            raise UpstreamError(
                "bad_upstream_answer",
                "DashScope sent an answer that is not valid JSON; it may have made (and billed) "
                "the images.",
                retryable=True,
                ambiguous=True,
            )
        status = 400  # an error code in a 2xx answer: judge it by its code
    body = as_dict(data)
    message = body.get("message") if isinstance(body.get("message"), str) else ""
    raise _error(status, clean_code(body.get("code"), ""), message, response)


def _error(status: int, code: str, message: str, response: httpx.Response) -> UpstreamError:
    """DashScope's error codes (Model Studio's error-code page), in plain words."""
    if code == "InvalidApiKey" or status == 401:
        return UpstreamError(
            "upstream_unauthorized",
            "DashScope refused the studio's API key. An administrator must fix "
            "QES_DASHSCOPE_API_KEY (keys are tied to a region: check QES_DASHSCOPE_BASE_URL too).",
            operator=True,
            http_status=status,
        )
    if code == "Arrearage":
        return UpstreamError(
            "upstream_no_credit",
            "The studio's Alibaba Cloud account is overdue (Arrearage); DashScope refuses work "
            "until it is paid.",
            operator=True,
            http_status=status,
        )
    if code.startswith("AccessDenied") or status == 403:
        return UpstreamError(
            "upstream_forbidden",
            _join("DashScope refused the studio's account for this model.", message),
            operator=True,
            http_status=status,
        )
    if code.startswith("DataInspectionFailed") or code == "data_inspection_failed":
        return UpstreamError(
            "content_policy_violation",
            "The provider's safety filter blocked this request. Try a different prompt or image.",
            http_status=status,
        )
    if code.startswith("Throttling") or status == 429:
        return UpstreamError(
            "upstream_rate_limited",
            "DashScope is rate limiting the studio; trying again shortly.",
            retryable=True,
            retry_after=retry_after_seconds(response),
            http_status=status,
        )
    if status == 408:  # DashScope gave up reading our request: no image was made
        return UpstreamError(
            "upstream_timeout",
            "DashScope timed out reading the request; trying again.",
            retryable=True,
            http_status=status,
        )
    if status >= 500 or code.startswith("InternalError"):
        return UpstreamError(
            "upstream_unavailable" if status == 503 else "upstream_error",
            _join(f"DashScope had a server error (HTTP {status}).", message),
            retryable=True,
            http_status=status,
        )
    if status == 404:
        return UpstreamError(
            "upstream_not_found",
            _join("DashScope does not know this endpoint or model; check the settings.", message),
            operator=True,
            http_status=status,
        )
    if code == "InvalidURL" or "download" in message.lower():
        return UpstreamError(
            "image_processing_error",
            _join("DashScope could not read one of the input images.", message),
            http_status=status,
        )
    detail = f"{code}: {message}" if code and message else code or message
    return UpstreamError(
        "invalid_parameters",
        _join("DashScope refused the request's parameters.", detail),
        http_status=status,
    )

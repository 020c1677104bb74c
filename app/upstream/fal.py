"""fal.ai's queue API for Qwen Image Edit (queue.fal.run): submit, status, result.

The only module that speaks fal's HTTP. Notes: shared/reference/upstream-apis.md §3a.

Endpoints: the studio's ``qwen-image-edit`` goes to ``fal-ai/qwen-image-edit`` (one
``image_url``), ``qwen-image-edit-plus`` to ``fal-ai/qwen-image-edit-plus`` (an ``image_urls``
list, the multi-image model the notes name). Each input is sent as its signed public link when the
studio has one, otherwise inline as a base64 data URI (fal accepts both for file inputs), so fal
needs no upload step.

Options arrive under EvoLink's names and are mapped to fal's: ``n`` → ``num_images`` (fal allows
1-4), ``negative_prompt`` as is, ``size`` "WxH" → ``image_size`` {width, height}, ``seed`` as is.
``prompt_extend`` has no fal counterpart and is dropped (it only asks for prompt rewriting);
``watermark: false`` is fal's behaviour anyway. The safety checker is always on and the output is
PNG.

Jobs fal cannot run as asked are refused before anything is sent, with a retryable
``UpstreamError`` of code ``unsupported_input``: more than one input for ``qwen-image-edit`` (fal's
endpoint takes a single ``image_url``), ``n`` above 4, ``watermark: true`` (fal cannot add one).
Retryable rather than final on purpose: a final error would end the job, while this one lets the
worker move the job on to the next provider; nothing was sent, so nothing can be billed.

The task id saved by the worker is ``fal-ai/<app>/requests/<request_id>``: the path below the base
URL, so ``poll()`` can build the status and result URLs (the same ones fal returns as
``status_url`` and ``response_url`` for these two apps, which have no sub-path) from the id alone.

Errors in plain words, classified like evolink.py: 401 → operator (bad key); 403 → operator (no
credit when fal says "Exhausted balance", otherwise a locked or forbidden account); 422
content_policy_violation, or every output flagged in ``has_nsfw_concepts`` → final content policy;
other 422 → final invalid parameters / unreadable image; 429 → retryable with Retry-After; 5xx and
timeouts → retryable. fal does not bill server errors (its reliability page: "Failed requests that
return 5xx status codes are not billed"), so a 5xx answer to a submit is not ambiguous; a submit
whose answer was lost (timeout after sending, broken or malformed answer) is. A 5xx while reading
the result counts as the request's failure only if the status said it failed; otherwise it is a
read fault and the result is read again, so a finished (billed) request is never sent twice.
Images the safety checker flagged (fal sends black ones) are dropped. A callback URL, when the
worker gives one, goes as fal's ``fal_webhook`` query parameter.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx

from app.upstream.base import (
    HttpProvider,
    InputImage,
    SubmitRequest,
    Submitted,
    UpstreamError,
    UpstreamStatus,
    as_dict,
    as_list,
    call,
    default_timeout,
    is_web_url,
    json_body,
    retry_after_seconds,
)
from app.upstream.base import join_detail as _join

ENDPOINTS: dict[str, str] = {
    "qwen-image-edit": "fal-ai/qwen-image-edit",
    "qwen-image-edit-plus": "fal-ai/qwen-image-edit-plus",
}
MAX_IMAGES = 4  # fal's num_images range is 1-4
_TASK_ID = re.compile(r"^fal-ai/[a-z0-9][a-z0-9._-]*/requests/[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_SIZE = re.compile(r"^([0-9]+)x([0-9]+)$")
_KNOWN_OPTIONS = {"n", "negative_prompt", "size", "seed", "prompt_extend", "watermark"}

_CONTENT_POLICY = (
    "The provider's safety filter blocked this request. Try a different prompt or image."
)
_NSFW_OUTPUT = (
    "The provider's safety checker flagged the edited image and withheld it. "
    "Try a different prompt or image."
)


class FalProvider(HttpProvider):
    """Talks to https://queue.fal.run (or the simulator, which speaks the same protocol)."""

    # fal's separate inpaint endpoint (fal-ai/qwen-image-edit/inpaint) is not wired here, so the
    # worker composites masked jobs itself (HttpProvider.supports_mask is False).

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        price: float,
        name: str = "fal",
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> None:
        super().__init__(
            name=name,
            price=price,
            base_url=base_url,
            auth={"Authorization": f"Key {api_key}"},
            timeout=timeout or default_timeout(),
            transport=transport,
        )

    async def submit(self, request: SubmitRequest) -> Submitted:
        endpoint = ENDPOINTS.get(request.model)
        if endpoint is None:
            raise _unsupported(f"fal.ai does not offer the model {request.model!r} here.")
        body = _input(request, multi=endpoint.endswith("-plus"))
        params = {"fal_webhook": request.callback_url} if request.callback_url else None
        response = await call(
            self._client,
            "POST",
            f"{self._base}/{endpoint}",
            creating=True,
            json=body,
            params=params,
        )
        data = _json_or_error(response, creating=True)
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
            raise UpstreamError(
                "bad_upstream_answer",
                "fal.ai accepted the job but sent no usable request id.",
                retryable=True,
                ambiguous=True,
            )
        return Submitted(f"{endpoint}/requests/{request_id}", _queue_state(data))

    async def poll(self, upstream_task_id: str) -> UpstreamStatus:
        if not _TASK_ID.fullmatch(upstream_task_id):
            raise UpstreamError(
                "task_not_found", f"{upstream_task_id!r} is not a fal.ai request id."
            )
        response = await call(
            self._client, "GET", f"{self._base}/{upstream_task_id}/status", creating=False
        )
        data = _json_or_error(response, creating=False)
        if data.get("status") in ("IN_QUEUE", "IN_PROGRESS"):
            return _queue_state(data)
        # COMPLETED (and any state the docs do not list): the result says how it ended.
        return await self._result(upstream_task_id, data)

    async def _result(self, upstream_task_id: str, status: dict[str, Any]) -> UpstreamStatus:
        response = await call(
            self._client, "GET", f"{self._base}/{upstream_task_id}", creating=False
        )
        if response.status_code < 300:
            return _output(_json_or_error(response, creating=False))
        data = json_body(response)
        # A 5xx counts as the request's own outcome only when the status said it failed: a fault
        # of the result read must not make a finished (billed) request look failed and resent.
        failed_request = bool(status.get("error") or status.get("error_type"))
        if response.status_code in (400, 422) or (response.status_code >= 500 and failed_request):
            # The request itself ended with this error: report it as the task's outcome.
            return UpstreamStatus("failed", error=_model_failure(response, data))
        raise _http_error(response, data, creating=False)  # our call failed, not the request


def _input(request: SubmitRequest, *, multi: bool) -> dict[str, Any]:
    """fal's input for this job, or ``unsupported_input`` if fal cannot run it as asked."""
    images = request.images
    if not images:
        raise UpstreamError("invalid_parameters", "The job has no input image.")
    body: dict[str, Any] = {"prompt": request.prompt}
    if multi:
        body["image_urls"] = [_image_ref(image) for image in images]
    elif len(images) == 1:
        body["image_url"] = _image_ref(images[0])
    else:
        raise _unsupported(
            f"fal.ai's qwen-image-edit edits one image at a time; this job has {len(images)}. "
            "Another provider, or the qwen-image-edit-plus model, can take several."
        )
    options = dict(request.options)
    unknown = sorted(set(options) - _KNOWN_OPTIONS)
    if unknown:
        raise _unsupported(f"fal.ai has no equivalent for the option(s) {', '.join(unknown)}.")
    count = options.get("n", 1)
    if not isinstance(count, int) or not 1 <= count <= MAX_IMAGES:
        raise _unsupported(f"fal.ai makes at most {MAX_IMAGES} images per job; {count} were asked.")
    if count != 1:
        body["num_images"] = count
    if options.get("negative_prompt"):
        body["negative_prompt"] = options["negative_prompt"]
    if options.get("size"):
        match = _SIZE.fullmatch(str(options["size"]))
        if match is None:
            raise UpstreamError("invalid_parameters", f"size {options['size']!r} is not WxH.")
        body["image_size"] = {"width": int(match.group(1)), "height": int(match.group(2))}
    if options.get("seed") is not None:
        body["seed"] = options["seed"]
    if options.get("watermark"):
        raise _unsupported("fal.ai cannot add a watermark to the result.")
    body["enable_safety_checker"] = True
    body["output_format"] = "png"
    return body


def _image_ref(image: InputImage) -> str:
    """The signed public link when the studio has one, else the bytes inline as a data URI."""
    if image.public_url:
        return image.public_url
    return f"data:{image.content_type};base64,{base64.b64encode(image.data).decode('ascii')}"


def _unsupported(message: str) -> UpstreamError:
    return UpstreamError("unsupported_input", message, retryable=True)


def _queue_state(data: dict[str, Any]) -> UpstreamStatus:
    if data.get("status") == "IN_PROGRESS":
        return UpstreamStatus("running")
    return UpstreamStatus("pending")


def _output(data: dict[str, Any]) -> UpstreamStatus:
    """A completed request's model output: the image URLs, minus any the checker flagged."""
    images = as_list(data.get("images"))
    flags = as_list(data.get("has_nsfw_concepts"))
    urls: list[str] = []
    flagged = 0
    for index, image in enumerate(images):
        url = as_dict(image).get("url")
        if not is_web_url(url):
            continue
        if index < len(flags) and flags[index] is True:
            flagged += 1  # fal sends a black image in its place
            continue
        urls.append(url)
    if urls:
        return UpstreamStatus("succeeded", 100, result_urls=urls)
    if flagged:
        return UpstreamStatus(
            "failed", error=UpstreamError("content_policy_violation", _NSFW_OUTPUT)
        )
    return UpstreamStatus(
        "failed",
        error=UpstreamError(
            "generation_failed_no_content",
            "fal.ai finished without a result image.",
            retryable=True,
        ),
    )


def _model_failure(response: httpx.Response, data: Any) -> UpstreamError:
    """A request that ended in an error: the model refused the input, or the runner failed."""
    status = response.status_code
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, list):
        return _validation_error(detail)
    text = detail if isinstance(detail, str) else ""
    kind = response.headers.get("x-fal-error-type") or (
        data.get("error_type") if isinstance(data, dict) else None
    )
    if status < 500:
        return UpstreamError(
            "invalid_parameters",
            _join("fal.ai refused the request.", text),
            http_status=status,
        )
    if kind in ("request_timeout", "startup_timeout") or status == 504:
        code, plain = "generation_timeout", "fal.ai timed out while generating."
    elif kind == "runner_scheduling_failure" or status == 503:
        code, plain = "service_unavailable", "fal.ai had no free runner for this model."
    else:
        code, plain = "service_error", "fal.ai's runner failed."
    return UpstreamError(code, _join(plain, text), retryable=True, http_status=status)


def _validation_error(detail: list[Any]) -> UpstreamError:
    """fal's 422 ``detail`` list: content policy, an unreadable image, or a bad parameter."""
    entries = [entry for entry in detail if isinstance(entry, dict)]
    kinds = {str(entry.get("type") or "") for entry in entries}
    first = entries[0] if entries else {}
    message = first.get("msg") if isinstance(first.get("msg"), str) else ""
    # Pydantic's loc is a list of names and indexes; anything else says nothing useful.
    loc = [str(part)[:64] for part in as_list(first.get("loc")) if part != "body"]
    where = ".".join(loc)[:200]
    if "content_policy_violation" in kinds:
        return UpstreamError("content_policy_violation", _CONTENT_POLICY, http_status=422)
    if any("image" in kind for kind in kinds) or "image" in where:
        return UpstreamError(
            "image_processing_error",
            _join("fal.ai could not read one of the input images.", message),
            http_status=422,
        )
    detail_text = f"{where}: {message}" if where and message else message
    return UpstreamError(
        "invalid_parameters",
        _join("fal.ai refused the request's parameters.", detail_text),
        http_status=422,
    )


def _json_or_error(response: httpx.Response, *, creating: bool) -> dict[str, Any]:
    """The JSON body of a 2xx answer, or the matching UpstreamError."""
    data = json_body(response)
    if response.status_code >= 300:
        raise _http_error(response, data, creating=creating)
    if not isinstance(data, dict):
        raise UpstreamError(
            "bad_upstream_answer",
            "fal.ai sent an answer that is not valid JSON.",
            retryable=True,
            ambiguous=creating,
        )
    return data


def _http_error(response: httpx.Response, data: Any, *, creating: bool) -> UpstreamError:
    """An error answer of the queue API, classified for the worker."""
    status = response.status_code
    detail = data.get("detail") if isinstance(data, dict) else None
    text = detail if isinstance(detail, str) else ""
    if status == 401:
        return UpstreamError(
            "upstream_unauthorized",
            "fal.ai refused the studio's API key. An administrator must fix QES_FAL_API_KEY.",
            operator=True,
            http_status=status,
        )
    if status in (402, 403):
        if status == 402 or "balance" in text.lower():
            return UpstreamError(
                "upstream_no_credit",
                "The studio's fal.ai account has no credit left.",
                operator=True,
                http_status=status,
            )
        return UpstreamError(
            "upstream_forbidden",
            _join("fal.ai refused the studio's account.", text),
            operator=True,
            http_status=status,
        )
    if status == 404:
        if creating:
            return UpstreamError(
                "upstream_not_found",
                "fal.ai does not know this endpoint; check QES_FAL_BASE_URL.",
                operator=True,
                http_status=status,
            )
        return UpstreamError(
            "task_not_found",
            "fal.ai no longer knows this request.",
            retryable=True,
            http_status=status,
        )
    if status == 429:
        return UpstreamError(
            "upstream_rate_limited",
            "fal.ai is rate limiting the studio; trying again shortly.",
            retryable=True,
            retry_after=retry_after_seconds(response),
            http_status=status,
        )
    if status == 408:  # fal gave up reading our request: it did not take the job
        return UpstreamError(
            "upstream_timeout",
            "fal.ai timed out reading the request; trying again.",
            retryable=True,
            http_status=status,
        )
    if status >= 500:
        return UpstreamError(
            "upstream_unavailable" if status == 503 else "upstream_error",
            _join(f"fal.ai had a server error (HTTP {status}).", text),
            retryable=True,
            http_status=status,
        )
    if status == 422 and isinstance(detail, list):
        return _validation_error(detail)
    return UpstreamError(
        "upstream_rejected",
        _join(f"fal.ai refused the request (HTTP {status}).", text),
        http_status=status,
    )

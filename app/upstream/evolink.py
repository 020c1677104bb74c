"""EvoLink's asynchronous task API (docs.evolink.ai): create, query, files upload.

The only module that speaks EvoLink's HTTP. Inputs go as signed links when the studio has a public
URL; otherwise each is uploaded through EvoLink's files API (jpeg/png/webp only there; ingest has
already re-encoded bmp and tiff to png) and its ``file_url`` is passed instead.
"""

from __future__ import annotations

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
    clean_int,
    default_timeout,
    is_web_url,
    json_body,
    retry_after_seconds,
)
from app.upstream.base import join_detail as _join

# Task-level error codes (error-codes page): the user's input is at fault, retrying won't help.
FINAL_TASK_ERRORS: dict[str, str] = {
    "content_policy_violation": "The provider's safety filter blocked this request. "
    "Try a different prompt or image.",
    "invalid_parameters": "The provider refused the request's parameters.",
    "image_processing_error": "The provider could not read one of the input images.",
    "image_dimension_mismatch": "The input images' sizes do not fit what the model accepts.",
    "request_cancelled": "The task was cancelled at the provider.",
}
# Server-side task errors: worth another try, here or at the next provider.
RETRYABLE_TASK_ERRORS: dict[str, str] = {
    "generation_failed_no_content": "The model produced no image.",
    "service_error": "The provider had an internal error.",
    "generation_timeout": "The provider timed out while generating.",
    "resource_exhausted": "The provider is out of capacity right now.",
    "quota_exceeded": "The provider's quota was exceeded.",
    "service_unavailable": "The provider is unavailable right now.",
    "resource_not_found": "The provider lost a resource of this task.",
    "unknown_error": "The provider failed for an unknown reason.",
    "model_unavailable": "The model is unavailable at the provider right now.",
    "upstream_error": "The provider's own upstream failed.",
    "rate_limited": "The provider is rate limiting requests.",
}
_UPLOADABLE = {"image/jpeg", "image/png", "image/webp"}
# EvoLink's ids look like "task-unified-1757156493-imcg5zqt" (see base.TOKEN_ID).
_TASK_ID = TOKEN_ID
MAX_ESTIMATE = 86_400  # seconds; a larger "estimated_time" is noise (and overflows SQLite)


class EvoLinkProvider(HttpProvider):
    """Talks to https://api.evolink.ai (or the simulator, which speaks the same protocol)."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        files_url: str,
        price: float,
        name: str = "evolink",
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> None:
        super().__init__(
            name=name,
            price=price,
            base_url=base_url,
            auth={"Authorization": f"Bearer {api_key}"},
            timeout=timeout or default_timeout(),
            transport=transport,
        )
        self._files = files_url.rstrip("/")

    async def submit(self, request: SubmitRequest) -> Submitted:
        urls = [await self._input_url(img, i) for i, img in enumerate(request.images)]
        body: dict[str, Any] = {
            "model": request.model,
            "prompt": request.prompt,
            "image_urls": urls,
        }
        body.update(request.options)
        if request.callback_url:
            body["callback_url"] = request.callback_url
        response = await call(
            self._client, "POST", f"{self._base}/v1/images/generations", creating=True, json=body
        )
        data = _json_or_error(response, creating=True)
        task_id = data.get("id")
        if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
            raise UpstreamError(
                "bad_upstream_answer",
                "The provider accepted the job but sent no usable task id.",
                retryable=True,
                ambiguous=True,
            )
        return Submitted(task_id, _status(data))

    async def poll(self, upstream_task_id: str) -> UpstreamStatus:
        if not _TASK_ID.fullmatch(upstream_task_id):
            raise UpstreamError(
                "task_not_found", f"{upstream_task_id!r} is not an EvoLink task id."
            )
        response = await call(
            self._client, "GET", f"{self._base}/v1/tasks/{upstream_task_id}", creating=False
        )
        return _status(_json_or_error(response, creating=False))

    async def _input_url(self, image: InputImage, index: int) -> str:
        if image.public_url:
            return image.public_url
        if image.content_type not in _UPLOADABLE:
            raise UpstreamError(
                "unsupported_upload", f"Input {index + 1} is {image.content_type}; cannot upload."
            )
        files = {"file": (f"input-{index + 1}.{image.ext}", image.data, image.content_type)}
        response = await call(
            self._client,
            "POST",
            f"{self._files}/api/v1/files/upload/stream",
            creating=False,
            files=files,
            data={"upload_path": "qwen-edit-studio"},
        )
        data = _json_or_error(response, creating=False)
        url = as_dict(data.get("data")).get("file_url") if data.get("success") is True else None
        if not is_web_url(url):
            # The files API's own codes (upstream-apis.md 1.6): 500 and 50001 are storage faults
            # worth another try; 401, 403 and 40003 (file quota) are the operator's to fix.
            code = clean_int(data.get("code"), 0, 10**6) or 0
            raise UpstreamError(
                "upload_failed",
                _join(f"Uploading input {index + 1} to the provider failed.", data.get("msg")),
                retryable=500 <= code < 600 or 50000 <= code < 60000,
                operator=code in (401, 403, 40003),
            )
        return url


def _status(data: dict[str, Any]) -> UpstreamStatus:
    status = data.get("status")
    progress = clean_int(data.get("progress"), 0, 100) or 0
    estimated = clean_int(as_dict(data.get("task_info")).get("estimated_time"), 0, MAX_ESTIMATE)
    if status in ("pending", None):
        return UpstreamStatus("pending", progress, estimated_time=estimated)
    if status == "processing":
        return UpstreamStatus("running", progress, estimated_time=estimated)
    if status == "completed":
        results = [u for u in as_list(data.get("results")) if is_web_url(u)]
        if not results:
            return UpstreamStatus(
                "failed",
                error=UpstreamError(
                    "generation_failed_no_content",
                    "The provider finished without a result image.",
                    retryable=True,
                ),
            )
        return UpstreamStatus("succeeded", 100, result_urls=results)
    # "failed", and statuses the docs do not list ("cancelled") end the task too.
    err = as_dict(data.get("error"))
    code = clean_code(
        err.get("code"), "request_cancelled" if status == "cancelled" else "unknown_error"
    )
    return UpstreamStatus("failed", progress, error=task_error(code, err.get("message")))


def task_error(code: str, detail: Any) -> UpstreamError:
    if code in FINAL_TASK_ERRORS:
        return UpstreamError(code, _join(FINAL_TASK_ERRORS[code], detail))
    base = RETRYABLE_TASK_ERRORS.get(code, "The provider failed.")
    return UpstreamError(code, _join(base, detail), retryable=True)


def _json_or_error(response: httpx.Response, *, creating: bool) -> dict[str, Any]:
    """The JSON body of a 2xx answer, or the matching UpstreamError."""
    data = json_body(response)
    status = response.status_code
    if status < 300:
        if not isinstance(data, dict):
            raise UpstreamError(
                "bad_upstream_answer",
                "The provider sent an answer that is not valid JSON.",
                retryable=True,
                ambiguous=creating,
            )
        return data
    err = as_dict(as_dict(data).get("error"))
    detail = err.get("message")
    code = clean_code(err.get("code"), "upstream_rejected")
    if status == 401:
        raise UpstreamError(
            "upstream_unauthorized",
            "The provider refused the studio's API key. An administrator must fix the key.",
            operator=True,
            http_status=status,
        )
    if status == 402:
        raise UpstreamError(
            "upstream_no_credit",
            "The studio's account at the provider has no credit left.",
            operator=True,
            http_status=status,
        )
    if status == 403:
        raise UpstreamError(
            "upstream_forbidden",
            _join("The studio's API key may not use this model at the provider.", detail),
            operator=True,
            http_status=status,
        )
    if status == 404:
        raise UpstreamError(
            "task_not_found",
            "The provider no longer knows this task.",
            retryable=True,
            http_status=status,
        )
    if status == 429:
        raise UpstreamError(
            "upstream_rate_limited",
            "The provider is rate limiting the studio; trying again shortly.",
            retryable=True,
            retry_after=retry_after_seconds(response),
            http_status=status,
        )
    if status == 408:  # the provider gave up reading our request: it did not take the job
        raise UpstreamError(
            "upstream_timeout",
            "The provider timed out reading the request; trying again.",
            retryable=True,
            http_status=status,
        )
    if status >= 500:
        raise UpstreamError(
            "upstream_unavailable" if status == 503 else "upstream_error",
            _join(f"The provider had a server error (HTTP {status}).", detail),
            retryable=True,
            # An error answer is an answer: the provider did not take the job.
            http_status=status,
        )
    raise UpstreamError(
        code,
        _join(f"The provider refused the request (HTTP {status}).", detail),
        http_status=status,
    )

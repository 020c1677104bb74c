"""EvoLink's asynchronous task API (docs.evolink.ai): create, query, files upload.

The only module that speaks EvoLink's HTTP. Inputs go as signed links when the studio has a public
URL; otherwise each is uploaded through EvoLink's files API (jpeg/png/webp only there; ingest has
already re-encoded bmp and tiff to png) and its ``file_url`` is passed instead.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from app.upstream.base import (
    InputImage,
    SubmitRequest,
    Submitted,
    UpstreamError,
    UpstreamStatus,
    default_timeout,
    download_capped,
    retry_after_seconds,
    transport_error,
)

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


class EvoLinkProvider:
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
        self.name = name
        self.price = price
        self._base = base_url.rstrip("/")
        self._files = files_url.rstrip("/")
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout or default_timeout(),
            transport=transport,
            follow_redirects=False,
        )
        # Result downloads carry no credentials: the links are signed by the provider.
        self._downloads = httpx.AsyncClient(
            timeout=timeout or default_timeout(), transport=transport, follow_redirects=True
        )

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._downloads.aclose()

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
        try:
            response = await self._client.post(f"{self._base}/v1/images/generations", json=body)
        except httpx.HTTPError as exc:
            raise transport_error(exc, sending_create=True) from exc
        data = _json_or_error(response, creating=True)
        task_id = data.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise UpstreamError(
                "bad_upstream_answer",
                "The provider accepted the job but sent no task id.",
                retryable=True,
                ambiguous=True,
            )
        return Submitted(task_id, _status(data))

    async def poll(self, upstream_task_id: str) -> UpstreamStatus:
        try:
            response = await self._client.get(f"{self._base}/v1/tasks/{upstream_task_id}")
        except httpx.HTTPError as exc:
            raise transport_error(exc, sending_create=False) from exc
        return _status(_json_or_error(response, creating=False))

    async def download(self, url: str, max_bytes: int) -> bytes:
        return await download_capped(self._downloads, url, max_bytes)

    async def _input_url(self, image: InputImage, index: int) -> str:
        if image.public_url:
            return image.public_url
        if image.content_type not in _UPLOADABLE:
            raise UpstreamError(
                "unsupported_upload", f"Input {index + 1} is {image.content_type}; cannot upload."
            )
        files = {"file": (f"input-{index + 1}.{image.ext}", image.data, image.content_type)}
        try:
            response = await self._client.post(
                f"{self._files}/api/v1/files/upload/stream",
                files=files,
                data={"upload_path": "qwen-edit-studio"},
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, sending_create=False) from exc
        data = _json_or_error(response, creating=False)
        url = (data.get("data") or {}).get("file_url") if data.get("success") else None
        if not isinstance(url, str):
            raise UpstreamError(
                "upload_failed",
                f"Uploading input {index + 1} to the provider failed: {data.get('msg', 'no URL')}.",
                retryable=response.status_code >= 500,
            )
        return url


def _status(data: dict[str, Any]) -> UpstreamStatus:
    status = data.get("status")
    progress = _int(data.get("progress"), 0)
    info = data.get("task_info") if isinstance(data.get("task_info"), dict) else {}
    estimated = _int(info.get("estimated_time"), None) if info else None
    if status in ("pending", None):
        return UpstreamStatus("pending", progress, estimated_time=estimated)
    if status == "processing":
        return UpstreamStatus("running", progress, estimated_time=estimated)
    if status == "completed":
        results = [u for u in data.get("results") or [] if isinstance(u, str)]
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
    err = data.get("error") if isinstance(data.get("error"), dict) else {}
    code = str(
        err.get("code") or ("request_cancelled" if status == "cancelled" else "unknown_error")
    )
    return UpstreamStatus("failed", progress, error=task_error(code, str(err.get("message") or "")))


def task_error(code: str, detail: str) -> UpstreamError:
    if code in FINAL_TASK_ERRORS:
        return UpstreamError(code, _join(FINAL_TASK_ERRORS[code], detail))
    base = RETRYABLE_TASK_ERRORS.get(code, "The provider failed.")
    return UpstreamError(code, _join(base, detail), retryable=True)


def _join(plain: str, detail: str) -> str:
    detail = detail.strip().splitlines()[0][:300] if detail.strip() else ""
    return f"{plain} ({detail})" if detail and detail not in plain else plain


def _json_or_error(response: httpx.Response, *, creating: bool) -> dict[str, Any]:
    """The JSON body of a 2xx answer, or the matching UpstreamError."""
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
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
    err = (data or {}).get("error") if isinstance(data, dict) else None
    err = err if isinstance(err, dict) else {}
    detail = str(err.get("message") or "")
    code = str(err.get("code") or f"http_{status}")
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
    if status >= 500:
        raise UpstreamError(
            "upstream_unavailable" if status == 503 else "upstream_error",
            _join(f"The provider had a server error (HTTP {status}).", detail),
            retryable=True,
            # An error answer is an answer: the provider did not take the job.
            http_status=status,
        )
    raise UpstreamError(
        code if code != f"http_{status}" else "upstream_rejected",
        _join(f"The provider refused the request (HTTP {status}).", detail),
        http_status=status,
    )


def _int(value: object, default: int | None) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default

"""The three adapters against odd, broken and hostile upstream answers, over real HTTP.

Why: any exception other than UpstreamError inside a provider call makes the worker retry the step
blindly ("step failed" in the log) until the job times out, or, during a submit, end it with a
misleading "the studio stopped" message. So every answer an upstream can send (wrong JSON types,
null fields, numbers too large for Python or SQLite, ids that are not ids, endless or oversized
bodies) must come back as a classified UpstreamError or a sane UpstreamStatus. The simulator
speaks the protocols correctly on purpose, so a tiny scripted server on 127.0.0.1 plays the
misbehaving upstream here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient

from app.upstream.base import (
    InputImage,
    SubmitRequest,
    UpstreamError,
    UpstreamStatus,
    default_timeout,
)
from app.upstream.dashscope import PATH as DASHSCOPE_PATH
from app.upstream.dashscope import DashScopeProvider
from app.upstream.evolink import EvoLinkProvider
from app.upstream.fal import FalProvider
from tests.conftest import image_bytes, post_job, studio_settings, wait_for

T = TypeVar("T")
Answer = tuple[int, bytes] | Callable[[BaseHTTPRequestHandler], None]
FAL_TASK = "fal-ai/qwen-image-edit/requests/r1"
HUGE_INT = b"1" * 5000  # valid JSON, but Python refuses to build an int of 5,000 digits
DEEP = b"[" * 100_000  # nesting deep enough for a RecursionError in json.loads


class Scripted:
    """A threaded HTTP server on 127.0.0.1 that answers each path as the test says."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.hits: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                path = self.path.split("?")[0]
                owner.hits.append(path)
                answer = owner.answers.get(path, (404, b'{"error": {"code": "nope"}}'))
                if callable(answer):
                    answer(self)
                    return
                status, body = answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815 - http.server's naming

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def json(self, path: str, body: Any, status: int = 200) -> None:
        self.answers[path] = (status, json.dumps(body).encode())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def drip(handler: BaseHTTPRequestHandler) -> None:
    """An answer that never ends: one byte every 0.1 s, each well inside the read timeout."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", "100000")
    handler.end_headers()
    with contextlib.suppress(OSError):
        for _ in range(300):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.1)


def oversized(handler: BaseHTTPRequestHandler) -> None:
    """A 6 MB "answer": a string that never closes."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(6 * 1024 * 1024 + 8))
    handler.end_headers()
    with contextlib.suppress(OSError):
        handler.wfile.write(b'{"id": "')
        for _ in range(6 * 16):
            handler.wfile.write(b"x" * 65536)


@pytest.fixture
def up() -> Iterator[Scripted]:
    server = Scripted()
    try:
        yield server
    finally:
        server.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def linked() -> SubmitRequest:
    """A job whose input goes as a public link, so no upload step is involved."""
    image = InputImage(b"png", "image/png", "png", public_url="https://studio.example/in.png")
    return SubmitRequest(model="qwen-image-edit", prompt="invert it", images=[image])


def unlinked() -> SubmitRequest:
    image = InputImage(image_bytes(64, 64), "image/png", "png")
    return SubmitRequest(model="qwen-image-edit", prompt="invert it", images=[image])


@contextlib.asynccontextmanager
async def provider(kind: str, base: str, **kwargs: Any) -> AsyncIterator[Any]:
    if kind == "evolink":
        made: Any = EvoLinkProvider(api_key="k", base_url=base, files_url=base, price=0, **kwargs)
    elif kind == "fal":
        made = FalProvider(api_key="k", base_url=base, price=0, **kwargs)
    else:
        made = DashScopeProvider(api_key="k", base_url=base, price=0, **kwargs)
    try:
        yield made
    finally:
        await made.aclose()


async def submit(kind: str, base: str, request: SubmitRequest | None = None, **kw: Any) -> Any:
    async with provider(kind, base, **kw) as p:
        return await p.submit(request or linked())


async def poll(kind: str, base: str, task_id: str) -> UpstreamStatus:
    async with provider(kind, base) as p:
        result: UpstreamStatus = await p.poll(task_id)
        return result


def raised(coro: Coroutine[Any, Any, Any]) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        run(coro)
    return info.value


CREATE_PATHS = {
    "evolink": "/v1/images/generations",
    "fal": "/fal-ai/qwen-image-edit",
    "dashscope": DASHSCOPE_PATH,
}


# --- JSON the parser itself chokes on ---


@pytest.mark.parametrize("kind", ["evolink", "fal", "dashscope"])
@pytest.mark.parametrize("body", [HUGE_INT, DEEP], ids=["huge-int", "deep-nesting"])
def test_unparseable_create_answer_is_ambiguous_not_a_crash(
    up: Scripted, kind: str, body: bytes
) -> None:
    up.answers[CREATE_PATHS[kind]] = (200, body)
    err = raised(submit(kind, up.base_url))
    assert err.code == "bad_upstream_answer"
    assert err.ambiguous and err.retryable  # it may have been accepted and billed


@pytest.mark.parametrize("body", [HUGE_INT, DEEP], ids=["huge-int", "deep-nesting"])
def test_unparseable_poll_answer_keeps_the_task(up: Scripted, body: bytes) -> None:
    up.answers["/v1/tasks/task-unified-1"] = (200, body)
    err = raised(poll("evolink", up.base_url, "task-unified-1"))
    assert err.code == "bad_upstream_answer" and err.retryable and not err.ambiguous
    up.answers[f"/{FAL_TASK}/status"] = (200, body)
    err = raised(poll("fal", up.base_url, FAL_TASK))
    assert err.code == "bad_upstream_answer" and err.retryable and not err.ambiguous


def test_fal_unparseable_error_answer_is_still_classified(up: Scripted) -> None:
    up.json(f"/{FAL_TASK}/status", {"status": "COMPLETED", "error": "boom"})
    up.answers[f"/{FAL_TASK}"] = (422, HUGE_INT)
    status = run(poll("fal", up.base_url, FAL_TASK))
    assert status.state == "failed" and status.error is not None
    assert status.error.code == "invalid_parameters" and not status.error.retryable


# --- EvoLink: fields of the wrong type or size ---


def evolink_task(**fields: Any) -> dict[str, Any]:
    return {"id": "task-unified-1757156493-imcg5zqt", "object": "image.generation.task", **fields}


def test_evolink_infinite_progress_is_clamped(up: Scripted) -> None:
    # 1e999 is valid JSON and parses as float("inf"); int(inf) raises OverflowError.
    body = b'{"id": "task-unified-1", "status": "processing", "progress": 1e999}'
    up.answers["/v1/images/generations"] = (200, body)
    up.answers["/v1/tasks/task-unified-1"] = (200, body)
    submitted = run(submit("evolink", up.base_url))
    assert submitted.status.state == "running" and submitted.status.progress == 100
    assert run(poll("evolink", up.base_url, "task-unified-1")).progress == 100


def test_evolink_huge_estimate_fits_the_database(up: Scripted) -> None:
    # 10**30 does not fit SQLite's INTEGER: the worker's commit would raise OverflowError.
    up.json(
        "/v1/images/generations",
        evolink_task(status="pending", task_info={"estimated_time": 10**30}),
    )
    submitted = run(submit("evolink", up.base_url))
    assert submitted.status.estimated_time == 86_400
    up.json(
        "/v1/images/generations", evolink_task(status="pending", task_info={"estimated_time": "12"})
    )
    assert run(submit("evolink", up.base_url)).status.estimated_time == 12


@pytest.mark.parametrize("results", [5, True, {"url": "https://x/a.png"}, None])
def test_evolink_results_that_are_not_a_list(up: Scripted, results: Any) -> None:
    up.json("/v1/tasks/task-unified-1", evolink_task(status="completed", results=results))
    status = run(poll("evolink", up.base_url, "task-unified-1"))
    assert status.state == "failed" and status.error is not None
    assert status.error.code == "generation_failed_no_content" and status.error.retryable


def test_evolink_results_string_is_not_split_into_characters(up: Scripted) -> None:
    up.json(
        "/v1/tasks/task-unified-1",
        evolink_task(status="completed", results="https://media.example/a.png"),
    )
    status = run(poll("evolink", up.base_url, "task-unified-1"))
    assert status.state == "failed" and status.result_urls == []


def test_evolink_results_keep_only_web_links(up: Scripted) -> None:
    results = ["https://media.example/a.png", "file:///etc/passwd", 7, "h", "http://m.example/b"]
    up.json("/v1/tasks/task-unified-1", evolink_task(status="completed", results=results))
    status = run(poll("evolink", up.base_url, "task-unified-1"))
    assert status.result_urls == ["https://media.example/a.png", "http://m.example/b"]


@pytest.mark.parametrize(
    "task_id", ["task\u0000x", "x" * 129, "../../v1/credits", "a b", "", 17, None]
)
def test_evolink_unusable_task_id_is_ambiguous(up: Scripted, task_id: Any) -> None:
    up.json("/v1/images/generations", {"id": task_id, "status": "pending"})
    err = raised(submit("evolink", up.base_url))
    assert err.code == "bad_upstream_answer" and err.ambiguous


def test_evolink_poll_refuses_an_id_that_is_not_one(up: Scripted) -> None:
    # httpx raises InvalidURL (not an HTTPError) for a NUL in the URL.
    err = raised(poll("evolink", up.base_url, "task\u0000x"))
    assert err.code == "task_not_found" and not err.retryable
    assert up.hits == []


@pytest.mark.parametrize(
    "error",
    [
        {"code": "x" * 5000, "message": "m"},
        {"code": {"nested": 1}, "message": ["list"]},
        {"code": 500, "message": None},
        "just a string",
        None,
    ],
)
def test_evolink_task_error_of_odd_shape(up: Scripted, error: Any) -> None:
    up.json("/v1/tasks/task-unified-1", evolink_task(status="failed", error=error))
    status = run(poll("evolink", up.base_url, "task-unified-1"))
    assert status.state == "failed" and status.error is not None
    assert len(status.error.code) <= 64  # the error_code column is String(64)
    assert status.error.retryable and len(status.error.message) < 400


def test_evolink_http_error_with_odd_code(up: Scripted) -> None:
    up.json("/v1/images/generations", {"error": {"code": "y" * 500, "message": "bad"}}, 400)
    err = raised(submit("evolink", up.base_url))
    assert err.code == "upstream_rejected" and not err.retryable and not err.ambiguous
    up.json("/v1/images/generations", {"error": {"code": 400, "message": "bad"}}, 400)
    assert raised(submit("evolink", up.base_url)).code == "400"


@pytest.mark.parametrize("kind", ["evolink", "fal", "dashscope"])
def test_request_timeout_answer_is_retryable(up: Scripted, kind: str) -> None:
    up.json(CREATE_PATHS[kind], {"error": "timeout"}, 408)
    err = raised(submit(kind, up.base_url))
    assert err.retryable and not err.ambiguous and not err.operator


# --- EvoLink file upload ---

UPLOAD = "/api/v1/files/upload/stream"


@pytest.mark.parametrize(
    "answer",
    [
        {"success": True, "data": "https://files.example/a.png"},
        {"success": True, "data": ["https://files.example/a.png"]},
        {"success": True, "data": {"file_url": "javascript:alert(1)"}},
        {"success": "yes", "data": {"file_url": "https://files.example/a.png"}},
        {"success": False, "code": 40002, "msg": "type not allowed " * 1000},
    ],
)
def test_evolink_upload_answers_of_odd_shape_are_final(up: Scripted, answer: Any) -> None:
    up.json(UPLOAD, answer)
    err = raised(submit("evolink", up.base_url, unlinked()))
    assert err.code == "upload_failed" and not err.retryable and not err.ambiguous
    assert len(err.message) < 400
    assert "/v1/images/generations" not in up.hits  # nothing was created


def test_evolink_upload_storage_fault_and_quota(up: Scripted) -> None:
    up.json(UPLOAD, {"success": False, "code": 50001, "msg": "storage error"})
    err = raised(submit("evolink", up.base_url, unlinked()))
    assert err.code == "upload_failed" and err.retryable and not err.operator
    up.json(UPLOAD, {"success": False, "code": 40003, "msg": "quota exceeded"})
    err = raised(submit("evolink", up.base_url, unlinked()))
    assert err.operator and not err.retryable


# --- fal ---


@pytest.mark.parametrize("loc", [5, None, "body.image_url", {"a": 1}, [["deep"], 3]])
def test_fal_validation_detail_of_odd_shape(up: Scripted, loc: Any) -> None:
    detail = [{"loc": loc, "msg": 12, "type": "value_error"}]
    up.json("/fal-ai/qwen-image-edit", {"detail": detail}, 422)
    err = raised(submit("fal", up.base_url))
    assert err.http_status == 422 and not err.retryable
    up.json(f"/{FAL_TASK}/status", {"status": "COMPLETED"})
    up.json(f"/{FAL_TASK}", {"detail": detail}, 422)
    status = run(poll("fal", up.base_url, FAL_TASK))
    assert status.state == "failed" and status.error is not None and not status.error.retryable


@pytest.mark.parametrize(
    "output",
    [
        {"images": "https://fal.media/a.png"},
        {"images": [{"url": ["https://fal.media/a.png"]}, "https://fal.media/b.png", None]},
        {"images": [{"url": "data:image/png;base64,AAAA"}]},
        [],
        {"images": None, "has_nsfw_concepts": "yes"},
    ],
)
def test_fal_output_of_odd_shape(up: Scripted, output: Any) -> None:
    up.json(f"/{FAL_TASK}/status", {"status": "COMPLETED"})
    up.json(f"/{FAL_TASK}", output)
    try:
        status = run(poll("fal", up.base_url, FAL_TASK))
    except UpstreamError as err:  # a list instead of an object: a malformed answer
        assert err.code == "bad_upstream_answer" and err.retryable
        return
    assert status.state == "failed" and status.error is not None and status.error.retryable


# --- DashScope ---


@pytest.mark.parametrize("content", [5, 2.5, True, "https://oss.example/a.png", {"image": "x"}])
def test_dashscope_content_of_odd_shape(up: Scripted, content: Any) -> None:
    up.json(DASHSCOPE_PATH, {"output": {"choices": [{"message": {"content": content}}]}})
    submitted = run(submit("dashscope", up.base_url))
    assert submitted.status.state == "failed" and submitted.status.error is not None
    assert submitted.status.error.code == "generation_failed_no_content"


def test_dashscope_long_fields_are_cut_down(up: Scripted) -> None:
    choices = [{"finish_reason": "r" * 100_000, "message": {"content": []}}] * 20
    up.json(DASHSCOPE_PATH, {"request_id": "q" * 100_000, "output": {"choices": choices}})
    submitted = run(submit("dashscope", up.base_url))
    assert len(submitted.upstream_task_id) <= 128  # the column is String(128)
    assert submitted.status.error is not None and len(submitted.status.error.message) < 400


def test_dashscope_error_fields_of_odd_type(up: Scripted) -> None:
    up.json(DASHSCOPE_PATH, {"code": ["Arrearage"], "message": {"m": 1}}, 400)
    err = raised(submit("dashscope", up.base_url))
    assert err.code == "invalid_parameters" and not err.retryable


# --- answers that never end or never stop growing ---


@pytest.mark.parametrize("kind", ["evolink", "fal", "dashscope"])
def test_dripping_create_answer_hits_the_total_deadline(up: Scripted, kind: str) -> None:
    up.answers[CREATE_PATHS[kind]] = drip
    err = raised(submit(kind, up.base_url, timeout=default_timeout(connect=0.5, read=0.5)))
    assert err.code == "upstream_unreachable" and err.retryable and err.ambiguous
    assert "in time" in err.message  # the total deadline, not the server finally giving up


@pytest.mark.parametrize("kind", ["evolink", "fal", "dashscope"])
def test_oversized_create_answer_is_refused(up: Scripted, kind: str) -> None:
    up.answers[CREATE_PATHS[kind]] = oversized
    err = raised(submit(kind, up.base_url))
    assert err.code == "bad_upstream_answer" and err.ambiguous
    assert "too large" in err.message  # refused while streaming, not read whole and parsed


def test_dripping_download_hits_the_total_deadline(up: Scripted) -> None:
    up.answers["/result.png"] = drip

    async def fetch() -> bytes:
        async with provider(
            "evolink", up.base_url, timeout=default_timeout(connect=0.2, read=0.2)
        ) as p:
            data: bytes = await p.download(f"{up.base_url}/result.png", 10**6)
            return data

    err = raised(fetch())
    assert err.code == "download_failed" and err.retryable and "too long" in err.message


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "http://[::1", "http://\u0000/x", "ftp://x/a.png", "h"]
)
@pytest.mark.parametrize("kind", ["evolink", "fal", "dashscope"])
def test_result_link_that_can_never_work_is_final(up: Scripted, kind: str, url: str) -> None:
    async def fetch() -> bytes:
        async with provider(kind, up.base_url) as p:
            data: bytes = await p.download(url, 10**6)
            return data

    err = raised(fetch())
    assert err.code == "bad_result" and not err.retryable


# --- through the worker ---


def test_worker_finishes_a_job_whose_upstream_sends_a_huge_estimate(
    up: Scripted, tmp_path: Path, make_client: Callable[..., TestClient]
) -> None:
    """Before the clamp, saving estimated_time=10**30 raised OverflowError in the worker's
    commit; the job then ended submit_unknown although the upstream had answered properly."""
    result = image_bytes(color=(1, 2, 3))
    up.json(UPLOAD, {"success": True, "data": {"file_url": f"{up.base_url}/in.png"}})
    up.json(
        "/v1/images/generations",
        evolink_task(status="pending", task_info={"estimated_time": 10**30}),
    )
    up.json(
        "/v1/tasks/task-unified-1757156493-imcg5zqt",
        evolink_task(status="completed", progress=1e999, results=[f"{up.base_url}/out.png"]),
    )
    up.answers["/out.png"] = (200, result)
    settings = studio_settings(
        tmp_path,
        None,
        evolink_api_key="k",
        evolink_base_url=up.base_url,
        evolink_files_url=up.base_url,
    )
    client = make_client(settings)
    job = post_job(client).json()
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done

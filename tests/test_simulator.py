"""The EvoLink simulator, exercised over real HTTP as the studio's client will use it.

Why over the wire and not through an ASGI transport: the simulator's worth is that uploads, signed
input links, dropped connections, hangs and callbacks behave like a remote service, and only a
socket shows that.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageOps

from app.upstream.simulator import SimulatorConfig, SimulatorServer

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-key"
TASK_ID = re.compile(r"^task-unified-\d{10}-[a-z0-9]{8}$")
# Every counter the simulator keeps, across the three protocols it speaks.
ZERO_STATS = {
    "creates": 0,
    "queries": 0,
    "uploads": 0,
    "fetches": 0,
    "tasks": 0,
    "callbacks": 0,
    "fal_submits": 0,
    "fal_requests": 0,
    "fal_status": 0,
    "fal_results": 0,
    "fal_webhooks": 0,
    "dashscope_calls": 0,
    "dashscope_generations": 0,
}


# --- helpers -------------------------------------------------------------------------------------


class LocalHTTP:
    """A small threaded server on 127.0.0.1 playing the studio: it serves input images and
    receives callbacks, so the simulator's outgoing requests really leave its process."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.callbacks: list[dict[str, Any]] = []
        self.callback_statuses: list[int] = []  # answers for the next callbacks, then 200
        self.received = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                item = owner.files.get(self.path)
                if item is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data, mime = item
                self.send_response(200)
                self.send_header("Content-Type", mime)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                owner.callbacks.append(json.loads(self.rfile.read(length)))
                status = owner.callback_statuses.pop(0) if owner.callback_statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if status < 300:
                    owner.received.set()

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

    def serve(self, path: str, data: bytes, mime: str = "image/png") -> str:
        self.files[path] = (data, mime)
        return self.base_url + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def sample_image(size: tuple[int, int] = (48, 32), fmt: str = "PNG") -> bytes:
    """A gradient, so an inversion can be told apart from any flat colour."""
    image = Image.new("RGB", size)
    image.putdata(
        [
            (x * 5 % 256, y * 7 % 256, (x + y) * 3 % 256)
            for y in range(size[1])
            for x in range(size[0])
        ]
    )
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def create_body(urls: list[str], prompt: str = "invert it", **extra: Any) -> dict[str, Any]:
    return {"model": "qwen-image-edit", "prompt": prompt, "image_urls": urls, **extra}


def wait_done(client: httpx.Client, task_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(f"/v1/tasks/{task_id}").json()
        if data["status"] in ("completed", "failed"):
            return data
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not end in {timeout} s")


def set_config(client: httpx.Client, **changes: Any) -> dict[str, Any]:
    response = client.post("/_sim/config", json=changes)
    assert response.status_code == 200, response.text
    return response.json()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(delay=0)) as sim:
        yield sim


@pytest.fixture
def client(server: SimulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {KEY}"},
        trust_env=False,
        timeout=10,
    ) as http:
        assert http.post("/_sim/reset").status_code == 200
        yield http


@pytest.fixture
def studio() -> Iterator[LocalHTTP]:
    local = LocalHTTP()
    yield local
    local.close()


@pytest.fixture
def input_url(studio: LocalHTTP) -> str:
    return studio.serve("/inputs/photo.png", sample_image())


def assert_inverted(png: bytes, source: bytes) -> None:
    result = Image.open(io.BytesIO(png))
    assert result.format == "PNG"
    expected = ImageOps.invert(Image.open(io.BytesIO(source)).convert("RGB"))
    assert result.size == expected.size
    assert result.convert("RGB").tobytes() == expected.tobytes()


# --- the happy path ------------------------------------------------------------------------------


def test_create_poll_and_result_is_inverted_input(
    client: httpx.Client, studio: LocalHTTP, input_url: str
) -> None:
    set_config(client, delay=1.0)
    created = client.post("/v1/images/generations", json=create_body([input_url]))
    assert created.status_code == 200
    data = created.json()
    assert TASK_ID.match(data["id"])
    assert data["object"] == "image.generation.task"
    assert data["model"] == "qwen-image-edit"
    assert (data["status"], data["progress"], data["type"]) == ("pending", 0, "image")
    assert data["task_info"] == {"can_cancel": True, "estimated_time": 1}
    assert data["usage"]["billing_rule"] == "per_call"
    assert abs(data["created"] - time.time()) < 5

    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        detail = client.get(f"/v1/tasks/{data['id']}").json()
        seen.append((detail["status"], detail["progress"]))
        if detail["status"] == "completed":
            break
        time.sleep(0.05)
    statuses = [status for status, _ in seen]
    assert statuses[0] == "pending" and "processing" in statuses and statuses[-1] == "completed"
    progress = [p for status, p in seen if status == "processing"]
    assert progress == sorted(progress) and all(0 < p < 100 for p in progress)
    assert len(progress) < 2 or progress[-1] > progress[0]
    assert detail["progress"] == 100
    assert detail["task_info"] == {"can_cancel": False}
    assert "error" not in detail
    assert len(detail["results"]) == 1

    result = httpx.get(detail["results"][0], trust_env=False)
    assert result.status_code == 200
    assert result.headers["content-type"] == "image/png"
    assert_inverted(result.content, studio.files["/inputs/photo.png"][0])
    assert client.get("/_sim/stats").json() == {
        **ZERO_STATS,
        "creates": 1,
        "queries": len(seen),
        "fetches": 1,
        "tasks": 1,
    }


def test_plus_model_with_uploaded_inputs_gives_n_results(client: httpx.Client) -> None:
    first, second = sample_image((40, 40)), sample_image((20, 30), "JPEG")
    urls = []
    for name, data, mime in (("a.png", first, "image/png"), ("b.jpg", second, "image/jpeg")):
        upload = client.post("/api/v1/files/upload/stream", files={"file": (name, data, mime)})
        urls.append(upload.json()["data"]["file_url"])
    body = create_body(
        urls,
        model="qwen-image-edit-plus",
        n=2,
        seed=7,
        negative_prompt="blurry",
        prompt_extend=False,
        watermark=False,
    )
    created = client.post("/v1/images/generations", json=body)
    assert created.status_code == 200, created.text
    assert created.json()["model"] == "qwen-image-edit-plus"
    detail = wait_done(client, created.json()["id"])
    assert detail["status"] == "completed"
    assert len(detail["results"]) == 2 and len(set(detail["results"])) == 2
    for url in detail["results"]:
        assert_inverted(httpx.get(url, trust_env=False).content, first)
    assert client.get("/_sim/stats").json()["fetches"] == 2


# --- files API -----------------------------------------------------------------------------------


def test_upload_stream_answers_documented_shape_and_serves_file(client: httpx.Client) -> None:
    data = sample_image()
    response = client.post(
        "/api/v1/files/upload/stream",
        files={"file": ("My Photo.png", data, "application/octet-stream")},
        data={"upload_path": "qwen-edit-studio", "file_name": "input-1.png"},
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["success"], body["code"], body["msg"]) == (True, 200, "File uploaded successfully")
    info = body["data"]
    assert set(info) == {
        "file_id",
        "file_name",
        "original_name",
        "file_size",
        "mime_type",
        "upload_path",
        "file_url",
        "download_url",
        "upload_time",
        "expires_at",
    }
    assert info["file_name"] == "input-1.png"
    assert info["original_name"] == "My Photo.png"
    assert (info["file_size"], info["mime_type"]) == (len(data), "image/png")
    assert info["upload_path"] == "qwen-edit-studio"
    assert info["file_url"] == f"{client.base_url}/files/uploads/{info['file_id']}/input-1.png"
    assert info["expires_at"] > info["upload_time"]

    served = httpx.get(info["file_url"], trust_env=False)
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/png"
    assert served.content == data
    download = httpx.get(info["download_url"], trust_env=False)
    assert download.content == data and "attachment" in download.headers["content-disposition"]
    wrong_name = info["file_url"].replace("input-1.png", "other.png")
    assert httpx.get(wrong_name, trust_env=False).status_code == 404


@pytest.mark.parametrize(
    ("fmt", "mime", "data_uri"),
    [("PNG", "image/png", False), ("JPEG", "image/jpeg", True), ("WEBP", "image/webp", True)],
)
def test_upload_base64_raw_and_data_uri(
    client: httpx.Client, fmt: str, mime: str, data_uri: bool
) -> None:
    data = sample_image(fmt=fmt)
    encoded = base64.b64encode(data).decode()
    if data_uri:
        # The declared type is wrong on purpose: the simulator judges by content, like EvoLink.
        encoded = f"data:application/octet-stream;base64,{encoded}"
    response = client.post("/api/v1/files/upload/base64", json={"base64_data": encoded})
    assert response.status_code == 200, response.text
    info = response.json()["data"]
    assert info["mime_type"] == mime and info["file_size"] == len(data)
    served = httpx.get(info["file_url"], trust_env=False)
    assert served.headers["content-type"] == mime and served.content == data


def test_upload_refuses_bmp_and_garbage(client: httpx.Client) -> None:
    bmp = sample_image(fmt="BMP")
    refused = [
        client.post("/api/v1/files/upload/stream", files={"file": ("a.bmp", bmp, "image/png")}),
        client.post(
            "/api/v1/files/upload/base64",
            json={"base64_data": "data:image/bmp;base64," + base64.b64encode(bmp).decode()},
        ),
    ]
    for response in refused:
        assert response.status_code == 400
        body = response.json()
        assert (body["success"], body["code"]) == (False, 40002)
        assert "image/png" in body["msg"]
    bad = client.post("/api/v1/files/upload/base64", json={"base64_data": "not base64!"})
    assert (bad.status_code, bad.json()["success"], bad.json()["code"]) == (400, False, 400)
    missing = client.post("/api/v1/files/upload/stream", data={"upload_path": "x"})
    assert (missing.status_code, missing.json()["code"]) == (400, 400)
    assert client.get("/_sim/stats").json()["uploads"] == 4


# --- auth and validation -------------------------------------------------------------------------


def test_bearer_auth(client: httpx.Client, input_url: str) -> None:
    set_config(client, api_key=KEY)
    body = create_body([input_url])
    url = f"{client.base_url}/v1/images/generations"
    missing = httpx.post(url, json=body, trust_env=False)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}, trust_env=False)
    assert wrong.status_code == 401
    assert wrong.json() == {
        "error": {
            "code": "unauthorized",
            "message": "Invalid or expired token",
            "type": "authentication_error",
        }
    }
    query = httpx.get(f"{client.base_url}/v1/tasks/task-unified-1-abc", trust_env=False)
    assert query.status_code == 401 and query.json()["error"]["type"] == "authentication_error"
    upload = httpx.post(
        f"{client.base_url}/api/v1/files/upload/base64",
        json={"base64_data": "eA=="},
        headers={"Authorization": "Bearer nope"},
        trust_env=False,
    )
    assert upload.status_code == 401
    assert (upload.json()["success"], upload.json()["code"]) == (False, 401)
    assert client.post("/v1/images/generations", json=body).status_code == 200
    assert client.get("/_sim/stats").json()["tasks"] == 1


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"model": None}, "model"),
        ({"model": "qwen-image"}, "model"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"image_urls": []}, "image_urls"),
        ({"image_urls": ["http://a/1.png"] * 4}, "image_urls"),
        ({"image_urls": [42]}, "image_urls"),
        ({"image_urls": ["data:image/png;base64,AAAA"]}, "image_urls"),
        ({"callback_url": "ftp://example.com/hook"}, "callback_url"),
        ({"n": 2}, "n"),  # plus-only field on the base model
        ({"model": "qwen-image-edit-plus", "n": 7}, "n"),
        ({"model": "qwen-image-edit-plus", "n": True}, "n"),
        ({"model": "qwen-image-edit-plus", "n": 2, "size": "1024x1024"}, "size"),
        ({"model": "qwen-image-edit-plus", "size": "100x100"}, "size"),
        ({"model": "qwen-image-edit-plus", "seed": -1}, "seed"),
        ({"model": "qwen-image-edit-plus", "watermark": "yes"}, "watermark"),
    ],
)
def test_invalid_create_body(client: httpx.Client, changes: dict[str, Any], param: str) -> None:
    body = create_body(["http://127.0.0.1:9/input.png"])
    body.update(changes)
    body = {k: v for k, v in body.items() if v is not None}
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"code", "message", "type", "param"}
    assert (error["code"], error["type"], error["param"]) == (
        "invalid_request",
        "invalid_request_error",
        param,
    )
    assert error["message"]
    assert client.get("/_sim/stats").json()["tasks"] == 0


def test_non_json_create_body(client: httpx.Client) -> None:
    response = client.post("/v1/images/generations", content=b"{nope")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_query_invalid_and_unknown_task_ids(client: httpx.Client) -> None:
    invalid = client.get("/v1/tasks/abc123")
    assert invalid.status_code == 400
    assert invalid.json() == {
        "error": {
            "code": "invalid_task_id",
            "message": "Invalid task ID format, must start with 'task-unified-'",
            "type": "invalid_request_error",
            "param": "task_id",
        }
    }
    unknown = client.get("/v1/tasks/task-unified-1757156493-zzzzzzzz")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "task_not_found"


# --- result links --------------------------------------------------------------------------------


def test_result_links_are_signed_and_expire(client: httpx.Client, input_url: str) -> None:
    set_config(client, result_ttl=1.0)
    task_id = client.post("/v1/images/generations", json=create_body([input_url])).json()["id"]
    link = wait_done(client, task_id)["results"][0]
    assert httpx.get(link, trust_env=False).status_code == 200
    tampered = re.sub(r"-(\d+)-", lambda m: f"-{int(m.group(1)) + 60000}-", link)
    assert tampered != link
    assert httpx.get(tampered, trust_env=False).status_code == 404
    time.sleep(1.2)
    assert httpx.get(link, trust_env=False).status_code == 410


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "kind", "message"),
    [
        (
            429,
            "rate_limit_exceeded",
            "rate_limit_error",
            "Too many requests, please try again later",
        ),
        (503, "service_unavailable", "api_error", "No available channel for the requested model"),
        (500, "internal_error", "api_error", "Internal server error"),
        (
            402,
            "insufficient_quota",
            "insufficient_quota",
            "Insufficient quota. Please top up your account.",
        ),
        (
            403,
            "model_access_denied",
            "invalid_request_error",
            "Token does not have access to model: qwen-image-edit",
        ),
        (401, "unauthorized", "authentication_error", "Invalid or expired token"),
    ],
)
def test_create_status_fault(
    client: httpx.Client, input_url: str, status: int, code: str, kind: str, message: str
) -> None:
    set_config(client, create_status=status)
    for _ in range(2):  # count 0: every create fails
        response = client.post("/v1/images/generations", json=create_body([input_url]))
        assert response.status_code == status
        assert response.json() == {"error": {"code": code, "message": message, "type": kind}}
        assert response.headers.get("retry-after") == ("1" if status == 429 else None)
    assert client.get("/_sim/stats").json()["tasks"] == 0


def test_create_fail_count_then_success(client: httpx.Client, input_url: str) -> None:
    set_config(client, create_status=503, create_fail_count=1)
    body = create_body([input_url])
    assert client.post("/v1/images/generations", json=body).status_code == 503
    config = client.get("/_sim/config").json()
    assert (config["create_status"], config["create_fail_count"]) == (None, 0)
    assert client.post("/v1/images/generations", json=body).status_code == 200


def test_query_status_fault_with_count(client: httpx.Client, input_url: str) -> None:
    task_id = client.post("/v1/images/generations", json=create_body([input_url])).json()["id"]
    set_config(client, query_status=429, query_fail_count=2)
    for _ in range(2):
        response = client.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert wait_done(client, task_id)["status"] == "completed"


def test_task_error_for_next_task_only(client: httpx.Client, input_url: str) -> None:
    set_config(client, task_error="service_error", task_error_count=1)
    failing = client.post("/v1/images/generations", json=create_body([input_url])).json()["id"]
    passing = client.post("/v1/images/generations", json=create_body([input_url])).json()["id"]
    failed = wait_done(client, failing)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "service_error"
    assert failed["error"]["type"] == "task_error" and failed["error"]["message"]
    assert "results" not in failed
    assert wait_done(client, passing)["status"] == "completed"


def test_malformed_json(client: httpx.Client, input_url: str) -> None:
    task_id = client.post("/v1/images/generations", json=create_body([input_url])).json()["id"]
    set_config(client, malformed_json=True)
    for response in (
        client.post("/v1/images/generations", json=create_body([input_url])),
        client.get(f"/v1/tasks/{task_id}"),
    ):
        assert response.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            response.json()
    assert client.get("/_sim/stats").json()["tasks"] == 1


def test_lose_task(client: httpx.Client, input_url: str) -> None:
    set_config(client, lose_task=True)
    created = client.post("/v1/images/generations", json=create_body([input_url]))
    assert created.status_code == 200
    lost = client.get(f"/v1/tasks/{created.json()['id']}")
    assert lost.status_code == 404 and lost.json()["error"]["code"] == "task_not_found"


def test_hang_outlasts_client_timeout(client: httpx.Client, input_url: str) -> None:
    set_config(client, hang=True)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/images/generations", json=create_body([input_url]), timeout=0.3)
    with pytest.raises(httpx.ReadTimeout):
        client.get("/v1/tasks/task-unified-1-abcdefgh", timeout=0.3)
    assert time.monotonic() - started < 3
    set_config(client, hang=False)
    assert client.post("/v1/images/generations", json=create_body([input_url])).status_code == 200
    assert client.get("/_sim/stats").json()["tasks"] == 1


def test_stop_is_not_held_up_by_a_hung_request() -> None:
    sim = SimulatorServer(SimulatorConfig(hang=True)).start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.get(f"{sim.base_url}/v1/tasks/task-unified-1-x", timeout=30, trust_env=False)
        except httpx.HTTPError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)
    thread_name = f"evolink-sim-{sim.base_url.rsplit(':', 1)[1]}"
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 3
    caller.join(5)
    assert not caller.is_alive()
    assert thread_name not in {t.name for t in threading.enumerate()}


def test_drop_create_response_creates_task_but_loses_answer(
    client: httpx.Client, input_url: str
) -> None:
    set_config(client, drop_create_response=True, drop_create_count=1)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/v1/images/generations", json=create_body([input_url]))
    assert client.get("/_sim/stats").json()["tasks"] == 1
    assert client.get("/_sim/config").json()["drop_create_response"] is False
    assert client.post("/v1/images/generations", json=create_body([input_url])).status_code == 200


def test_unreachable_input_fails_with_image_processing_error(
    client: httpx.Client, studio: LocalHTTP, input_url: str
) -> None:
    body = create_body([input_url, studio.base_url + "/inputs/missing.png"])
    task_id = client.post("/v1/images/generations", json=body).json()["id"]
    failed = wait_done(client, task_id)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "image_processing_error"
    assert "image_urls[1]" in failed["error"]["message"]


def test_prompt_directive_fail(client: httpx.Client, input_url: str) -> None:
    body = create_body([input_url], prompt="add a hat [sim:fail=content_policy_violation]")
    failed = wait_done(client, client.post("/v1/images/generations", json=body).json()["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "content_policy_violation"
    assert failed["error"]["type"] == "task_error"


def test_prompt_directive_delay(client: httpx.Client, input_url: str) -> None:
    set_config(client, delay=60)
    slow = client.post("/v1/images/generations", json=create_body([input_url])).json()
    fast = client.post(
        "/v1/images/generations", json=create_body([input_url], prompt="x [sim:delay=0]")
    ).json()
    assert slow["task_info"]["estimated_time"] == 60
    assert fast["task_info"]["estimated_time"] == 0
    assert wait_done(client, fast["id"], timeout=5)["status"] == "completed"
    assert client.get(f"/v1/tasks/{slow['id']}").json()["status"] in ("pending", "processing")


# --- callbacks -----------------------------------------------------------------------------------


def test_callback_is_delivered_and_retried(
    client: httpx.Client, studio: LocalHTTP, input_url: str
) -> None:
    studio.callback_statuses = [500]  # the first delivery fails; EvoLink retries after 1 s
    hook = studio.base_url + "/hooks/evolink?token=abc"
    body = create_body([input_url], callback_url=hook)
    task_id = client.post("/v1/images/generations", json=body).json()["id"]
    assert studio.received.wait(5)
    assert len(studio.callbacks) == 2
    delivered = studio.callbacks[-1]
    assert delivered == client.get(f"/v1/tasks/{task_id}").json()
    assert delivered["status"] == "completed" and delivered["results"]
    assert client.get("/_sim/stats").json()["callbacks"] == 2


# --- control surface -----------------------------------------------------------------------------


def test_config_endpoint_partial_update_validation_and_reset(
    server: SimulatorServer, client: httpx.Client
) -> None:
    initial = client.get("/_sim/config").json()
    assert initial["delay"] == 0 and initial["api_key"] is None and initial["result_ttl"] == 86400
    updated = set_config(client, delay=2, task_error="generation_timeout")
    assert updated["delay"] == 2.0 and updated["task_error"] == "generation_timeout"
    assert server.config.delay == 2.0 and server.app.state.config is server.config
    for bad in ({"nope": 1}, {"delay": "soon"}, {"delay": -1}, {"hang": 1}, {"create_status": 200}):
        response = client.post("/_sim/config", json=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "invalid_request"
    assert client.get("/_sim/config").json() == updated
    server.config.lose_task = True  # tests in the same process may also flip knobs directly
    assert client.get("/_sim/config").json()["lose_task"] is True
    assert client.post("/_sim/reset").json() == initial
    assert client.get("/_sim/stats").json() == ZERO_STATS
    assert client.get("/_sim/requests").json() == {}


def test_several_servers_are_independent(input_url: str) -> None:
    with (
        SimulatorServer(SimulatorConfig(delay=0, api_key="a")) as first,
        SimulatorServer(SimulatorConfig(delay=0, create_status=503)) as second,
    ):
        assert first.base_url != second.base_url
        auth = {"Authorization": "Bearer a"}
        ok = httpx.post(
            f"{first.base_url}/v1/images/generations",
            json=create_body([input_url]),
            headers=auth,
            trust_env=False,
        )
        refused = httpx.post(
            f"{second.base_url}/v1/images/generations",
            json=create_body([input_url]),
            headers=auth,
            trust_env=False,
        )
        assert (ok.status_code, refused.status_code) == (200, 503)
    with pytest.raises(RuntimeError):
        _ = first.base_url


def test_cli_runs_a_standalone_server() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    command = [sys.executable, "-m", "app.upstream.simulator", "--port", str(port)]
    command += ["--delay", "0", "--api-key", "cli-key", "--log-level", "warning"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        config = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                config = httpx.get(f"{base}/_sim/config", trust_env=False, timeout=1).json()
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert config is not None, "the simulator CLI did not answer"
        assert (config["delay"], config["api_key"]) == (0.0, "cli-key")
        denied = httpx.get(f"{base}/v1/tasks/task-unified-1-x", trust_env=False)
        assert denied.status_code == 401
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


# --- fal.ai queue protocol -----------------------------------------------------------------------


def fal_client(server: SimulatorServer, key: str = KEY) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Key {key}"},
        trust_env=False,
        timeout=10,
    )


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_fal_submit_status_result_shapes(client: httpx.Client, server: SimulatorServer) -> None:
    set_config(client, delay=1.0)
    source = sample_image()
    with fal_client(server) as fal:
        submitted = fal.post(
            "/fal-ai/qwen-image-edit", json={"prompt": "invert", "image_url": data_uri(source)}
        )
        assert submitted.status_code == 200
        queued = submitted.json()
        request_id = queued["request_id"]
        base = f"{server.base_url}/fal-ai/qwen-image-edit/requests/{request_id}"
        assert queued == {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "IN_QUEUE",
            "queue_position": 0,
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }
        first = fal.get(queued["status_url"])
        assert first.status_code == 202 and first.json()["status"] == "IN_QUEUE"
        assert first.json()["queue_position"] == 0
        early = fal.get(queued["response_url"])
        assert early.status_code == 400 and "in progress" in early.json()["detail"]
        seen = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status = fal.get(queued["status_url"], params={"logs": "1"})
            seen.append((status.status_code, status.json()["status"]))
            if status.json()["status"] == "COMPLETED":
                break
            time.sleep(0.05)
        assert (202, "IN_PROGRESS") in seen and seen[-1] == (200, "COMPLETED")
        done = status.json()
        assert done["logs"] and "inference_time" in done["metrics"] and "error" not in done
        result = fal.get(queued["response_url"])
    assert result.status_code == 200
    output = result.json()
    assert output["prompt"] == "invert" and isinstance(output["seed"], int)
    assert output["has_nsfw_concepts"] == [False]
    [image] = output["images"]
    assert (image["width"], image["height"], image["content_type"]) == (48, 32, "image/png")
    assert_inverted(httpx.get(image["url"], trust_env=False).content, source)
    stats = client.get("/_sim/stats").json()
    assert (stats["fal_submits"], stats["fal_requests"], stats["fetches"]) == (1, 1, 0)


def test_fal_auth_unknown_app_and_unknown_request(
    client: httpx.Client, server: SimulatorServer
) -> None:
    body = {"prompt": "x", "image_url": data_uri(sample_image())}
    bearer = client.post("/fal-ai/qwen-image-edit", json=body)  # EvoLink's scheme, not fal's
    assert bearer.status_code == 401 and bearer.json() == {"detail": "Unauthorized"}
    with fal_client(server) as fal:
        assert fal.post("/fal-ai/flux/dev", json=body).status_code == 404
        missing = fal.get("/fal-ai/qwen-image-edit/requests/nope/status")
        assert missing.status_code == 404 and missing.json() == {"detail": "Request not found"}
    set_config(client, api_key="only-this")
    with fal_client(server, "other") as fal:
        assert fal.post("/fal-ai/qwen-image-edit", json=body).status_code == 401


def fal_finished(fal: httpx.Client, body: dict[str, Any], app: str = "qwen-image-edit") -> str:
    queued = fal.post(f"/fal-ai/{app}", json=body).json()
    deadline = time.monotonic() + 5
    while fal.get(queued["status_url"]).json()["status"] != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return queued["request_id"]


def test_fal_failed_requests_answer_like_fal(client: httpx.Client, server: SimulatorServer) -> None:
    body = {"prompt": "x", "image_url": data_uri(sample_image())}
    with fal_client(server) as fal:
        set_config(client, task_error="generation_timeout", task_error_count=1)
        request_id = fal_finished(fal, body)
        path = f"/fal-ai/qwen-image-edit/requests/{request_id}"
        status = fal.get(f"{path}/status").json()
        assert (status["error"], status["error_type"]) == ("Request timed out", "request_timeout")
        result = fal.get(path)
        assert result.status_code == 504 and result.headers["x-fal-error-type"] == "request_timeout"
        assert result.json() == {"detail": "Request timed out", "error_type": "request_timeout"}

        flagged = fal_finished(fal, {**body, "prompt": "x [sim:fail=content_policy_violation]"})
        refused = fal.get(f"/fal-ai/qwen-image-edit/requests/{flagged}")
        assert refused.status_code == 422
        [entry] = refused.json()["detail"]
        assert entry["type"] == "content_policy_violation" and entry["loc"] == ["body", "prompt"]

        invalid = fal_finished(fal, {**body, "num_images": 9})
        bad = fal.get(f"/fal-ai/qwen-image-edit/requests/{invalid}")
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "num_images"]

        nsfw = fal_finished(fal, {**body, "prompt": "x [sim:fail=nsfw_output]"})
        output = fal.get(f"/fal-ai/qwen-image-edit/requests/{nsfw}").json()
        assert output["has_nsfw_concepts"] == [True]
        black = Image.open(
            io.BytesIO(httpx.get(output["images"][0]["url"], trust_env=False).content)
        )
        assert black.convert("RGB").getextrema() == ((0, 0), (0, 0), (0, 0))


@pytest.mark.parametrize(
    ("status", "answered", "detail"),
    [
        (402, 403, "User is locked. Reason: Exhausted balance."),
        (429, 429, "Too many concurrent requests"),
        (503, 503, "No runner available"),
    ],
)
def test_fal_submit_faults(
    client: httpx.Client, server: SimulatorServer, status: int, answered: int, detail: str
) -> None:
    set_config(client, create_status=status, create_fail_count=1)
    body = {"prompt": "x", "image_url": data_uri(sample_image())}
    with fal_client(server) as fal:
        refused = fal.post("/fal-ai/qwen-image-edit", json=body)
        assert refused.status_code == answered and refused.json()["detail"].startswith(detail)
        assert refused.headers.get("retry-after") == ("1" if status == 429 else None)
        assert fal.post("/fal-ai/qwen-image-edit", json=body).status_code == 200
    assert client.get("/_sim/stats").json()["fal_requests"] == 1


# --- DashScope synchronous generation ------------------------------------------------------------

DASHSCOPE_PATH = "/api/v1/services/aigc/multimodal-generation/generation"


def dashscope_body(images: list[str], text: str = "invert", **parameters: Any) -> dict[str, Any]:
    content: list[dict[str, str]] = [{"image": ref} for ref in images]
    content.append({"text": text})
    return {
        "model": "qwen-image-edit-plus" if parameters else "qwen-image-edit",
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }


def test_dashscope_call_shape_and_result(client: httpx.Client, input_url: str) -> None:
    source = sample_image((40, 30))
    body = dashscope_body([data_uri(source), input_url], n=2, size="1024*1024", seed=1)
    assert client.post(DASHSCOPE_PATH, json=body).json()["code"] == "InvalidParameter"  # size, n=2
    body["parameters"].pop("size")
    answer = client.post(DASHSCOPE_PATH, json=body)
    assert answer.status_code == 200
    data = answer.json()
    assert set(data) == {"output", "usage", "request_id"}
    [choice] = data["output"]["choices"]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"]) == 2
    assert data["usage"] == {"width": 40, "height": 30, "image_count": 2}
    for item in choice["message"]["content"]:
        assert_inverted(httpx.get(item["image"], trust_env=False).content, source)
    stats = client.get("/_sim/stats").json()
    assert (stats["dashscope_calls"], stats["dashscope_generations"], stats["fetches"]) == (2, 1, 1)


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"create_status": 402}, 400, "Arrearage"),
        ({"create_status": 429}, 429, "Throttling.RateQuota"),
        ({"create_status": 500}, 500, "InternalError"),
        ({"task_error": "content_policy_violation"}, 400, "DataInspectionFailed"),
        ({"api_key": "another"}, 401, "InvalidApiKey"),
    ],
)
def test_dashscope_errors(
    client: httpx.Client, change: dict[str, Any], status: int, code: str
) -> None:
    set_config(client, **change)
    answer = client.post(DASHSCOPE_PATH, json=dashscope_body([data_uri(sample_image())]))
    assert answer.status_code == status
    data = answer.json()
    assert set(data) == {"request_id", "code", "message"} and data["code"] == code
    assert "retry-after" not in answer.headers
    assert client.get("/_sim/stats").json()["dashscope_generations"] == 0


@pytest.mark.parametrize(
    "body",
    [
        dashscope_body([]),
        dashscope_body(["a", "b", "c", "d"]),
        dashscope_body([data_uri(b"x")], text=""),
        {**dashscope_body([data_uri(b"x")]), "model": "qwen-vl-max"},
        dashscope_body(["ftp://example.com/a.png"]),
    ],
    ids=["no-image", "four-images", "no-text", "unknown-model", "not-a-url"],
)
def test_dashscope_invalid_requests(client: httpx.Client, body: dict[str, Any]) -> None:
    answer = client.post(DASHSCOPE_PATH, json=body)
    assert answer.status_code == 400 and answer.json()["code"] == "InvalidParameter"


def test_dashscope_unreadable_input_is_invalid_parameter(
    client: httpx.Client, studio: LocalHTTP
) -> None:
    body = dashscope_body([studio.base_url + "/inputs/missing.png"])
    answer = client.post(DASHSCOPE_PATH, json=body)
    assert answer.status_code == 400 and answer.json()["code"] == "InvalidParameter"
    assert "content[0]" in answer.json()["message"]

"""Hostile and odd requests to the /v1 gateway: each must get a 4xx in EvoLink's error shape
(``{"error": {"code", "message", "type"}}``, non-empty strings), never a 5xx, a 422 or the
studio's own shape, and nothing may be stored. Everything runs against the real app, the real
simulator and HTTP servers on 127.0.0.1; refused addresses are never dialled."""

from __future__ import annotations

import http.server
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.web import gateway as gateway_module
from tests.conftest import image_bytes, studio_settings
from tests.test_fetcher import ImageServer
from tests.test_gateway import assert_error, db_rows, new_token


@pytest.fixture
def images():
    with ImageServer() as srv:
        srv.add("/photo.png", image_bytes(520, 400))
        yield srv


@pytest.fixture
def gw(tmp_path, sim, make_client, images):
    client = make_client(studio_settings(tmp_path, sim, fetch_allowed_networks=["127.0.0.1/32"]))
    client.headers["Authorization"] = f"Bearer {new_token(client)}"
    return client


def post_raw(client: TestClient, body: bytes, content_type: str = "application/json"):
    return client.post(
        "/v1/images/generations", content=body, headers={"content-type": content_type}
    )


def stored_jobs(tmp_path: Path) -> int:
    return db_rows(tmp_path, "select count(*) from tasks")[0][0]


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"prompt": "x", "image_urls": ' + b"[" * 60_000 + b"]" * 60_000 + b"}",
    ],
    ids=["deep-array", "deep-object", "deep-inside-a-field"],
)
def test_deeply_nested_json_is_a_400_not_a_500(gw, images, tmp_path, body):
    # Under the 1 MB cap, but deeper than the JSON parser's recursion limit.
    assert len(body) < gateway_module.MAX_BODY_BYTES
    error = assert_error(post_raw(gw, body), 400, "invalid_request")
    assert "nested too deeply" in error["message"]
    assert stored_jobs(tmp_path) == 0 and images.hits == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[]", "JSON object"),
        (b"null", "JSON object"),
        (b"42", "JSON object"),
        (b'"text"', "JSON object"),
        (b"", "JSON object"),
        (b'{"prompt": "\xff\xfe"}', "must be JSON"),
        (b'{"prompt": "x", "image_urls": ["a"]', "must be JSON"),
        (b'{"prompt": "x", "n": ' + b"9" * 5000 + b"}", "must be JSON"),
    ],
)
def test_bodies_that_are_not_a_json_object(gw, images, tmp_path, body, words):
    error = assert_error(post_raw(gw, body), 400, "invalid_request")
    assert words in error["message"]
    assert stored_jobs(tmp_path) == 0 and images.hits == []


@pytest.mark.parametrize("port", ["65536", "99999", "0"])
def test_image_url_with_a_port_out_of_range_is_a_400(gw, images, tmp_path, port):
    response = gw.post(
        "/v1/images/generations",
        json={"prompt": "x", "image_urls": [f"http://127.0.0.1:{port}/photo.png"]},
    )
    error = assert_error(response, 400, "invalid_request")
    assert error["param"] == "image_urls" and "invalid port" in error["message"]
    assert stored_jobs(tmp_path) == 0


def test_callback_url_with_a_port_out_of_range_is_refused_at_the_door(gw, images, tmp_path):
    # Accepted before, it made every delivery raise an OverflowError: the callback stayed
    # "pending" for good and was re-sent at every start.
    response = gw.post(
        "/v1/images/generations",
        json={
            "prompt": "x",
            "image_urls": [images.url("/photo.png")],
            "callback_url": "https://127.0.0.1:99999/hook",
        },
    )
    error = assert_error(response, 400, "invalid_request")
    assert error["param"] == "callback_url" and "invalid port" in error["message"]
    assert stored_jobs(tmp_path) == 0 and images.hits == []


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/v1/images/generations", "POST"),
        ("HEAD", "/v1/images/generations", "POST"),
        ("OPTIONS", "/v1/tasks/task-unified-1-0000000000000000", "GET"),
        ("HEAD", "/v1/tasks/task-unified-1-0000000000000000", "GET"),
    ],
)
def test_other_methods_answer_in_evolinks_shape(gw, method, path, allow):
    response = gw.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    if method != "HEAD":  # a HEAD answer has no body by definition
        assert_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize(
    "urls",
    [
        [],
        ["http://127.0.0.1/a.png"] * 4,
        {"0": "http://127.0.0.1/a.png"},
        5,
        [None],
        [""],
        [["http://127.0.0.1/a.png"]],
    ],
    ids=["none", "four", "object", "number", "null-entry", "empty-entry", "nested-list"],
)
def test_image_urls_of_the_wrong_shape_or_count(gw, images, tmp_path, urls):
    response = gw.post("/v1/images/generations", json={"prompt": "x", "image_urls": urls})
    error = assert_error(response, 400, "invalid_request")
    assert error["param"] == "image_urls"
    assert stored_jobs(tmp_path) == 0 and images.hits == []


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,iVBORw0KGgo=",
        "file:///etc/passwd",
        "http://[::1]/a.png",
        "http://0/a.png",
        "http://0.0.0.0/a.png",
        "http://[::]/a.png",
        "http://[::ffff:10.0.0.1]/a.png",
        "http://[64:ff9b::a9fe:a9fe]/a.png",
        "http://[2002:a9fe:a9fe::]/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://user:pw@10.0.0.1/a.png",
        "http://127.0.0.1@10.0.0.1/a.png",
        "http://10.0.0.1:8080/a.png",
        "http://[fe80::1%25eth0]/a.png",
        "http://\t10.0.0.1/a.png",
    ],
)
def test_internal_and_non_http_image_urls_are_refused(gw, images, tmp_path, url):
    # Only 127.0.0.1 is allow-listed here; every other internal form stays refused, and the
    # refusal comes before any connection (10.x and 169.254.x are never dialled).
    response = gw.post("/v1/images/generations", json={"prompt": "x", "image_urls": [url]})
    error = assert_error(response, 400, "invalid_request")
    assert error["param"] == "image_urls" and "image_urls[0]" in error["message"]
    assert stored_jobs(tmp_path) == 0


def test_a_callback_receiver_that_breaks_off_its_answer_is_still_told(gw, images, tmp_path):
    """The receiver answered 200 and then dropped the connection mid-body: it got the callback.
    Before, the body was read, the httpx error escaped the delivery and the state stayed
    ``pending`` (re-sent at every start) instead of being recorded."""
    gateway = gw.app.state.gateway
    gateway.callbacks = gateway_module.make_callbacks(
        gateway, allow_insecure_for_tests=True, retry_delays=(0.05, 0.05, 0.05)
    )

    def broken(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        h.wfile.write(b"ok")
        h.wfile.flush()
        h.close_connection = True

    with ImageServer() as hook:
        hook.routes["/hook"] = broken
        created = gw.post(
            "/v1/images/generations",
            json={
                "prompt": "x",
                "image_urls": [images.url("/photo.png")],
                "callback_url": hook.url("/hook"),
            },
        )
        assert created.status_code == 200, created.text
        deadline = time.monotonic() + 30
        sql = "select client_callback_state from tasks"
        while db_rows(tmp_path, sql) != [("sent",)]:
            assert time.monotonic() < deadline, db_rows(tmp_path, sql)
            time.sleep(0.05)
        assert len([h for h in hook.hits if h["path"] == "/hook"]) == 1


def test_odd_values_in_known_fields_are_400s(gw, images, tmp_path):
    good = images.url("/photo.png")
    plus = {"model": "qwen-image-edit-plus", "prompt": "x", "image_urls": [good]}
    bodies: list[dict[str, Any]] = [
        {"prompt": None, "image_urls": [good]},
        {"prompt": 5, "image_urls": [good]},
        {"prompt": ["x"], "image_urls": [good]},
        {"prompt": "a " * 200_000, "image_urls": [good]},
        {"prompt": "a\u0000b", "image_urls": [good]},
        {"model": ["qwen-image-edit"], "prompt": "x", "image_urls": [good]},
        {"model": "dall-e-3", "prompt": "x", "image_urls": [good]},
        {"prompt": "x", "image_urls": [good], "callback_url": 5},
        {"prompt": "x", "image_urls": [good], "callback_url": "http://example.test/"},
        {"prompt": "x", "image_urls": [good], "callback_url": "https://[::1"},
        {"prompt": "x", "image_urls": [good], "callback_url": "https://10.0.0.1/"},
        {"prompt": "x", "image_urls": [good], "callback_url": "https://a.test/" + "a" * 3000},
        {**plus, "n": "many"},
        {**plus, "n": 7},
        {**plus, "n": 1.5},
        {**plus, "n": True},
        {**plus, "seed": 10**30},
        {**plus, "seed": -1},
        {**plus, "size": [1024, 1024]},
        {**plus, "size": "99999x99999"},
        {**plus, "watermark": 1},
        {**plus, "prompt_extend": "maybe"},
    ]
    for body in bodies:
        response = gw.post("/v1/images/generations", content=json.dumps(body))
        assert_error(response, 400, "invalid_request")
    assert stored_jobs(tmp_path) == 0
    assert images.hits == []


def test_a_body_over_one_megabyte_is_a_400(gw, images, tmp_path):
    body = json.dumps({"prompt": "x" * (1024 * 1024), "image_urls": [images.url("/photo.png")]})
    error = assert_error(post_raw(gw, body.encode()), 400, "invalid_request")
    assert "bytes" in error["message"]
    assert stored_jobs(tmp_path) == 0 and images.hits == []


def test_unknown_task_ids_and_bad_tokens(gw):
    for task_id in ("task-unified-", "task-unified-1-zzzz", "task-unified-1-" + "0" * 16):
        assert_error(gw.get(f"/v1/tasks/{task_id}"), 404, "task_not_found")
    assert_error(gw.get("/v1/tasks/abc"), 400, "invalid_task_id")
    anonymous = httpx.Headers({"Authorization": "Basic dXNlcjpwdw=="})
    response = TestClient(gw.app).get("/v1/tasks/task-unified-1-0", headers=anonymous)
    assert_error(response, 401, "unauthorized")

"""The EvoLink-compatible gateway (/v1), driven the way a script written for the hosted API would,
and its signed callbacks, through the real app, the real simulator and real HTTP servers."""

from __future__ import annotations

import io
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageChops, ImageOps
from standardwebhooks import Webhook

from app.main import create_app
from app.web import gateway as gateway_module
from app.webhooks import CALLBACK_TIMEOUT, RETRY_DELAYS
from tests.conftest import image_bytes, studio_settings
from tests.live import LiveServer
from tests.test_fetcher import ImageServer

STATUSES = {"pending", "processing", "completed", "failed"}


class EvoLinkClient:
    """What a script written for EvoLink's documented API does; it knows nothing of the studio."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        )
        self.seen: list[str] = []

    def create(self, **body: Any) -> dict[str, Any]:
        response = self.http.post("/v1/images/generations", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"create failed: {response.status_code} {response.text}")
        task = response.json()
        assert task["id"].startswith("task-unified-")
        return task

    def get_task(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/tasks/{task_id}")
        # Published clients give up on the first 5xx or 429 while polling.
        if response.status_code >= 400:
            raise RuntimeError(f"query failed: {response.status_code} {response.text}")
        return response.json()

    def wait(self, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.get_task(task_id)
            self.seen.append(task["status"])
            if task["status"] in ("completed", "failed"):
                return task
            time.sleep(0.1)
        raise AssertionError(f"task {task_id} did not end")

    @staticmethod
    def download(url: str) -> bytes:
        # Result links are plain URLs: no key, no cookie.
        response = httpx.get(url, timeout=30)
        response.raise_for_status()
        return response.content


def new_token(base: str | TestClient, headers: dict[str, str] | None = None) -> str:
    if isinstance(base, str):
        response = httpx.post(f"{base}/api/tokens", json={"name": "script"}, headers=headers)
    else:
        response = base.post("/api/tokens", json={"name": "script"}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for key in ("code", "message", "type"):
        assert isinstance(error[key], str) and error[key], error
    if code is not None:
        assert error["code"] == code, error
    return error


def db_rows(tmp_path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(tmp_path / "data" / "studio.db") as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def images():
    with ImageServer() as srv:
        srv.add("/photo.png", image_bytes(520, 400))
        srv.add("/second.jpg", image_bytes(400, 400, fmt="JPEG"), content_type="image/jpeg")
        srv.add("/notes.txt", b"just some text, not a picture", content_type="text/plain")
        yield srv


@pytest.fixture
def gw(tmp_path, sim, make_client, images):
    """A studio allowed to fetch from the local image server, and a token for it."""
    client = make_client(studio_settings(tmp_path, sim, fetch_allowed_networks=["127.0.0.1/32"]))
    token = new_token(client)
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def create(client: TestClient, **body: Any) -> httpx.Response:
    return client.post("/v1/images/generations", json=body)


def wait_gateway(client: TestClient, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        task = response.json()
        assert task["status"] in STATUSES
        if task["status"] in ("completed", "failed"):
            return task
        time.sleep(0.05)
    raise AssertionError("task did not end")


# --- the test that matters most ---------------------------------------------------------------


def test_a_script_written_for_evolink_works_against_the_studio(tmp_path, sim, images):
    settings = studio_settings(tmp_path, sim, fetch_allowed_networks=["127.0.0.1/32"])
    source = image_bytes(520, 400)
    with LiveServer(create_app(settings)) as live:
        evolink = EvoLinkClient(live.url, new_token(live.url))
        created = evolink.create(
            model="qwen-image-edit",
            prompt="make the shirt red",
            image_urls=[images.url("/photo.png")],
            size="auto",  # what published clients send with every model: ignored
        )
        assert created["object"] == "image.generation.task"
        assert created["status"] == "pending" and created["progress"] == 0
        assert created["type"] == "image" and created["model"] == "qwen-image-edit"
        assert isinstance(created["created"], int)
        assert set(created["task_info"]) == {"can_cancel", "estimated_time"}
        assert set(created["usage"]) == {"billing_rule", "credits_reserved", "user_group"}

        done = evolink.wait(created["id"])
        assert done["status"] == "completed", done
        assert done["id"] == created["id"] and done["progress"] == 100
        assert set(evolink.seen) <= STATUSES
        [link] = done["results"]
        assert link.startswith(live.url + "/s/") and link.endswith(".png")

        edited = Image.open(io.BytesIO(evolink.download(link))).convert("RGB")
        expected = ImageOps.invert(Image.open(io.BytesIO(source)).convert("RGB"))
        assert ImageChops.difference(edited, expected).getbbox() is None

        # Signed afresh on every read: a later read carries a newer signature; both work.
        time.sleep(1.1)
        [again] = evolink.get_task(created["id"])["results"]
        assert again != link
        assert evolink.download(again) == evolink.download(link)
    assert images.paths() == ["/photo.png"]
    assert db_rows(tmp_path, "select source from tasks") == [("gateway",)]


# --- requests and refusals ----------------------------------------------------------------------


def test_token_is_required(gw, images):
    body = {"model": "qwen-image-edit", "prompt": "x", "image_urls": [images.url("/photo.png")]}
    anonymous = TestClient(gw.app)
    error = assert_error(anonymous.post("/v1/images/generations", json=body), 401, "unauthorized")
    assert error["type"] == "authentication_error"
    assert_error(anonymous.get("/v1/tasks/task-unified-1-0123456789abcdef"), 401, "unauthorized")
    bad = {"Authorization": "Bearer qes_not-a-real-token"}
    assert_error(anonymous.post("/v1/images/generations", json=body, headers=bad), 401)
    # The browser's cookie does not open the gateway: only a personal API token does.
    cookie_user = TestClient(gw.app)
    cookie_user.get("/")
    assert_error(cookie_user.post("/v1/images/generations", json=body), 401)
    assert images.hits == []


BASE = {"prompt": "x", "image_urls": ["URL"]}
PLUS = {**BASE, "model": "qwen-image-edit-plus"}


@pytest.mark.parametrize(
    ("body", "words", "param"),
    [
        ({"prompt": "x"}, "image_urls is required", "image_urls"),
        ({"image_urls": ["URL"]}, "prompt is required", "prompt"),
        ({**BASE, "prompt": "  "}, "prompt is empty", "prompt"),
        ({**BASE, "image_urls": []}, "1 to 3", "image_urls"),
        ({**BASE, "image_urls": ["URL"] * 4}, "at most 3", "image_urls"),
        ({**BASE, "image_urls": ["URL", 5]}, "image_urls[1]", "image_urls"),
        ({**BASE, "model": "dall-e"}, "Unknown model", "model"),
        ({**BASE, "model": 3}, "model must be", "model"),
        ({**PLUS, "n": 7}, "n must be a whole number from 1 to 6", None),
        ({**PLUS, "n": True}, "n must be a whole number", "n"),
        ({**PLUS, "seed": -1}, "seed must be a whole number from 0", None),
        ({**PLUS, "size": "9x9"}, "between 512 and 2048", None),
        ({**PLUS, "n": 2, "size": "1024x1024"}, "size can only be set when n is 1", None),
        ({**PLUS, "watermark": "maybe"}, "watermark must be true or false", None),
        ({**PLUS, "prompt_extend": 1}, "prompt_extend must be true or false", "prompt_extend"),
        (
            {**BASE, "callback_url": "http://example.com/hook"},
            "must be an https URL",
            "callback_url",
        ),
        ({**BASE, "callback_url": "https://10.0.0.8/hook"}, "private-network", "callback_url"),
        ({**BASE, "callback_url": "https://x.org/" + "a" * 2040}, "at most 2048", "callback_url"),
        ({**BASE, "callback_url": 5}, "callback_url must be a string", "callback_url"),
    ],
)
def test_invalid_requests_get_400_in_evolinks_shape(gw, images, body, words, param):
    body = {
        k: ([images.url("/photo.png") if u == "URL" else u for u in v] if k == "image_urls" else v)
        for k, v in body.items()
    }
    error = assert_error(create(gw, **body), 400, "invalid_request")
    assert error["type"] == "invalid_request_error"
    assert words in error["message"], error
    if param:
        assert error["param"] == param
    assert images.hits == []  # refused before anything was fetched
    assert gw.get("/api/tasks").json()["tasks"] == []


def test_bodies_that_are_not_a_json_object_get_400(gw):
    for raw in (b"not json", b"[1, 2]", b"", b'"text"'):
        response = gw.post(
            "/v1/images/generations", content=raw, headers={"Content-Type": "application/json"}
        )
        assert "JSON" in assert_error(response, 400, "invalid_request")["message"]


def test_refused_and_broken_image_urls_name_the_url_and_store_nothing(gw, images, tmp_path):
    cases = [
        ("http://169.254.169.254/latest/meta-data/", "image_urls[1]", "link-local"),
        ("http://192.168.1.20/cat.png", "image_urls[1]", "private-network"),
        (images.url("/photo.png", host="127.0.0.2"), "image_urls[1]", "loopback"),
        (images.url("/missing.png"), "image_urls[1]", "answered HTTP 404"),
        (images.url("/notes.txt"), "image_urls[1]", "not"),
        ("gopher://example.com/x", "image_urls[1]", "http or https"),
    ]
    for url, label, words in cases:
        response = create(
            gw, prompt="x", image_urls=[images.url("/second.jpg"), url], model="qwen-image-edit"
        )
        error = assert_error(response, 400, "invalid_request")
        assert error["param"] == "image_urls"
        assert label in error["message"] and words in error["message"], error
    assert "127.0.0.2" not in " ".join(images.paths())
    assert gw.get("/api/tasks").json()["tasks"] == []
    assert db_rows(tmp_path, "select count(*) from tasks") == [(0,)]
    stored = [p for p in (tmp_path / "data" / "files").glob("*/*/*") if not p.name.startswith(".")]
    assert stored == []


def test_without_the_allow_list_the_studio_refuses_its_own_network(
    tmp_path, sim, make_client, images
):
    client = make_client(studio_settings(tmp_path, sim))
    client.headers["Authorization"] = f"Bearer {new_token(client)}"
    error = assert_error(
        create(client, prompt="x", image_urls=[images.url("/photo.png")]), 400, "invalid_request"
    )
    assert "image_urls[0]" in error["message"] and "loopback" in error["message"]
    assert images.hits == []


def test_unknown_fields_are_ignored_and_plus_options_are_kept(gw, images, tmp_path):
    base = create(
        gw,
        model="qwen-image-edit",
        prompt="swap the background",
        image_urls=[images.url("/photo.png")],
        size="auto",
        resolution="2K",
        quality="high",
        n=4,  # not an option of this model: ignored like any unknown field
        mystery={"nested": True},
    )
    assert base.status_code == 200, base.text
    plus = create(
        gw,
        model="qwen-image-edit-plus",
        prompt="swap the background",
        image_urls=[images.url("/photo.png"), images.url("/second.jpg")],
        n=2,
        seed=42,
        negative_prompt="blurry " * 100,  # EvoLink truncates past 500 characters
        prompt_extend=False,
        watermark=True,
        size="auto",
        quality="high",
    )
    assert plus.status_code == 200, plus.text
    assert plus.json()["model"] == "qwen-image-edit-plus"
    jobs = {t["model"]: t for t in gw.get("/api/tasks").json()["tasks"]}
    assert jobs["qwen-image-edit"]["options"] == {}
    options = jobs["qwen-image-edit-plus"]["options"]
    assert options["n"] == 2 and options["seed"] == 42
    assert options["prompt_extend"] is False and options["watermark"] is True
    assert len(options["negative_prompt"]) == 500 and "size" not in options
    assert len(jobs["qwen-image-edit-plus"]["inputs"]) == 2
    for created in (base.json(), plus.json()):
        wait_gateway(gw, created["id"])


def test_task_of_another_user_and_unknown_ids(gw, images, make_client, tmp_path):
    created = create(gw, prompt="x", image_urls=[images.url("/photo.png")]).json()
    other = TestClient(gw.app)
    other.headers["Authorization"] = f"Bearer {new_token(other)}"
    error = assert_error(other.get(f"/v1/tasks/{created['id']}"), 404, "task_not_found")
    assert error["type"] == "invalid_request_error"
    assert_error(gw.get("/v1/tasks/task-unified-1-ffffffffffffffff"), 404, "task_not_found")
    assert_error(gw.get("/v1/tasks/task-unified-garbage"), 404, "task_not_found")
    error = assert_error(gw.get("/v1/tasks/abc123"), 400, "invalid_task_id")
    assert error["param"] == "task_id"
    assert_error(gw.get("/v1/images/generations"), 405)
    assert_error(gw.get("/v1/models"), 404)
    wait_gateway(gw, created["id"])


def test_failed_job_reports_a_task_error(gw, images):
    created = create(
        gw,
        prompt="make it red [sim:fail=content_policy_violation]",
        image_urls=[images.url("/photo.png")],
    ).json()
    done = wait_gateway(gw, created["id"])
    assert done["status"] == "failed" and "results" not in done
    error = done["error"]
    assert error["code"] == "content_policy_violation" and error["type"] == "task_error"
    assert error["message"]


def test_transient_upstream_faults_never_reach_the_poller(gw, images, sim):
    # The upstream refuses the next creates and queries with 503 and 429: the worker retries,
    # and every GET meanwhile is a 200 with a documented status.
    config = {"create_status": 503, "create_fail_count": 2}
    assert httpx.post(f"{sim.base_url}/_sim/config", json=config).status_code == 200
    created = create(gw, prompt="x", image_urls=[images.url("/photo.png")]).json()
    first = wait_gateway(gw, created["id"])
    assert first["status"] == "completed"
    config = {"query_status": 429, "query_fail_count": 3}
    assert httpx.post(f"{sim.base_url}/_sim/config", json=config).status_code == 200
    created = create(gw, prompt="y", image_urls=[images.url("/photo.png")]).json()
    assert wait_gateway(gw, created["id"])["status"] == "completed"


def test_rate_limits_answer_429_in_evolinks_shape(tmp_path, sim, make_client, images):
    settings = studio_settings(
        tmp_path, sim, fetch_allowed_networks=["127.0.0.1/32"], jobs_per_minute=1
    )
    client = make_client(settings)
    client.headers["Authorization"] = f"Bearer {new_token(client)}"
    body = {"prompt": "x", "image_urls": [images.url("/photo.png")]}
    first = create(client, **body)
    assert first.status_code == 200
    response = create(client, **body)
    error = assert_error(response, 429, "rate_limit_exceeded")
    assert error["type"] == "rate_limit_error" and "per minute" in error["message"]
    assert int(response.headers["Retry-After"]) >= 1
    assert images.paths() == ["/photo.png"]  # the refused request fetched nothing
    wait_gateway(client, first.json()["id"])


# --- callbacks ----------------------------------------------------------------------------------


def receiver(statuses: list[int]) -> ImageServer:
    """An http receiver on 127.0.0.1 answering the given statuses in turn (then 200)."""
    server = ImageServer()

    def hook(h: Any) -> None:
        status = statuses.pop(0) if statuses else 200
        h.send_response(status)
        h.send_header("Content-Length", "0")
        h.end_headers()

    server.routes["/hook"] = hook
    return server


def callback_state(tmp_path: Path) -> list[tuple]:
    return db_rows(tmp_path, "select client_callback_url, client_callback_state from tasks")


def wait_hits(server: ImageServer, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(server.hits) < count:
        assert time.monotonic() < deadline, f"{len(server.hits)} of {count} callbacks arrived"
        time.sleep(0.05)


def wait_state(tmp_path: Path, state: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while callback_state(tmp_path)[0][1] != state:
        assert time.monotonic() < deadline, callback_state(tmp_path)
        time.sleep(0.05)


def insecure_callbacks(client: TestClient, **options: Any) -> None:
    """Let this app deliver to plain http on 127.0.0.1 (a test can't get a trusted cert)."""
    gateway = client.app.state.gateway
    gateway.callbacks = gateway_module.make_callbacks(
        gateway, allow_insecure_for_tests=True, **options
    )


def test_callback_is_signed_and_carries_the_task_detail(gw, images, tmp_path):
    insecure_callbacks(gw)
    with receiver([]) as hook:
        created = create(
            gw, prompt="x", image_urls=[images.url("/photo.png")], callback_url=hook.url("/hook")
        ).json()
        wait_hits(hook, 1)
        wait_state(tmp_path, "sent")
    [delivery] = hook.hits
    secret = gw.get("/api/webhook-secret").json()["secret"]
    assert secret.startswith("whsec_")
    payload = Webhook(secret).verify(delivery["body"], delivery["headers"])
    assert delivery["headers"]["webhook-signature"].startswith("v1,")
    assert payload["id"] == created["id"] and payload["status"] == "completed"
    assert payload["object"] == "image.generation.task"
    # The links in the callback work without credentials, like the ones from a GET.
    assert TestClient(gw.app).get(payload["results"][0]).status_code == 200
    detail = gw.get(f"/v1/tasks/{created['id']}").json()
    assert {k: v for k, v in payload.items() if k != "results"} == {
        k: v for k, v in detail.items() if k != "results"
    }
    # Another user's secret does not verify it.
    other = TestClient(gw.app)
    other_secret = other.get("/api/webhook-secret").json()["secret"]
    assert other_secret != secret
    with pytest.raises(Exception, match="signature"):
        Webhook(other_secret).verify(delivery["body"], delivery["headers"])


def test_callback_is_retried_on_non_2xx_with_the_same_message_id(gw, images, tmp_path):
    insecure_callbacks(gw)  # the documented delays: 1 s before the second try
    with receiver([500]) as hook:
        create(
            gw,
            prompt="x [sim:fail=content_policy_violation]",
            image_urls=[images.url("/photo.png")],
            callback_url=hook.url("/hook"),
        )
        wait_hits(hook, 2)
        wait_state(tmp_path, "sent")
    first, second = hook.hits
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    secret = gw.get("/api/webhook-secret").json()["secret"]
    payload = Webhook(secret).verify(second["body"], second["headers"])
    assert payload["status"] == "failed" and payload["error"]["type"] == "task_error"


def test_callback_gives_up_after_three_retries(gw, images, tmp_path):
    assert RETRY_DELAYS == (1.0, 2.0, 4.0) and CALLBACK_TIMEOUT == 10.0
    insecure_callbacks(gw, retry_delays=(0.05, 0.05, 0.05))
    with receiver([500] * 10) as hook:
        create(
            gw, prompt="x", image_urls=[images.url("/photo.png")], callback_url=hook.url("/hook")
        )
        wait_state(tmp_path, "failed")
        assert len(hook.hits) == 4  # one try and three retries


def test_plain_http_callback_is_refused_by_the_real_route(gw, images):
    with receiver([]) as hook:
        response = create(
            gw, prompt="x", image_urls=[images.url("/photo.png")], callback_url=hook.url("/hook")
        )
        error = assert_error(response, 400, "invalid_request")
        assert error["param"] == "callback_url" and "https" in error["message"]
        assert hook.hits == [] and images.hits == []


def test_callbacks_left_pending_are_sent_at_the_next_start(tmp_path, sim, images):
    settings = studio_settings(tmp_path, sim, fetch_allowed_networks=["127.0.0.1/32"])
    with receiver([]) as hook:
        app = create_app(settings)
        app.state.gateway_callback_options = {"allow_insecure_for_tests": True}
        with TestClient(app) as client:
            client.headers["Authorization"] = f"Bearer {new_token(client)}"

            async def crashed_before_delivery(job_id: str) -> None:
                return None

            client.app.state.gateway.callbacks.on_finished = crashed_before_delivery
            created = create(
                client,
                prompt="x",
                image_urls=[images.url("/photo.png")],
                callback_url=hook.url("/hook"),
            ).json()
            assert wait_gateway(client, created["id"])["status"] == "completed"
        assert callback_state(tmp_path) == [(hook.url("/hook"), "pending")]
        assert hook.hits == []

        app = create_app(settings)
        app.state.gateway_callback_options = {"allow_insecure_for_tests": True}
        with TestClient(app):
            wait_hits(hook, 1)
            wait_state(tmp_path, "sent")
    assert len(hook.hits) == 1


def test_webhook_secret_is_per_user_and_stable(gw):
    first = gw.get("/api/webhook-secret").json()["secret"]
    assert first == gw.get("/api/webhook-secret").json()["secret"]
    # The cookie session behind the token is the same user: the same secret.
    cookie = TestClient(gw.app)
    token = new_token(cookie)
    assert (
        cookie.get("/api/webhook-secret").json()["secret"]
        == TestClient(gw.app, headers={"Authorization": f"Bearer {token}"})
        .get("/api/webhook-secret")
        .json()["secret"]
    )
    assert cookie.get("/api/webhook-secret").json()["secret"] != first

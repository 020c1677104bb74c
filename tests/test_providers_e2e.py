"""Jobs through the real app (lifespan, worker, SQLite, storage) to fal.ai and DashScope, both
played by the simulator over real HTTP.

Why: the adapter tests show each protocol is spoken right; these show the studio actually runs a
job end to end through each provider, with inputs sent inline (no public URL) or as signed links
the provider fetches from the running studio, and that the worker moves a job a provider cannot
take on to the next one.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from PIL import Image, ImageChops, ImageOps

from app.main import create_app
from app.upstream.simulator import SimulatorServer
from tests.conftest import image_bytes, post_job, studio_settings, wait_for
from tests.live import LiveServer, free_port

FAL = "fal"
DASHSCOPE = "dashscope"


def provider_settings(tmp_path: Path, sim: SimulatorServer, *names: str, **extra: Any) -> Any:
    """Only the named providers, all pointed at the simulator; EvoLink off."""
    values: dict[str, Any] = {"evolink_enabled": False}
    for name in names:
        values[f"{name}_api_key"] = "test-key"
        values[f"{name}_base_url"] = sim.base_url
    values.update(extra)
    return studio_settings(tmp_path, None, **values)


def assert_result_is_inverted(client: httpx.Client | TestClient, done: dict, source: bytes) -> None:
    got = client.get(done["results"][0]["url"])
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    edited = Image.open(io.BytesIO(got.content)).convert("RGB")
    expected = ImageOps.invert(Image.open(io.BytesIO(source)).convert("RGB"))
    assert ImageChops.difference(edited, expected).getbbox() is None


def sim_json(sim: SimulatorServer, path: str) -> Any:
    return httpx.get(sim.base_url + path, trust_env=False).json()


def test_job_succeeds_through_fal(
    tmp_path: Path, sim: SimulatorServer, make_client: Callable[..., TestClient]
) -> None:
    client = make_client(provider_settings(tmp_path, sim, FAL))
    source = image_bytes(640, 480)
    job = post_job(client, images=[("shirt.png", source)]).json()
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["provider"] == "fal"
    assert [(a["provider"], a["state"]) for a in done["attempts"]] == [("fal", "succeeded")]
    assert (done["results"][0]["width"], done["results"][0]["height"]) == (640, 480)
    assert_result_is_inverted(client, done, source)
    stats = sim_json(sim, "/_sim/stats")
    assert stats["fal_requests"] == 1 and stats["creates"] == 0 and stats["fetches"] == 0
    [call] = sim_json(sim, "/_sim/requests")["fal"]
    assert call["body"]["image_url"].startswith("data:image/png;base64,")


def test_job_succeeds_through_dashscope(
    tmp_path: Path, sim: SimulatorServer, make_client: Callable[..., TestClient]
) -> None:
    client = make_client(provider_settings(tmp_path, sim, DASHSCOPE))
    source = image_bytes(500, 420, (10, 200, 30))
    job = post_job(client, "把背景换成海边", images=[("a.png", source)]).json()
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["provider"] == "dashscope" and done["progress"] == 100
    assert_result_is_inverted(client, done, source)
    stats = sim_json(sim, "/_sim/stats")
    assert stats["dashscope_calls"] == 1 and stats["dashscope_generations"] == 1
    [call] = sim_json(sim, "/_sim/requests")["dashscope"]
    content = call["body"]["input"]["messages"][0]["content"]
    assert content[0]["image"].startswith("data:image/png;base64,")
    assert content[1] == {"text": "把背景换成海边"}


def test_plus_job_with_options_through_fal(
    tmp_path: Path, sim: SimulatorServer, make_client: Callable[..., TestClient]
) -> None:
    client = make_client(provider_settings(tmp_path, sim, FAL))
    first, second = image_bytes(512, 512), image_bytes(400, 600, (1, 2, 3))
    job = post_job(
        client,
        images=[("a.png", first), ("b.png", second)],
        model="qwen-image-edit-plus",
        n="2",
        seed="11",
        negative_prompt="blurry",
    ).json()
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done
    assert len(done["results"]) == 2
    assert_result_is_inverted(client, done, first)
    [call] = sim_json(sim, "/_sim/requests")["fal"]
    assert call["path"] == "/fal-ai/qwen-image-edit-plus"
    body = call["body"]
    assert len(body["image_urls"]) == 2
    assert (body["num_images"], body["seed"], body["negative_prompt"]) == (2, 11, "blurry")


def test_job_fal_cannot_take_moves_on_to_dashscope(
    tmp_path: Path, sim: SimulatorServer, make_client: Callable[..., TestClient]
) -> None:
    settings = provider_settings(tmp_path, sim, FAL, DASHSCOPE, fal_price=0.01)
    client = make_client(settings)
    images = [("a.png", image_bytes(512, 400)), ("b.png", image_bytes(450, 450, (9, 9, 9)))]
    done = wait_for(client, post_job(client, images=images).json()["id"])
    assert done["status"] == "succeeded", done
    assert done["provider"] == "dashscope"
    [skipped, served] = done["attempts"]
    assert (skipped["provider"], skipped["state"]) == ("fal", "skipped")
    assert skipped["error"]["code"] == "unsupported_input"
    assert (served["provider"], served["state"]) == ("dashscope", "succeeded")
    assert sim_json(sim, "/_sim/stats")["fal_submits"] == 0  # nothing was sent to fal


def test_content_policy_through_dashscope_fails_in_plain_words(
    tmp_path: Path, sim: SimulatorServer, make_client: Callable[..., TestClient]
) -> None:
    client = make_client(provider_settings(tmp_path, sim, DASHSCOPE))
    job = post_job(client, "add a hat [sim:fail=content_policy_violation]").json()
    done = wait_for(client, job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "content_policy_violation"
    assert "safety filter blocked this request" in done["error"]["message"]
    assert [a["state"] for a in done["attempts"]] == ["failed"]  # final: not retried


def test_fal_fetches_inputs_through_signed_links(tmp_path: Path, sim: SimulatorServer) -> None:
    """With a public base URL the provider gets a signed link and fetches the input itself."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    settings = provider_settings(tmp_path, sim, FAL, public_base_url=public)
    source = image_bytes(520, 400, (90, 10, 160))
    with (
        LiveServer(create_app(settings), port=port) as live,
        httpx.Client(base_url=live.url, trust_env=False) as client,
    ):
        job = post_job(client, images=[("p.png", source)]).json()
        done = wait_for(client, job["id"])
        assert done["status"] == "succeeded", done
        assert_result_is_inverted(client, done, source)
    [call] = sim_json(sim, "/_sim/requests")["fal"]
    assert call["body"]["image_url"].startswith(public + "/")
    assert sim_json(sim, "/_sim/stats")["fetches"] == 1

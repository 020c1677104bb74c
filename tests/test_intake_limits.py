"""Each limit at the door is refused with its message, and a refused request stores nothing."""

from __future__ import annotations

import io
import sqlite3

import pytest
from PIL import Image

from tests.conftest import image_bytes, post_job, stored_files


def _rows(tmp_path) -> int:
    db = sqlite3.connect(tmp_path / "data" / "studio.db")
    try:
        return db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
    finally:
        db.close()


def _bmp(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, "BMP")
    return buf.getvalue()


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (500, 500)).save(buf, "GIF")
    return buf.getvalue()


CASES = [
    pytest.param(
        dict(images=[(f"p{i}.png", image_bytes(400 + i, 400)) for i in range(4)]),
        400,
        ["4 images", "at most 3"],
        id="too-many-images",
    ),
    pytest.param(dict(images=[]), 400, ["at least one image"], id="no-images"),
    pytest.param(
        dict(images=[("big.bmp", _bmp(2000, 1800))]),
        413,
        ['"big.bmp"', "10 MB"],
        id="file-too-large",
    ),
    pytest.param(
        dict(images=[("ok.png", image_bytes()), ("anim.gif", _gif())]),
        415,
        ['image 2 ("anim.gif")', "JPG/JPEG, PNG, BMP, WEBP, TIFF"],
        id="gif-format",
    ),
    pytest.param(
        dict(images=[("page.png", b"<html><script>alert(1)</script></html>")]),
        415,
        ['"page.png"', "allowed formats"],
        id="html-named-png",
    ),
    pytest.param(
        dict(images=[("small.png", image_bytes(383, 500))]),
        400,
        ['"small.png"', "383", "384"],
        id="too-small",
    ),
    pytest.param(
        dict(images=[("wide.png", image_bytes(3073, 400))]),
        400,
        ['"wide.png"', "3073", "3072"],
        id="too-large-side",
    ),
    pytest.param(dict(prompt="   "), 400, ["prompt is empty"], id="empty-prompt"),
    pytest.param(dict(prompt="红" * 2100), 400, ["tokens", "2000"], id="prompt-too-long"),
    pytest.param(dict(model="dall-e"), 400, ["Unknown model"], id="bad-model"),
    pytest.param(
        dict(model="qwen-image-edit-plus", n="9"), 400, ["n must be", "1 to 6"], id="bad-n"
    ),
    pytest.param(
        dict(model="qwen-image-edit-plus", n="2", size="1024x1024"),
        400,
        ["size can only be set when n is 1"],
        id="size-with-n",
    ),
    pytest.param(dict(seed="5"), 400, ["qwen-image-edit-plus"], id="option-needs-plus"),
]


@pytest.mark.parametrize(("kwargs", "status", "fragments"), CASES)
def test_limit_is_refused_with_its_message_and_nothing_is_stored(
    client, tmp_path, kwargs, status, fragments
):
    response = post_job(client, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    assert stored_files(tmp_path / "data") == []
    assert _rows(tmp_path) == 0


def test_request_over_the_total_cap_is_refused_before_parsing(client, tmp_path):
    body = b"x" * (32 * 1024 * 1024)
    response = client.post(
        "/api/tasks",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=zzz"},
    )
    assert response.status_code == 413
    assert "at most 3 images of at most 10 MB" in response.json()["error"]["message"]
    assert stored_files(tmp_path / "data") == []


def test_chunked_request_over_the_cap_is_counted_while_it_streams(client):
    def chunks():
        for _ in range(40):
            yield b"y" * (1024 * 1024)

    response = client.post(
        "/api/tasks", content=chunks(), headers={"content-type": "multipart/form-data; boundary=z"}
    )
    assert response.status_code == 413


def test_plus_model_options_are_kept(client):
    response = post_job(
        client,
        model="qwen-image-edit-plus",
        n="2",
        seed="42",
        negative_prompt="blurry",
        prompt_extend="false",
        watermark="true",
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["model"] == "qwen-image-edit-plus"
    assert job["options"] == {
        "n": 2,
        "seed": 42,
        "negative_prompt": "blurry",
        "prompt_extend": False,
        "watermark": True,
    }


def test_per_minute_limit_answers_429_with_retry_after(tmp_path, sim, make_client):
    from tests.conftest import studio_settings

    client = make_client(studio_settings(tmp_path, sim, jobs_per_minute=2))
    assert post_job(client, "a").status_code == 202
    # A request refused at the door does not count toward the limit.
    assert post_job(client, "").status_code == 400
    assert post_job(client, "b").status_code == 202
    refused = post_job(client, "c")
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "2 per minute" in refused.json()["error"]["message"]


def test_retry_obeys_the_running_limit(tmp_path, sim, make_client):
    from tests.conftest import studio_settings, wait_for

    client = make_client(studio_settings(tmp_path, sim, max_running_per_user=1))
    failed = post_job(client, "x [sim:fail=content_policy_violation]").json()
    assert wait_for(client, failed["id"])["status"] == "failed"
    sim.config.delay = 30
    assert post_job(client, "busy").status_code == 202
    refused = client.post(f"/api/tasks/{failed['id']}/retry")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_running"
    assert client.get(f"/api/tasks/{failed['id']}").json()["status"] == "failed"

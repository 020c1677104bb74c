"""The whole job path through the real app: upload, store, upstream (the simulator as a real
server), worker, history, files, the cap of 20, restarts."""

from __future__ import annotations

import io
import sqlite3
import time
from pathlib import Path

import httpx
from PIL import Image, ImageChops, ImageOps

from app.main import create_app
from tests.conftest import (
    image_bytes,
    post_job,
    stored_files,
    studio_settings,
    wait_for,
    wait_until_running,
)
from tests.live import LiveServer, free_port


def test_job_goes_from_upload_to_stored_result(client, tmp_path):
    source = image_bytes(640, 480)
    response = post_job(client, images=[("shirt.png", source)])
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["prompt"] == "make the shirt red"
    assert job["inputs"][0]["width"] == 640 and job["inputs"][0]["height"] == 480
    assert job["results"] == [] and job["error"] is None

    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == 100
    assert done["provider"] == "evolink"
    [result] = done["results"]
    assert (result["width"], result["height"]) == (640, 480)

    got = client.get(result["url"])
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/png"
    edited = Image.open(io.BytesIO(got.content)).convert("RGB")
    expected = ImageOps.invert(Image.open(io.BytesIO(source)).convert("RGB"))
    assert ImageChops.difference(edited, expected).getbbox() is None

    # The result is ours now: its bytes are in our storage, not only behind the upstream's link.
    names = {p.name for p in stored_files(tmp_path / "data")}
    assert any(n.endswith(".png") for n in names)
    assert len(names) == 2  # one input, one result

    listing = client.get("/api/tasks").json()
    assert listing["running"] == 0 and listing["completed"] == 1 and listing["limit"] == 20
    assert [t["id"] for t in listing["tasks"]] == [job["id"]]


def test_list_is_newest_first_and_counts_running(client):
    first = post_job(client, "first").json()
    second = post_job(client, "second").json()
    listing = client.get("/api/tasks").json()
    assert [t["id"] for t in listing["tasks"]] == [second["id"], first["id"]]
    assert listing["running"] + listing["completed"] == 2
    wait_for(client, first["id"])
    wait_for(client, second["id"])
    assert client.get("/api/tasks").json()["completed"] == 2


def test_inputs_are_normalised_and_served_with_their_own_type(client):
    jpeg = image_bytes(500, 450, fmt="JPEG")
    job = post_job(client, images=[("a.bmp", jpeg), ("b.png", image_bytes(400, 400))]).json()
    first, second = job["inputs"]
    assert first["content_type"] == "image/jpeg" and first["name"] == "a.bmp"
    assert second["content_type"] == "image/png"
    got = client.get(first["url"])
    assert got.headers["content-type"] == "image/jpeg"
    assert got.headers["x-content-type-options"] == "nosniff"
    thumb = client.get(first["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    wait_for(client, job["id"])


def test_delete_removes_job_and_its_files(client, tmp_path):
    job = post_job(client, images=[("x.png", image_bytes(410, 410, (1, 2, 3)))]).json()
    wait_for(client, job["id"])
    assert len(stored_files(tmp_path / "data")) == 2
    assert client.delete(f"/api/tasks/{job['id']}").status_code == 204
    assert client.get(f"/api/tasks/{job['id']}").status_code == 404
    assert stored_files(tmp_path / "data") == []


def test_shared_input_survives_deleting_one_of_two_jobs(client, tmp_path):
    same = image_bytes(420, 420, (9, 9, 9))
    a = post_job(client, images=[("same.png", same)]).json()
    b = post_job(client, images=[("same.png", same)]).json()
    wait_for(client, a["id"])
    b = wait_for(client, b["id"])
    client.delete(f"/api/tasks/{a['id']}")
    assert client.get(b["inputs"][0]["url"]).status_code == 200
    assert client.get(b["results"][0]["url"]).status_code == 200


def test_twenty_first_job_drops_the_oldest_finished_with_its_files(client, tmp_path):
    ids = []
    for i in range(20):
        job = post_job(client, f"edit {i}", images=[("i.png", image_bytes(400, 400, (i, 50, 90)))])
        assert job.status_code == 202, job.text
        ids.append(job.json()["id"])
    for task_id in ids:
        assert wait_for(client, task_id)["status"] == "succeeded"
    oldest = client.get(f"/api/tasks/{ids[0]}").json()
    oldest_urls = [f["url"] for f in oldest["inputs"] + oldest["results"]]
    before = len(stored_files(tmp_path / "data"))
    assert before == 40

    newest = post_job(client, "edit 20", images=[("n.png", image_bytes(400, 400, (250, 1, 1)))])
    assert newest.status_code == 202
    listing = client.get("/api/tasks").json()
    assert len(listing["tasks"]) == 20
    assert ids[0] not in [t["id"] for t in listing["tasks"]]
    assert client.get(f"/api/tasks/{ids[0]}").status_code == 404
    for url in oldest_urls:
        assert client.get(url).status_code == 404
    # Its two files went, the new input came.
    assert len(stored_files(tmp_path / "data")) == before - 2 + 1
    wait_for(client, newest.json()["id"])


def test_history_full_of_running_jobs_refuses_with_a_clear_message(tmp_path, sim, make_client):
    sim.config.delay = 30
    client = make_client(studio_settings(tmp_path, sim, history_limit=2))
    assert post_job(client, "a").status_code == 202
    assert post_job(client, "b").status_code == 202
    refused = post_job(client, "c", images=[("c.png", image_bytes(401, 401))])
    assert refused.status_code == 429
    assert "All 2 jobs in your history are still running" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"]
    assert len(stored_files(tmp_path / "data")) == 1  # both accepted jobs share one input


def test_restart_in_the_middle_of_a_job_still_ends_it(tmp_path, sim, make_client):
    sim.config.delay = 1.5
    settings = studio_settings(tmp_path, sim)
    first = make_client(settings)
    job = post_job(first).json()
    wait_until_running(first, job["id"])
    cookies = dict(first.cookies)
    first.__exit__(None, None, None)  # the app stops with the job running upstream

    second = make_client(settings)
    second.cookies.update(cookies)
    done = wait_for(second, job["id"])
    assert done["status"] == "succeeded"
    assert len(done["results"]) == 1
    # One upstream task only: the restart followed the job, it did not send it again.
    assert httpx.get(sim.base_url + "/_sim/stats").json()["creates"] == 1


def test_worker_picks_up_a_queued_row_left_by_a_dead_process(tmp_path, sim, make_client):
    settings = studio_settings(tmp_path, sim)
    client = make_client(settings)
    job = post_job(client).json()
    wait_for(client, job["id"])
    # Pretend a crashed process held the lease on a queued job.
    db = sqlite3.connect(tmp_path / "data" / "studio.db")
    db.execute(
        "UPDATE tasks SET status='queued', lease_owner=?, lease_until='2999-01-01 00:00:00',"
        " next_check_at='2000-01-01 00:00:00' WHERE id=?",
        (f"{__import__('socket').gethostname()}:999999:abc", job["id"]),
    )
    db.execute("DELETE FROM attempts WHERE task_id=?", (job["id"],))
    db.execute("DELETE FROM task_files WHERE task_id=? AND role='result'", (job["id"],))
    db.commit()
    db.close()
    again = make_client(settings)
    again.cookies.update(dict(client.cookies))
    assert wait_for(again, job["id"])["status"] == "succeeded"


def test_upstream_fetches_inputs_through_signed_links(tmp_path, sim):
    port = free_port()
    settings = studio_settings(tmp_path, sim, public_base_url=f"http://127.0.0.1:{port}")
    with LiveServer(create_app(settings), port=port) as live, httpx.Client(base_url=live.url) as c:
        job = post_job(c).json()
        done = wait_for(c, job["id"])
        assert done["status"] == "succeeded", done
        stats = httpx.get(sim.base_url + "/_sim/stats").json()
        assert stats["uploads"] == 0 and stats["fetches"] >= 1
        # The signed link works without a cookie; a forged one does not.
        anon = httpx.get(live.url + "/s/forged/input-1.png")
        assert anon.status_code == 404


def test_without_api_key_the_app_runs_on_the_builtin_simulator(tmp_path, make_client):
    client = make_client(studio_settings(tmp_path, None, simulator_delay=0.1))
    page = client.get("/")
    assert page.status_code == 200
    assert "Simulated results" in page.text
    job = post_job(client).json()
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded" and done["provider"] == "simulator"


def test_files_and_jobs_of_another_user_are_not_found(client, tmp_path, sim):
    job = post_job(client).json()
    wait_for(client, job["id"])
    other = httpx.Client(transport=client._transport, base_url="http://testserver")
    for url in (
        f"/api/tasks/{job['id']}",
        job["inputs"][0]["url"],
        job["inputs"][0]["thumbnail_url"],
    ):
        assert other.get(url).status_code == 404
    assert other.delete(f"/api/tasks/{job['id']}").status_code == 404
    assert other.get("/api/tasks").json()["tasks"] == []
    assert client.get(job["inputs"][0]["url"]).status_code == 200


def test_database_is_sqlite_in_wal_mode(client, tmp_path):
    db = sqlite3.connect(Path(tmp_path / "data" / "studio.db"))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"tasks", "task_files", "attempts", "users", "api_tokens", "alembic_version"} <= tables


def test_a_slow_synchronous_call_holds_up_only_its_own_job(tmp_path, sim, make_client):
    """DashScope answers only when the image is done; meanwhile other jobs keep moving."""
    settings = studio_settings(
        tmp_path,
        None,
        evolink_enabled=False,
        dashscope_api_key="test-key",
        dashscope_base_url=sim.base_url,
    )
    client = make_client(settings)
    slow = post_job(client, "slow one [sim:delay=6]").json()
    time.sleep(0.3)  # the slow call is under way
    quick = post_job(client, "quick one", images=[("q.png", image_bytes(420, 420))]).json()
    assert wait_for(client, quick["id"], timeout=5)["status"] == "succeeded"
    assert client.get(f"/api/tasks/{slow['id']}").json()["status"] in ("queued", "running")
    assert wait_for(client, slow["id"])["status"] == "succeeded"

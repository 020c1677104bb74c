"""Provider callbacks only wake the worker; forged, unknown, duplicate and late ones change
nothing and are answered at once."""

from __future__ import annotations

import sqlite3

from app.web.callbacks import url_builder
from tests.conftest import post_job, studio_settings, wait_for, wait_until_running


def test_callback_url_only_when_public_over_https():
    assert url_builder(None) is None
    assert url_builder("http://studio.example") is None
    build = url_builder("https://studio.example")
    assert build is not None
    assert build("job1", "tok") == "https://studio.example/callbacks/job1/tok"


def _set_token(tmp_path, task_id: str, token: str, next_check: str | None = None) -> None:
    db = sqlite3.connect(tmp_path / "data" / "studio.db")
    db.execute("UPDATE tasks SET callback_token=? WHERE id=?", (token, task_id))
    if next_check:
        db.execute("UPDATE tasks SET next_check_at=? WHERE id=?", (next_check, task_id))
    db.commit()
    db.close()


def _next_check(tmp_path, task_id: str) -> str:
    db = sqlite3.connect(tmp_path / "data" / "studio.db")
    try:
        return db.execute("SELECT next_check_at FROM tasks WHERE id=?", (task_id,)).fetchone()[0]
    finally:
        db.close()


def test_callbacks_are_a_nudge_never_the_truth(tmp_path, sim, make_client):
    sim.config.delay = 30
    client = make_client(studio_settings(tmp_path, sim, poll_interval=5, retry_max_delay=10))
    job = post_job(client).json()
    wait_until_running(client, job["id"])
    # Far in the future: only a valid callback can bring the next check forward.
    _set_token(tmp_path, job["id"], "s3cret-token", "2999-01-01 00:00:00.000000")
    body = {"id": "task-unified-1-x", "status": "completed", "results": ["https://evil/x.png"]}

    assert client.post(f"/callbacks/{job['id']}/wrong-token", json=body).status_code == 404
    assert client.post("/callbacks/nosuchjob/s3cret-token", json=body).status_code == 404
    assert _next_check(tmp_path, job["id"]).startswith("2999")

    ok = client.post(f"/callbacks/{job['id']}/s3cret-token", json=body)
    assert ok.status_code == 204
    assert not _next_check(tmp_path, job["id"]).startswith("2999")
    # The body's claim ("completed") was not believed: the job is still running upstream.
    state = client.get(f"/api/tasks/{job['id']}").json()
    assert state["status"] in ("queued", "running") and state["results"] == []
    # A duplicate changes nothing either.
    assert client.post(f"/callbacks/{job['id']}/s3cret-token", json=body).status_code == 204

    sim.config.delay = 0
    client.delete(f"/api/tasks/{job['id']}")
    # Late: the job is gone.
    assert client.post(f"/callbacks/{job['id']}/s3cret-token", json=body).status_code == 404


def test_late_callback_for_a_finished_job_changes_nothing(tmp_path, sim, make_client):
    client = make_client(studio_settings(tmp_path, sim))
    job = post_job(client).json()
    done = wait_for(client, job["id"])
    _set_token(tmp_path, job["id"], "tok")
    assert client.post(f"/callbacks/{job['id']}/tok", json={"status": "failed"}).status_code == 204
    assert client.get(f"/api/tasks/{job['id']}").json() == done

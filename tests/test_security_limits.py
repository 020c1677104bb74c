"""Abuse limits through the real app: running jobs per user, jobs per minute per user and per
address, and the daily spend limit, each a 429 with a Retry-After and a message that says when.

The spend tests use a real-looking provider (EvoLink at 0.05 per image) pointed at the simulator,
since the built-in simulator is free and a free job can never reach a spend limit.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from app import spend
from app.models import utcnow
from tests.conftest import image_bytes, post_job, studio_settings, wait_for

SLOW = " [sim:delay=30]"  # keeps a job running for the length of a test
FAIL = " [sim:fail=content_policy_violation]"


def _spend_client(tmp_path, sim, make_client, **overrides) -> TestClient:  # type: ignore[no-untyped-def]
    values = {"evolink_price": 0.05, "daily_spend_limit": 0.12, **overrides}
    return make_client(studio_settings(tmp_path, sim, **values))


def _ok(client: TestClient, prompt: str = "make it red", **fields: str) -> str:
    response = post_job(client, prompt=prompt, **fields)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _seconds_to_midnight() -> int:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((midnight - now).total_seconds())


def _assert_spend_refusal(response, spent: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "daily_spend_limit"
    assert "0.12" in error["message"] and spent in error["message"], error["message"]
    assert "midnight UTC" in error["message"]
    retry_after = int(response.headers["retry-after"])
    assert abs(retry_after - _seconds_to_midnight()) <= 120


def _usage_rows(client: TestClient) -> list[tuple]:
    data_dir = client.app.state.studio.settings.data_dir
    db = sqlite3.connect(data_dir / "studio.db")
    try:
        return db.execute(
            "SELECT task_id, status, images, unit_price, amount FROM usage_events ORDER BY id"
        ).fetchall()
    finally:
        db.close()


def test_third_job_passes_the_daily_spend_limit_and_deleting_does_not_help(
    tmp_path, sim, make_client
):
    client = _spend_client(tmp_path, sim, make_client)
    first, second = _ok(client), _ok(client)
    assert wait_for(client, first)["status"] == "succeeded"
    assert wait_for(client, second)["status"] == "succeeded"

    _assert_spend_refusal(post_job(client), "0.10")

    # Deleting the jobs that cost the money does not give it back.
    assert client.delete(f"/api/tasks/{first}").status_code == 204
    assert client.delete(f"/api/tasks/{second}").status_code == 204
    assert client.get("/api/tasks").json()["tasks"] == []
    _assert_spend_refusal(post_job(client), "0.10")
    rows = _usage_rows(client)
    assert [(r[1], r[4]) for r in rows] == [("succeeded", 0.05), ("succeeded", 0.05)]

    # The limit is per user.
    other = TestClient(client.app)
    assert post_job(other).status_code == 202


def test_queued_and_running_jobs_hold_a_reservation(tmp_path, sim, make_client):
    client = _spend_client(tmp_path, sim, make_client)
    _ok(client, "make it red" + SLOW)
    _ok(client, "make it blue" + SLOW)
    _assert_spend_refusal(post_job(client, prompt="make it green" + SLOW), "0.10")


def test_plus_model_reserves_its_n_images(tmp_path, sim, make_client):
    client = _spend_client(tmp_path, sim, make_client)
    refused = post_job(client, model="qwen-image-edit-plus", n="3")  # 0.15 > 0.12
    _assert_spend_refusal(refused, "0.00")
    job = _ok(client, model="qwen-image-edit-plus", n="2")  # 0.10
    done = wait_for(client, job)
    assert done["status"] == "succeeded" and len(done["results"]) == 2
    _assert_spend_refusal(post_job(client), "0.10")


def test_failed_jobs_cost_nothing_even_after_deletion(tmp_path, sim, make_client):
    client = _spend_client(tmp_path, sim, make_client)
    for _ in range(3):  # one at a time: while queued, each holds a reservation
        task_id = _ok(client, "make it red" + FAIL)
        assert wait_for(client, task_id)["status"] == "failed"
        assert client.delete(f"/api/tasks/{task_id}").status_code == 204
    assert all(
        status == "failed" and amount == 0 for _, status, _, _, amount in _usage_rows(client)
    )
    for _ in range(2):
        assert wait_for(client, _ok(client))["status"] == "succeeded"
    _assert_spend_refusal(post_job(client), "0.10")


def test_no_spend_limit_when_it_is_zero(tmp_path, sim, make_client):
    client = _spend_client(tmp_path, sim, make_client, daily_spend_limit=0)
    for _ in range(4):
        _ok(client, "make it red" + SLOW)


def test_spend_of_yesterday_does_not_count(tmp_path, sim, make_client):
    client = _spend_client(tmp_path, sim, make_client)
    for _ in range(2):
        assert wait_for(client, _ok(client))["status"] == "succeeded"
    yesterday = (utcnow() - timedelta(days=1)).isoformat(sep=" ")
    db = sqlite3.connect(client.app.state.studio.settings.data_dir / "studio.db")
    with db:
        db.execute("UPDATE tasks SET created_at = ?", (yesterday,))
        db.execute("UPDATE usage_events SET created_at = ?", (yesterday,))
    db.close()
    assert post_job(client).status_code == 202


def test_running_jobs_per_user_limit(tmp_path, sim, make_client):
    client = make_client(studio_settings(tmp_path, sim, max_running_per_user=2))
    _ok(client, "one" + SLOW)
    _ok(client, "two" + SLOW)
    refused = post_job(client, prompt="three" + SLOW)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_running"
    assert "limit is 2" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert post_job(TestClient(client.app), prompt="other user" + SLOW).status_code == 202


def test_per_minute_limits_per_user_and_per_address(tmp_path, sim, make_client):
    client = make_client(
        studio_settings(tmp_path, sim, jobs_per_minute=2, jobs_per_minute_per_ip=3)
    )
    first, second = _ok(client), _ok(client)
    per_user = post_job(client)
    assert per_user.status_code == 429
    assert "per minute per user" in per_user.json()["error"]["message"]
    assert 1 <= int(per_user.headers["retry-after"]) <= 61
    # Deleting the jobs does not make room: the ledger still has them.
    for task_id in (first, second):
        wait_for(client, task_id)
        assert client.delete(f"/api/tasks/{task_id}").status_code == 204
    assert post_job(client).status_code == 429

    # Another user from the same address (the TestClient's peer) gets one more, then the
    # per-address limit holds.
    other = TestClient(client.app)
    assert post_job(other).status_code == 202
    per_address = post_job(other)
    assert per_address.status_code == 429
    assert "per minute per address" in per_address.json()["error"]["message"]


def test_spend_pieces():
    now = datetime(2026, 3, 1, 23, 59, 30)
    assert spend.seconds_to_utc_midnight(now) == 31
    assert spend.requested_images({"n": 3}) == 3 and spend.requested_images({}) == 1
    assert spend.requested_images({"n": "x"}) == 1
    assert image_bytes()  # the fixture helper stays importable for the cases above

"""Usage and cost through the real app: per user, per team for admins, CSV, the daily limit."""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import post_job, studio_settings, wait_for

PRICE = 0.0319  # QES_EVOLINK_PRICE's default; the simulator stands in for EvoLink here
TODAY = datetime.now(UTC).date().isoformat()


def run_jobs(client: TestClient, ok: int, failed: int = 0) -> list[str]:
    ids = []
    for i in range(ok):
        ids.append(post_job(client, f"edit {i}").json()["id"])
    for i in range(failed):
        ids.append(post_job(client, f"bad {i} [sim:fail=content_policy_violation]").json()["id"])
    for job_id in ids:
        wait_for(client, job_id)
    return ids


def test_user_usage_counts_jobs_images_and_spend_by_day(client):
    run_jobs(client, ok=2, failed=1)
    usage = client.get("/api/usage").json()
    assert usage["scope"] == "user" and usage["currency"] == "USD"
    [row] = usage["rows"]
    assert row == {
        "day": TODAY,
        "user": "",
        "provider": "evolink",
        "jobs": 3,
        "succeeded": 2,
        "failed": 1,
        "images": 2,
        "spend": pytest.approx(2 * PRICE),
    }
    assert usage["totals"]["spend"] == pytest.approx(2 * PRICE)
    assert usage["prices"]["evolink"] == PRICE and usage["prices"]["simulator"] == 0
    assert usage["daily_limit"] is None and usage["admin"] is False
    assert "succeeded jobs only" in usage["note"] and "Deleted jobs still count" in usage["note"]

    page = client.get("/usage")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Your usage" in page.text and f"${2 * PRICE:.4f}" in page.text
    assert "3 jobs, 2 succeeded, 1 failed" in page.text
    assert "Deleted jobs still count" in page.text and "Spent today" not in page.text

    response = client.get("/usage.csv")
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert rows == [
        {
            "day": TODAY,
            "provider": "evolink",
            "jobs": "3",
            "succeeded": "2",
            "failed": "1",
            "images": "2",
            "spend_usd": f"{2 * PRICE:.4f}",
        }
    ]


def test_each_user_sees_only_their_own_usage(client):
    run_jobs(client, ok=1)
    stranger = TestClient(client.app)
    assert stranger.get("/api/usage").json()["rows"] == []
    assert stranger.get("/api/usage?scope=team").status_code == 403
    assert stranger.get("/usage.csv?scope=team").status_code == 403
    page = stranger.get("/usage?scope=team")
    assert page.status_code == 403 and "admins only" in page.text
    assert client.get("/api/usage?scope=everyone").status_code == 400


def test_recorded_cost_wins_and_deleted_jobs_still_count(client, tmp_path):
    first, second = run_jobs(client, ok=2)
    with sqlite3.connect(tmp_path / "data" / "studio.db") as db:
        db.execute("update tasks set cost = 0.5 where id = ?", (first,))
    assert client.get("/api/usage").json()["totals"]["spend"] == pytest.approx(0.5 + PRICE)
    # Deleting a job (or the history cap dropping it) does not give the money back.
    assert client.delete(f"/api/tasks/{first}").status_code == 204
    assert client.get("/api/tasks").json()["tasks"][0]["id"] == second
    totals = client.get("/api/usage").json()["totals"]
    assert totals["jobs"] == 2 and totals["images"] == 2
    assert totals["spend"] == pytest.approx(0.5 + PRICE)


def test_the_simulator_costs_nothing(tmp_path, make_client):
    client = make_client(studio_settings(tmp_path, None))
    run_jobs(client, ok=1)
    [row] = client.get("/api/usage").json()["rows"]
    assert row["provider"] == "simulator" and row["images"] == 1 and row["spend"] == 0


def test_daily_spend_limit_shows_what_is_left(tmp_path, sim, make_client):
    client = make_client(studio_settings(tmp_path, sim, daily_spend_limit=1.0))
    run_jobs(client, ok=1)
    limit = client.get("/api/usage").json()["daily_limit"]
    assert limit == {
        "limit": 1.0,
        "spent_today": pytest.approx(PRICE),
        "left": pytest.approx(1.0 - PRICE),
    }
    page = client.get("/usage").text
    assert f"Spent today: <strong>${PRICE:.4f}</strong> of $1.00 a day" in page
    assert f"${1.0 - PRICE:.4f} left" in page


@pytest.fixture
def team(tmp_path, sim) -> Iterator[TestClient]:
    """Proxy mode (users named by the login proxy on 127.0.0.1); alice is an admin."""
    settings = studio_settings(tmp_path, sim, user_mode="proxy", admins=["alice"])
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        yield client


def as_user(client: TestClient, name: str) -> TestClient:
    other = TestClient(client.app, client=("127.0.0.1", 50001))
    other.headers["Remote-User"] = name
    return other


def test_admins_see_the_team_by_user_and_export_it(team):
    alice, bob = as_user(team, "alice"), as_user(team, "bob")
    run_jobs(alice, ok=1)
    run_jobs(bob, ok=2, failed=1)
    assert bob.get("/api/usage?scope=team").status_code == 403
    assert bob.get("/api/usage").json()["admin"] is False

    usage = alice.get("/api/usage?scope=team").json()
    assert usage["scope"] == "team" and usage["admin"] is True
    by_user = {r["user"]: r for r in usage["rows"]}
    assert set(by_user) == {"alice", "bob"}
    assert by_user["bob"]["jobs"] == 3 and by_user["bob"]["images"] == 2
    assert by_user["bob"]["spend"] == pytest.approx(2 * PRICE)
    assert usage["totals"]["spend"] == pytest.approx(3 * PRICE)
    assert alice.get("/api/usage").json()["totals"]["jobs"] == 1  # her own, by default

    rows = list(csv.DictReader(io.StringIO(alice.get("/usage.csv?scope=team").text)))
    assert {(r["user"], r["jobs"]) for r in rows} == {("alice", "1"), ("bob", "3")}

    page = alice.get("/usage?scope=team").text
    assert "Team usage" in page and "<td>bob</td>" in page and "Show only mine" in page
    assert "Show the whole team" in alice.get("/usage").text
    assert "Show the whole team" not in bob.get("/usage").text


def test_csv_cells_cannot_become_formulas(team):
    admin, mallory = as_user(team, "alice"), as_user(team, '=HYPERLINK("x")')
    run_jobs(mallory, ok=1)
    text = admin.get("/usage.csv?scope=team").text
    assert "'=HYPERLINK" in text


def test_status_and_usage_pages_speak_chinese_when_asked(client):
    zh = {"Accept-Language": "zh-CN,zh;q=0.9"}
    status = client.get("/status", headers=zh).text
    assert "服务商" in status and "最近的错误" in status
    usage = client.get("/usage", headers=zh).text
    assert "我的用量" in usage and "下载 CSV" in usage
    english = client.get("/usage", headers={"Accept-Language": "en"}).text
    assert "Your usage" in english and "Download CSV" in english

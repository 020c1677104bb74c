"""Crash safety with a real server process killed by SIGKILL at several points.

The studio runs as `python -m app` in a subprocess against a simulator in this process. Jobs are
posted while the server is killed and restarted; at the end every accepted job has ended
(`succeeded`, or `failed` with a reason), none is lost, and the file store holds exactly the
files the database refers to: no orphan, no half-written temp file, no result stored twice.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.upstream.simulator import SimulatorConfig, SimulatorServer
from tests.conftest import image_bytes
from tests.live import free_port

ROOT = Path(__file__).resolve().parent.parent


class StudioProcess:
    def __init__(self, data_dir: Path, sim_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(
            os.environ,
            QES_DATA_DIR=str(data_dir),
            QES_EVOLINK_API_KEY="test-key",
            QES_EVOLINK_BASE_URL=sim_url,
            QES_EVOLINK_FILES_URL=sim_url,
            QES_POLL_INTERVAL="0.1",
            QES_RETRY_MAX_DELAY="0.5",
            QES_ORPHAN_GRACE="0",
            QES_JOBS_PER_MINUTE="0",
            QES_JOBS_PER_MINUTE_PER_IP="0",
            QES_MAX_RUNNING_PER_USER="100",
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / "studio.log"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("studio did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture
def sim():
    server = SimulatorServer(SimulatorConfig(delay=0.6, api_key="test-key"))
    server.start()
    yield server
    server.stop()


def post_many(url: str, cookies: dict, start: int, count: int, accepted: list[str]) -> None:
    with httpx.Client(base_url=url, cookies=cookies, timeout=10) as c:
        for i in range(start, start + count):
            files = [
                ("images", (f"{i}.png", image_bytes(400 + i, 400, (i * 9, 30, 60)), "image/png"))
            ]
            try:
                r = c.post("/api/tasks", data={"prompt": f"job {i}"}, files=files)
            except httpx.HTTPError:
                return  # the server died under this request: it was not accepted
            if r.status_code == 202:
                accepted.append(r.json()["id"])


def test_sigkill_at_several_points_loses_nothing(tmp_path, sim):
    data = tmp_path / "data"
    studio = StudioProcess(data, sim.base_url)
    studio.start()
    cookies = dict(httpx.get(studio.url + "/").cookies)
    accepted: list[str] = []
    try:
        # 1. Killed while jobs are being posted (some mid-upload, some queued).
        poster = threading.Thread(target=post_many, args=(studio.url, cookies, 0, 8, accepted))
        poster.start()
        time.sleep(0.5)
        studio.kill()
        poster.join()

        # 2. Killed while jobs run upstream and are being polled.
        studio.start()
        post_many(studio.url, cookies, 100, 7, accepted)
        time.sleep(0.4)
        studio.kill()

        # 3. Killed again soon after a restart: submits, polls and downloads in flight.
        studio.start()
        post_many(studio.url, cookies, 200, 5, accepted)
        time.sleep(0.9)
        studio.kill()

        # 4. Killed between a submit and saving its id is the ambiguous case; keep going.
        studio.start()
        deadline = time.monotonic() + 60
        while True:
            listing = httpx.get(studio.url + "/api/tasks", cookies=cookies).json()
            if listing["running"] == 0:
                break
            assert time.monotonic() < deadline, listing
            time.sleep(0.2)
        time.sleep(0.3)  # let the start-up sweep finish
    finally:
        studio.terminate()

    assert len(accepted) >= 12
    db = sqlite3.connect(data / "studio.db")
    rows = dict(db.execute("SELECT id, status FROM tasks").fetchall())
    for task_id in accepted:
        assert task_id in rows, f"accepted job {task_id} was lost"
    assert set(rows.values()) <= {"succeeded", "failed"}
    for task_id, message in db.execute("SELECT id, error_message FROM tasks WHERE status='failed'"):
        assert message, f"job {task_id} failed without a reason"
    # Every succeeded job has exactly one result row: nothing stored twice.
    for task_id, results in db.execute(
        "SELECT t.id, COUNT(f.id) FROM tasks t LEFT JOIN task_files f"
        " ON f.task_id = t.id AND f.role = 'result' WHERE t.status='succeeded' GROUP BY t.id"
    ):
        assert results == 1, task_id
    referenced = {f"{sha}.{ext}" for sha, ext in db.execute("SELECT sha256, ext FROM task_files")}
    on_disk = {p.name for p in (data / "files").glob("*/*/*")}
    assert not [n for n in on_disk if n.startswith(".tmp-")], "half-written file left behind"
    assert on_disk == referenced, (on_disk - referenced, referenced - on_disk)
    succeeded = sum(1 for s in rows.values() if s == "succeeded")
    print(f"\naccepted {len(accepted)}, succeeded {succeeded}, failed {len(rows) - succeeded}")


def test_sigterm_stops_between_steps_and_the_job_resumes(tmp_path, sim):
    data = tmp_path / "data"
    sim.config.delay = 2.0
    studio = StudioProcess(data, sim.base_url)
    studio.start()
    cookies = dict(httpx.get(studio.url + "/").cookies)
    try:
        files = [("images", ("a.png", image_bytes(), "image/png"))]
        job = httpx.post(
            studio.url + "/api/tasks", data={"prompt": "x"}, files=files, cookies=cookies
        ).json()
        deadline = time.monotonic() + 10
        while (
            httpx.get(studio.url + f"/api/tasks/{job['id']}", cookies=cookies).json()["status"]
            != "running"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert studio.proc is not None
        studio.proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal as its exit status.
        assert studio.proc.wait(30) in (0, -signal.SIGTERM)
        log = studio.log.read_text()
        assert "Waiting for application shutdown" in log
        assert "worker stopped between steps" in log
        db = sqlite3.connect(data / "studio.db")
        status, upstream_id = db.execute(
            "SELECT status, upstream_task_id FROM tasks WHERE id=?", (job["id"],)
        ).fetchone()
        states = [s for (s,) in db.execute("SELECT state FROM attempts")]
        db.close()
        assert status == "running" and upstream_id  # nothing half-done: the id was saved
        assert states == ["running"]

        studio.start()
        deadline = time.monotonic() + 20
        while True:
            body = httpx.get(studio.url + f"/api/tasks/{job['id']}", cookies=cookies).json()
            if body["status"] == "succeeded":
                break
            assert body["status"] == "running" and time.monotonic() < deadline, body
            time.sleep(0.1)
        assert httpx.get(sim.base_url + "/_sim/stats").json()["creates"] == 1
    finally:
        studio.terminate()

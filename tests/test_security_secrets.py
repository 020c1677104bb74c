"""Provider keys never reach a page, a log line, an error message, the JSON API or the database.

Jobs run with a recognisable fake key against the simulator, through success and through every
failure the simulator can produce (the key refused with 401, server errors, task errors, broken
JSON), while every log record of every logger is captured at DEBUG (httpx and httpcore
included). Then everything a user or an operator can read is searched for the key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.upstream.simulator import SimulatorConfig, SimulatorServer
from tests.conftest import image_bytes, post_job, studio_settings, wait_for

KEY = "sk-SECRET-1234"
NEEDLES = (KEY, "SECRET-1234")


@pytest.fixture
def keyed_sim() -> Iterator[SimulatorServer]:
    server = SimulatorServer(SimulatorConfig(delay=0.05, api_key=KEY))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _configure(sim: SimulatorServer, **changes: object) -> None:
    httpx.post(f"{sim.base_url}/_sim/config", json=changes, timeout=5).raise_for_status()


def _leaks(text: str) -> bool:
    return any(needle in text for needle in NEEDLES)


def _assert_clean(response: httpx.Response, where: str) -> None:
    assert not _leaks(response.text), f"{where}: key in body"
    for name, value in response.headers.multi_items():
        assert not _leaks(value), f"{where}: key in header {name}"


def test_provider_key_appears_nowhere(tmp_path: Path, keyed_sim, make_client, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "qes", "app", "uvicorn", "sqlalchemy", "alembic"):
        caplog.set_level(logging.DEBUG, logger=name)
    seen: list[tuple[str, httpx.Response]] = []

    def studio(name: str):  # type: ignore[no-untyped-def]
        settings = studio_settings(
            tmp_path / name,
            keyed_sim,
            evolink_api_key=KEY,
            max_attempts=2,
            retry_max_delay=0.2,
            circuit_failures=100,  # keep the breaker closed: each fault must reach the provider
        )
        return settings, make_client(settings)

    def job(client, label: str, prompt: str = "make it red") -> dict:  # type: ignore[no-untyped-def]
        created = post_job(client, prompt=prompt, images=[("a.png", image_bytes())])
        seen.append((f"create {label}", created))
        assert created.status_code == 202, created.text
        done = wait_for(client, created.json()["id"])
        seen.append((f"job {label}", client.get(f"/api/tasks/{done['id']}")))
        return done

    settings, client = studio("first")
    assert job(client, "success")["status"] == "succeeded"
    _configure(keyed_sim, create_status=503)
    assert job(client, "server error")["status"] == "failed"
    _configure(keyed_sim, create_status=None, malformed_json=True)
    job(client, "malformed json")
    _configure(keyed_sim, malformed_json=False)
    assert job(client, "task error", "make it red [sim:fail=service_error]")["status"] == "failed"
    # An operator fault takes the provider out of service for a while, so one per studio.
    _configure(keyed_sim, query_status=403)
    assert job(client, "forbidden on poll")["status"] == "failed"

    _configure(keyed_sim, query_status=None, create_status=401)
    second_settings, second = studio("second")
    refused = job(second, "key refused")
    assert refused["status"] == "failed"
    assert "key" in refused["error"]["message"].lower()  # said plainly, without the key itself

    for path in (
        "/",
        "/settings",
        "/partials/history",
        "/api/tasks",
        "/api/tokens",
        "/api/status",
        "/api/usage",
        "/usage.csv",
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/docs",
        "/api/tasks/" + "0" * 16,
    ):
        for reader in (client, second):
            seen.append((path, reader.get(path)))
    for where, response in seen:
        _assert_clean(response, where)

    # Not in any log record, its message, arguments or traceback.
    formatter = logging.Formatter("%(name)s %(message)s")
    # The capture works: the studio's HTTP client and the worker's operator alert are in it.
    names = {r.name for r in caplog.records}
    assert "httpx" in names and any(n.startswith("httpcore") for n in names), names
    assert any(r.name.startswith("qes") and r.levelno >= logging.ERROR for r in caplog.records)
    for record in caplog.records:
        text = formatter.format(record) + repr(record.args)
        assert not _leaks(text), f"key in a log line of {record.name}: {text[:300]}"
        # Logs name users and jobs, not image contents.
        assert "\x89PNG" not in text and not re.search(r"base64,[A-Za-z0-9+/]{200}", text)

    # Not stored in the database either (the WAL file included).
    for data_dir in (settings.data_dir, second_settings.data_dir):
        for db_file in data_dir.glob("studio.db*"):
            assert KEY.encode() not in db_file.read_bytes(), db_file.name

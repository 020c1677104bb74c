"""Shared fixtures: a real simulator server, the real app with its real SQLite file, images."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from app.upstream.simulator import SimulatorConfig, SimulatorServer

TERMINAL = {"succeeded", "failed", "canceled"}


def image_bytes(
    width: int = 512,
    height: int = 400,
    color: tuple[int, int, int] = (200, 40, 40),
    fmt: str = "PNG",
) -> bytes:
    img = Image.new("RGB", (width, height), color)
    # A second colour block so an edit is visible in more than one place.
    img.paste((20, 120, 220), (0, 0, width // 2, height // 2))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    server = SimulatorServer(SimulatorConfig(delay=0.2, api_key="test-key"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def studio_settings(tmp_path: Path, sim: SimulatorServer | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "poll_interval": 0.05,
        "retry_max_delay": 0.5,
        "jobs_per_minute": 0,
        "jobs_per_minute_per_ip": 0,
        "max_running_per_user": 20,
        "simulator_delay": 0.2,
    }
    if sim is not None:
        values.update(
            evolink_api_key="test-key",
            evolink_base_url=sim.base_url,
            evolink_files_url=sim.base_url,
        )
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Start the real app (lifespan, worker, migrations) on a settings object; closed at the end."""
    clients: list[TestClient] = []

    def make(settings: Settings) -> TestClient:
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def client(
    tmp_path: Path, sim: SimulatorServer, make_client: Callable[..., TestClient]
) -> TestClient:
    return make_client(studio_settings(tmp_path, sim))


def post_job(
    client: httpx.Client | TestClient,
    prompt: str = "make the shirt red",
    images: list[tuple[str, bytes]] | None = None,
    **fields: str,
) -> httpx.Response:
    images = images if images is not None else [("photo.png", image_bytes())]
    files = [("images", (name, data, "application/octet-stream")) for name, data in images]
    return client.post("/api/tasks", data={"prompt": prompt, **fields}, files=files)


def wait_for(
    client: httpx.Client | TestClient, task_id: str, timeout: float = 20.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/api/tasks/{task_id}").json()
        if body.get("status") in TERMINAL:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"job {task_id} did not end in {timeout}s: {body}")
        time.sleep(0.05)


def wait_until_running(
    client: httpx.Client | TestClient, task_id: str, timeout: float = 10.0
) -> None:
    """Wait until the job has been handed to a provider (its upstream task id is saved)."""
    deadline = time.monotonic() + timeout
    while client.get(f"/api/tasks/{task_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, f"job {task_id} never started running"
        time.sleep(0.02)


def stored_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "files").glob("*/*/*") if not p.name.startswith("."))

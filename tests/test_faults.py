"""Every fault class of an upstream, injected into real simulator servers: the job still
succeeds on the same or the next provider, or fails with the right reason. Never lost."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.upstream.evolink import EvoLinkProvider
from app.upstream.simulator import SimulatorConfig, SimulatorServer
from tests.conftest import post_job, studio_settings, wait_for, wait_until_running

FAST = httpx.Timeout(connect=1.0, read=1.0, write=1.0, pool=1.0)


@pytest.fixture
def sims() -> Iterator[tuple[SimulatorServer, SimulatorServer]]:
    a = SimulatorServer(SimulatorConfig(delay=0.1, api_key="key-a"))
    b = SimulatorServer(SimulatorConfig(delay=0.1, api_key="key-b"))
    a.start()
    b.start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def provider(sim: SimulatorServer, name: str, price: float, key: str) -> EvoLinkProvider:
    return EvoLinkProvider(
        api_key=key,
        base_url=sim.base_url,
        files_url=sim.base_url,
        price=price,
        name=name,
        timeout=FAST,
    )


@pytest.fixture
def studio(
    tmp_path: Path, sims: tuple[SimulatorServer, SimulatorServer]
) -> Callable[..., TestClient]:
    """The app with two providers: 'cheap' (simulator a) and 'backup' (simulator b)."""
    from app.main import create_app

    made: list[TestClient] = []

    def make(two: bool = True, **overrides: object) -> TestClient:
        a, b = sims
        providers = [provider(a, "cheap", 0.01, "key-a")]
        if two:
            providers.append(provider(b, "backup", 0.02, "key-b"))
        settings = studio_settings(
            tmp_path, None, circuit_cooldown=0.5, poll_interval=0.05, **overrides
        )
        client = TestClient(create_app(settings, providers=providers))
        client.__enter__()
        made.append(client)
        return client

    yield make
    for client in made:
        client.__exit__(None, None, None)


def stats(sim: SimulatorServer) -> dict[str, int]:
    return httpx.get(sim.base_url + "/_sim/stats").json()


def attempts(job: dict) -> list[tuple[str, str, str | None]]:
    return [(a["provider"], a["state"], (a["error"] or {}).get("code")) for a in job["attempts"]]


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"create_status": 500, "create_fail_count": 1}, "upstream_error"),
        ({"create_status": 503, "create_fail_count": 1}, "upstream_unavailable"),
        ({"create_status": 429, "create_fail_count": 1}, "upstream_rate_limited"),
        ({"task_error": "service_error", "task_error_count": 1}, "service_error"),
        ({"task_error": "resource_exhausted", "task_error_count": 1}, "resource_exhausted"),
        ({"task_error": "service_unavailable", "task_error_count": 1}, "service_unavailable"),
        ({"task_error": "generation_timeout", "task_error_count": 1}, "generation_timeout"),
    ],
    ids=[
        "5xx",
        "503-no-channel",
        "429",
        "service_error",
        "resource_exhausted",
        "service_unavailable",
        "generation_timeout",
    ],
)
def test_retryable_fault_is_retried_on_the_same_provider(studio, sims, fault, code):
    a, _ = sims
    a.config.update(fault)
    client = studio(two=False)
    done = wait_for(client, post_job(client).json()["id"])
    assert done["status"] == "succeeded", done
    assert attempts(done) == [("cheap", "failed", code), ("cheap", "succeeded", None)]


def test_429_waits_for_retry_after(studio, sims):
    a, _ = sims
    a.config.update({"create_status": 429, "create_fail_count": 1})
    client = studio(two=False, retry_max_delay=5)
    job = post_job(client).json()
    done = wait_for(client, job["id"])
    first, second = done["attempts"]
    # The simulator says Retry-After: 1; the second try did not come sooner.
    from datetime import datetime

    gap = datetime.fromisoformat(second["started_at"][:-1]) - datetime.fromisoformat(
        first["started_at"][:-1]
    )
    assert gap.total_seconds() >= 0.9


def test_connection_error_moves_to_the_next_provider(tmp_path, sims):
    from app.main import create_app
    from tests.live import free_port

    _, b = sims
    dead = EvoLinkProvider(
        api_key="x",
        base_url=f"http://127.0.0.1:{free_port()}",
        files_url=f"http://127.0.0.1:{free_port()}",
        price=0.001,
        name="dead",
        timeout=FAST,
    )
    settings = studio_settings(tmp_path, None, max_attempts=2, retry_max_delay=0.2)
    with TestClient(
        create_app(settings, providers=[dead, provider(b, "backup", 0.02, "key-b")])
    ) as c:
        done = wait_for(c, post_job(c).json()["id"])
    assert done["status"] == "succeeded"
    assert done["provider"] == "backup"
    assert [x[:2] for x in attempts(done)] == [
        ("dead", "failed"),
        ("dead", "failed"),
        ("backup", "succeeded"),
    ]
    assert attempts(done)[0][2] == "upstream_unreachable"


def test_timeout_while_polling_keeps_following_the_same_task(studio, sims):
    a, _ = sims
    a.config.update({"delay": 0.5})
    client = studio(two=False)
    job = post_job(client).json()
    wait_until_running(client, job["id"])
    a.config.update({"hang": True})
    time.sleep(1.5)  # at least one poll times out
    a.config.update({"hang": False})
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded"
    assert stats(a)["creates"] == 1  # not sent twice


@pytest.mark.parametrize(
    ("fault", "fragment"),
    [
        ({"hang": True}, "did not answer in time"),
        ({"drop_create_response": True, "drop_create_count": 1}, "answer was lost"),
        ({"malformed_json": True}, "not valid JSON"),
    ],
    ids=["create-timeout", "answer-lost", "malformed-json"],
)
def test_ambiguous_create_is_never_sent_twice(studio, sims, fault, fragment):
    a, b = sims
    a.config.update(fault)
    client = studio()
    done = wait_for(client, post_job(client).json()["id"])
    a.config.update({"hang": False, "malformed_json": False})
    assert done["status"] == "failed"
    assert done["error"]["code"] == "submit_unknown"
    assert "cannot be billed twice" in done["error"]["message"]
    assert fragment in done["error"]["message"] or fragment in str(done["attempts"])
    assert stats(a)["creates"] <= 1 and stats(b)["creates"] == 0


def test_malformed_json_while_polling_is_retried(studio, sims):
    a, _ = sims
    a.config.update({"delay": 0.4})
    client = studio(two=False)
    job = post_job(client).json()
    wait_until_running(client, job["id"])
    a.config.update({"malformed_json": True})
    time.sleep(0.3)
    a.config.update({"malformed_json": False})
    assert wait_for(client, job["id"])["status"] == "succeeded"


@pytest.mark.parametrize(
    ("fault", "code", "fragment"),
    [
        ({"task_error": "content_policy_violation"}, "content_policy_violation", "safety filter"),
        ({"task_error": "invalid_parameters"}, "invalid_parameters", "refused the request"),
        ({"task_error": "image_processing_error"}, "image_processing_error", "could not read"),
    ],
    ids=["content-policy", "invalid-parameters", "bad-image"],
)
def test_final_error_ends_the_job_with_the_reason(studio, sims, fault, code, fragment):
    a, b = sims
    a.config.update(fault)
    client = studio()
    done = wait_for(client, post_job(client).json()["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == code
    assert fragment in done["error"]["message"]
    assert stats(b)["creates"] == 0  # the input is at fault: no other provider is paid for it


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, "upstream_unauthorized"), (402, "upstream_no_credit"), (403, "upstream_forbidden")],
)
def test_operator_error_skips_the_provider_and_shows_on_status(studio, sims, status, code, caplog):
    a, b = sims
    a.config.update({"create_status": status})
    client = studio()
    first = wait_for(client, post_job(client, "one").json()["id"])
    assert first["status"] == "succeeded" and first["provider"] == "backup"
    assert attempts(first)[0] == ("cheap", "skipped", code)
    assert any("an administrator must act" in r.getMessage() for r in caplog.records)
    # The next job does not even try the disabled provider.
    second = wait_for(client, post_job(client, "two").json()["id"])
    assert [x[0] for x in attempts(second)] == ["backup"]
    assert stats(a)["creates"] == 1
    status_page = client.get("/api/status").json()["providers"]
    cheap = next(p for p in status_page if p["name"] == "cheap")
    assert cheap["state"] == "disabled" and cheap["last_error"]
    assert "disabled" in client.get("/status").text


def test_operator_error_with_no_other_provider_fails_in_plain_words(studio, sims):
    a, _ = sims
    a.config.update({"create_status": 402})
    client = studio(two=False)
    done = wait_for(client, post_job(client).json()["id"])
    assert done["status"] == "failed"
    assert done["error"]["message"] == "The studio's account at the provider has no credit left."
    assert client.get("/readyz").status_code == 503


def test_lost_task_is_sent_again_then_fails_with_reason(studio, sims):
    a, _ = sims
    a.config.update({"lose_task": True})
    client = studio(two=False, max_attempts=2)
    done = wait_for(client, post_job(client).json()["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "task_not_found"
    assert stats(a)["creates"] == 2


def test_job_deadline_ends_a_stuck_job(studio, sims):
    a, _ = sims
    a.config.update({"delay": 60})
    client = studio(two=False, job_timeout=1.0)
    done = wait_for(client, post_job(client).json()["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "timeout"
    assert done["error"]["message"].startswith("Timed out upstream")


def test_expired_result_link_says_so(studio, sims):
    a, _ = sims
    a.config.update({"result_ttl": 0.0})
    client = studio(two=False)
    done = wait_for(client, post_job(client).json()["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "result_expired"
    assert "expire after 24 hours" in done["error"]["message"]


def test_cheaper_provider_down_then_back(studio, sims):
    a, b = sims
    a.config.update({"create_status": 503})
    client = studio(max_attempts=1)
    served = []
    for i in range(4):
        done = wait_for(client, post_job(client, f"down {i}").json()["id"])
        assert done["status"] == "succeeded"
        served.append(done["provider"])
    assert served == ["backup"] * 4
    # After the threshold the circuit is open: 'cheap' is not even tried any more.
    assert stats(a)["creates"] == 3
    assert client.get("/api/status").json()["providers"][0]["state"] in ("open", "half-open")

    a.config.update({"create_status": None})
    time.sleep(0.6)  # the circuit's cooldown: the next job is the probe
    back = [
        wait_for(client, post_job(client, f"up {i}").json()["id"])["provider"] for i in range(3)
    ]
    assert back == ["cheap"] * 3
    assert client.get("/api/status").json()["providers"][0]["state"] == "healthy"


def test_key_refused_while_following_never_sends_the_job_elsewhere(studio, sims):
    a, b = sims
    a.config.update({"delay": 1.0})
    client = studio()
    job = post_job(client).json()
    wait_until_running(client, job["id"])
    a.config.update({"api_key": "rotated"})  # our key is refused from now on
    time.sleep(0.8)
    state = client.get(f"/api/tasks/{job['id']}").json()
    assert state["status"] == "running" and state["provider"] == "cheap"
    assert stats(b)["creates"] == 0  # not paid for twice
    a.config.update({"api_key": "key-a"})
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded" and done["provider"] == "cheap"
    assert stats(a)["creates"] == 1 and stats(b)["creates"] == 0

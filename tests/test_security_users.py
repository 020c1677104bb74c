"""Users kept apart, in both user modes, through the real app.

Anonymous mode runs on the TestClient (two cookie jars). Proxy mode needs a real TCP peer
address, which the TestClient does not have (its peer is the string "testclient"), so it runs
on a real uvicorn server on 127.0.0.1 (tests/live.py), started the way ``python -m app`` starts
it: without uvicorn's X-Forwarded-For rewriting, so the peer the studio checks against
QES_TRUSTED_PROXIES is the TCP peer.

Every route that takes a job id is tried by the other user and must answer exactly what it
answers for an id that does not exist: same status, same body.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner

from app import auth
from app.config import Settings
from app.links import LinkSigner
from app.main import create_app
from tests.conftest import image_bytes, post_job, studio_settings, wait_for
from tests.live import LiveServer

Client = httpx.Client | TestClient

# Every route that names a job, with the method it takes. Unsafe ones are sent the way the page
# sends them (HTMX, same origin), so the CSRF guard lets them through to the ownership check.
JOB_ROUTES = [
    ("GET", "/api/tasks/{id}"),
    ("DELETE", "/api/tasks/{id}"),
    ("POST", "/api/tasks/{id}/retry"),
    ("GET", "/files/{id}/inputs/0"),
    ("GET", "/files/{id}/results/0"),
    ("GET", "/files/{id}/inputs/0/thumb"),
    ("GET", "/files/{id}/results/0/thumb"),
    ("GET", "/partials/tasks/{id}/qr.svg"),
    ("DELETE", "/partials/tasks/{id}"),
    ("POST", "/partials/tasks/{id}/retry"),
]
PAGE_HEADERS = {"HX-Request": "true", "Sec-Fetch-Site": "same-origin"}


def _request(client: Client, method: str, path: str) -> httpx.Response:
    headers = PAGE_HEADERS if path.startswith("/partials/") else {}
    return client.request(method, path, headers=headers)


def assert_hidden(owner: Client, other: Client, task_id: str) -> None:
    """``other`` can neither see, read, delete, retry nor detect the owner's job."""
    missing = secrets.token_hex(8)
    for method, route in JOB_ROUTES:
        theirs = _request(other, method, route.format(id=task_id))
        nothing = _request(other, method, route.format(id=missing))
        assert theirs.status_code == 404, (method, route, theirs.status_code, theirs.text)
        assert nothing.status_code == 404, (method, route, nothing.text)
        assert theirs.text == nothing.text, (method, route)
        assert theirs.headers["content-type"] == nothing.headers["content-type"]
    listed = other.get("/api/tasks")
    assert listed.status_code == 200
    assert task_id not in [t["id"] for t in listed.json()["tasks"]]
    assert task_id not in other.get("/partials/history").text
    # The owner's job is untouched by all of that.
    mine = owner.get(f"/api/tasks/{task_id}")
    assert mine.status_code == 200 and mine.json()["status"] == "succeeded"
    assert owner.get(f"/files/{task_id}/results/0").status_code == 200
    assert task_id in [t["id"] for t in owner.get("/api/tasks").json()["tasks"]]


def finished_job(client: Client, color: tuple[int, int, int] = (200, 40, 40)) -> str:
    created = post_job(client, images=[("mine.png", image_bytes(520, 410, color))])
    assert created.status_code == 202, created.text
    task_id = created.json()["id"]
    assert wait_for(client, task_id)["status"] == "succeeded"
    return task_id


def bearer(base: Client, token: str) -> httpx.Client:
    """A script's client: only the token, no cookie, no proxy header."""
    if isinstance(base, TestClient):
        return TestClient(base.app, headers={"Authorization": f"Bearer {token}"})
    return httpx.Client(base_url=str(base.base_url), headers={"Authorization": f"Bearer {token}"})


def check_tokens(alice: Client, bob: Client) -> None:
    """Tokens act as their owner only, and a revoked one stops working on the next request."""
    alice_job, bob_job = finished_job(alice), finished_job(bob, (10, 200, 10))
    made = alice.post("/api/tokens", json={"name": "alice script"})
    assert made.status_code == 201, made.text
    alice_token = made.json()
    bob_token = bob.post("/api/tokens", json={"name": "bob script"}).json()
    assert alice_token["token"].startswith(auth.TOKEN_PREFIX)

    # Not used as context managers: entering a TestClient would run the app's lifespan again.
    script_a, b = bearer(alice, alice_token["token"]), bearer(bob, bob_token["token"])
    try:
        ids = [t["id"] for t in script_a.get("/api/tasks").json()["tasks"]]
        assert alice_job in ids and bob_job not in ids
        assert script_a.get(f"/files/{alice_job}/inputs/0").status_code == 200
        assert_hidden(bob, script_a, bob_job)
        assert_hidden(alice, b, alice_job)
        # Tokens are per user: bob cannot see or revoke alice's.
        assert alice_token["id"] not in [t["id"] for t in bob.get("/api/tokens").json()["tokens"]]
        assert bob.delete(f"/api/tokens/{alice_token['id']}").status_code == 404
        # A token cannot mint or revoke tokens (that is the settings page's job).
        assert script_a.post("/api/tokens", json={"name": "x"}).status_code == 403
        assert script_a.delete(f"/api/tokens/{alice_token['id']}").status_code == 403
        assert script_a.get("/api/tasks").status_code == 200

        assert alice.delete(f"/api/tokens/{alice_token['id']}").status_code == 204
        refused = script_a.get("/api/tasks")
        assert refused.status_code == 401
        assert "revoked" in refused.json()["error"]["message"]
        assert script_a.get(f"/files/{alice_job}/inputs/0").status_code == 401
        assert post_job(script_a).status_code == 401
        # Bob's token is unaffected.
        assert b.get("/api/tasks").status_code == 200
    finally:
        script_a.close()
        b.close()


# --- anonymous mode -----------------------------------------------------------------------------


def test_anonymous_users_cannot_reach_each_others_jobs(client: TestClient):
    other = TestClient(client.app)
    mine = finished_job(client)
    theirs = finished_job(other, (10, 200, 10))
    assert_hidden(client, other, mine)
    assert_hidden(other, client, theirs)


def test_anonymous_tokens_are_per_user_and_revoked_at_once(client: TestClient):
    check_tokens(client, TestClient(client.app))


def test_forged_or_foreign_session_cookie_is_a_new_visitor(client: TestClient):
    mine = finished_job(client)
    forged = TestClient(client.app, cookies={auth.SESSION_COOKIE: "a-0123456789abcdef.forged"})
    response = forged.get(f"/api/tasks/{mine}")
    assert response.status_code == 404
    # A cookie signed with another key is no better.
    other_key = auth.SessionCodec("another-secret").dumps("a-whoever")
    foreign = TestClient(client.app, cookies={auth.SESSION_COOKIE: other_key})
    assert foreign.get(f"/api/tasks/{mine}").status_code == 404


def test_unknown_bearer_value_is_refused_not_taken_for_a_visitor(client: TestClient):
    for value in ("Bearer qes_not-a-real-token", "Bearer sk-something-else", "Bearer"):
        script = TestClient(client.app, headers={"Authorization": value})
        response = script.get("/api/tasks")
        assert response.status_code == 401, value
        assert "token" in response.json()["error"]["message"]


# --- signed links -------------------------------------------------------------------------------


def _signed_url(client: Client, task_id: str) -> str:
    qr = client.get(f"/partials/tasks/{task_id}/qr.svg")
    assert qr.status_code == 200
    return qr.headers["x-signed-url"]


def test_signed_links_work_without_a_session_and_tampering_is_404(client: TestClient):
    task_id = finished_job(client)
    url = _signed_url(client, task_id)
    path = httpx.URL(url).path
    stranger = TestClient(client.app)
    response = stranger.get(path)
    assert response.status_code == 200
    own = client.get(f"/files/{task_id}/results/0")
    assert response.content == own.content
    assert response.headers["content-type"] == own.headers["content-type"]
    assert response.headers["content-type"] in ("image/png", "image/jpeg", "image/webp")
    assert response.headers["x-content-type-options"] == "nosniff"

    _, _, token, name = path.split("/", 3)
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (flipped, token[:-6], token + "x", "not-a-token"):
        tampered = stranger.get(f"/s/{bad}/{name}")
        assert tampered.status_code == 404, bad
        assert tampered.json()["error"]["code"] == "not_found"
    # A valid signature for another file's name still only serves the file it grants.
    assert stranger.get(f"/s/{token}/../../secret_key").status_code == 404
    # Deleting the job kills its links.
    assert client.delete(f"/api/tasks/{task_id}").status_code == 204
    assert stranger.get(path).status_code == 404


def test_signed_links_expire_after_the_link_ttl(tmp_path, sim, make_client, monkeypatch):
    settings = studio_settings(tmp_path, sim, link_ttl=60, secret_key="k" * 40)
    client = make_client(settings)
    task_id = finished_job(client)
    signer = LinkSigner(settings.signing_key)
    fresh = signer.sign(task_id, "result", 0)
    # The same grant, signed as if 61 s ago and 2 h ago: past QES_LINK_TTL.
    real_now = int(time.time())
    old = {}
    for age in (61, 7200):
        monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self, a=age: real_now - a)
        old[age] = signer.sign(task_id, "result", 0)
    monkeypatch.undo()
    stranger = TestClient(client.app)
    assert stranger.get(f"/s/{fresh}/result-1.png").status_code == 200
    for age, token in old.items():
        expired = stranger.get(f"/s/{token}/result-1.png")
        assert expired.status_code == 404, age
        assert "expired" in expired.json()["error"]["message"]


# --- proxy mode ---------------------------------------------------------------------------------


@contextmanager
def live_studio(settings: Settings) -> Iterator[LiveServer]:
    """The app on real uvicorn, configured like ``python -m app`` (no X-Forwarded-For rewrite)."""
    server = LiveServer(create_app(settings))
    server.server.config.proxy_headers = False
    with server:
        yield server


def proxy_client(server: LiveServer, user: str | None, **headers: str) -> httpx.Client:
    if user is not None:
        headers["Remote-User"] = user
    return httpx.Client(base_url=server.url, headers=headers, timeout=20)


def test_proxy_users_cannot_reach_each_others_jobs(tmp_path, sim):
    settings = studio_settings(tmp_path, sim, user_mode="proxy", trusted_proxies="127.0.0.1")
    with (
        live_studio(settings) as server,
        proxy_client(server, "alice") as alice,
        proxy_client(server, "bob") as bob,
    ):
        mine, theirs = finished_job(alice), finished_job(bob, (10, 200, 10))
        assert_hidden(alice, bob, mine)
        assert_hidden(bob, alice, theirs)
        # The same name is the same user on every request, cookie or not.
        with proxy_client(server, "alice") as again:
            assert mine in [t["id"] for t in again.get("/api/tasks").json()["tasks"]]
        # No header from the trusted proxy: not signed in.
        with proxy_client(server, None) as nobody:
            refused = nobody.get("/api/tasks")
            assert refused.status_code == 401
            assert "Remote-User" in refused.json()["error"]["message"]
            assert nobody.get("/").status_code == 401


def test_proxy_tokens_are_per_user_and_revoked_at_once(tmp_path, sim):
    settings = studio_settings(tmp_path, sim, user_mode="proxy", trusted_proxies="127.0.0.1")
    with (
        live_studio(settings) as server,
        proxy_client(server, "alice") as alice,
        proxy_client(server, "bob") as bob,
    ):
        check_tokens(alice, bob)


def test_proxy_passes_its_own_authorization_through_harmlessly(tmp_path, sim):
    """A login proxy that forwards its own bearer token (an OIDC id token) still names the user."""
    settings = studio_settings(tmp_path, sim, user_mode="proxy", trusted_proxies="127.0.0.1")
    with (
        live_studio(settings) as server,
        proxy_client(server, "carol", Authorization="Bearer eyJhbGciOi.proxy.token") as carol,
    ):
        task_id = finished_job(carol)
        with proxy_client(server, "carol") as plain:
            assert plain.get(f"/api/tasks/{task_id}").status_code == 200


def test_proxy_header_from_an_untrusted_address_is_ignored(tmp_path, sim, caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="qes.auth")
    monkeypatch.setattr(auth, "_warned_peers", set())  # warned once per address per process
    settings = studio_settings(tmp_path, sim, user_mode="proxy", trusted_proxies="10.9.9.9/32")
    with live_studio(settings) as server:
        attempts = [
            {},
            {"X-Forwarded-For": "10.9.9.9"},  # claiming to be the proxy does not make it so
            {"X-Real-IP": "10.9.9.9", "Forwarded": "for=10.9.9.9"},
        ]
        for extra in attempts:
            with proxy_client(server, "mallory", **extra) as mallory:
                listed = mallory.get("/api/tasks")
                assert listed.status_code == 401, extra
                assert "did not come through" in listed.json()["error"]["message"]
                assert mallory.get("/").status_code == 401
                created = post_job(mallory)
                assert created.status_code == 401
                assert created.json()["error"]["code"] == "unauthorized"
        assert not list((settings.data_dir / "files").rglob("*.*"))
    assert any(
        "ignored the Remote-User header from 127.0.0.1" in r.getMessage() for r in caplog.records
    )


# --- the pieces ---------------------------------------------------------------------------------


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cidrs", "peer", "trusted"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "::ffff:127.0.0.1", True),
        ("10.0.0.0/8", "10.20.30.40", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("10.9.9.9/32", "127.0.0.1", False),
        ("fd00::/8", "fd12::1", True),
        ("127.0.0.1", "testclient", False),
        ("127.0.0.1", "", False),
        ("127.0.0.1", None, False),
    ],
)
def test_trusted_proxy_addresses(cidrs: str, peer: str | None, trusted: bool):
    assert auth.is_trusted(_settings(trusted_proxies=cidrs), peer) is trusted


def test_bearer_token_parsing():
    assert auth.bearer_token("Bearer qes_abc") == "qes_abc"
    assert auth.bearer_token("bearer   qes_abc  ") == "qes_abc"
    assert auth.bearer_token("Bearer sk-abc") is None
    assert auth.bearer_token("Basic qes_abc") is None
    assert auth.bearer_token(None) is None and auth.bearer_token("") is None


def test_proxy_names_are_read_as_utf8_text():
    sent_as_latin1 = "José".encode().decode("latin-1")  # how a header value reaches us
    assert auth.clean_proxy_name(sent_as_latin1) == "José"
    assert auth.clean_proxy_name(" bob\x00\x1b ") == "bob"
    assert auth.clean_proxy_name(None) == ""

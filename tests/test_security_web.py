"""The web layer: CSRF on every unsafe route, cookies, and the security headers on every kind of
response (the page, the JSON API, a stored file, a refusal)."""

from __future__ import annotations

import re
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import auth
from app.main import create_app
from app.upstream.simulator import SimulatorConfig, SimulatorServer
from tests.conftest import image_bytes, post_job, studio_settings, wait_for

CROSS_SITE = {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
SAME_SITE = {"Sec-Fetch-Site": "same-site", "Origin": "http://evil.testserver"}
OTHER_ORIGIN_ONLY = {"Origin": "https://evil.example"}  # an older browser: no Sec-Fetch-*
NULL_ORIGIN = {"Origin": "null"}  # a sandboxed iframe or a data: page
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}
TYPED = {"Sec-Fetch-Site": "none"}  # typed in the address bar or a bookmark
REFUSED_HEADERS = {
    "cross-site": CROSS_SITE,
    "same-site": SAME_SITE,
    "other-origin": OTHER_ORIGIN_ONLY,
    "null-origin": NULL_ORIGIN,
}


@dataclass
class Ctx:
    client: TestClient
    job: str
    token_id: str
    token: str


def _job_form() -> dict[str, Any]:
    return {
        "data": {"prompt": "make it red"},
        "files": [("images", ("a.png", image_bytes(), "image/png"))],
    }


# Every state-changing route of the studio: (method, path, request kwargs), built from a context
# holding a real job and token of the cookie's user, so a refusal can be shown to change nothing.
UNSAFE: dict[str, Callable[[Ctx], tuple[str, str, dict[str, Any]]]] = {
    "create job": lambda c: ("POST", "/api/tasks", _job_form()),
    "delete job": lambda c: ("DELETE", f"/api/tasks/{c.job}", {}),
    "retry job": lambda c: ("POST", f"/api/tasks/{c.job}/retry", {}),
    "create token": lambda c: ("POST", "/api/tokens", {"json": {"name": "evil"}}),
    "revoke token": lambda c: ("DELETE", f"/api/tokens/{c.token_id}", {}),
    "delete from history": lambda c: ("DELETE", f"/partials/tasks/{c.job}", {}),
    "retry from history": lambda c: ("POST", f"/partials/tasks/{c.job}/retry", {}),
    "prompt count": lambda c: ("POST", "/partials/prompt-count", {"data": {"prompt": "x"}}),
    "language": lambda c: ("POST", "/lang", {"data": {"lang": "zh", "next": "/"}}),
    "kiosk reset": lambda c: ("POST", "/kiosk/reset", {}),
    "gateway create": lambda c: ("POST", "/v1/images/generations", {"json": {"model": "x"}}),
}


def _counts(client: TestClient) -> dict[str, int]:
    data_dir = client.app.state.studio.settings.data_dir
    db = sqlite3.connect(data_dir / "studio.db")
    try:
        return {
            t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("tasks", "task_files", "api_tokens", "users")
        }
    finally:
        db.close()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    """One app, one finished job and one token for the module: every check below either is
    refused (and must change nothing) or aims at ids that do not exist."""
    root = tmp_path_factory.mktemp("web")
    sim = SimulatorServer(SimulatorConfig(delay=0.05, api_key="test-key"))
    sim.start()
    client = TestClient(create_app(studio_settings(root, sim, simulator_delay=0.05)))
    client.__enter__()
    try:
        job = post_job(client).json()["id"]
        wait_for(client, job)
        token = client.post("/api/tokens", json={"name": "mine"}).json()
        yield Ctx(client, job, token["id"], token["token"])
    finally:
        client.__exit__(None, None, None)
        sim.stop()


def test_every_unsafe_route_is_listed_here(client: TestClient):
    """New state-changing API routes must join UNSAFE (page routes are listed by hand)."""
    routes = [build(_dummy()) for build in UNSAFE.values()]
    listed = {(m, re.sub(r"/0{16}(?=/|$)", "/{}", p)) for m, p, _ in routes}
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method in operations:
            if method.upper() in ("GET", "HEAD", "OPTIONS"):
                continue
            if path.startswith("/callbacks/"):
                continue  # server-to-server, authenticated by a secret in its URL
            key = (method.upper(), re.sub(r"\{[^}]+\}", "{}", path))
            assert key in listed, f"{key} is not covered by the CSRF tests"


def _dummy() -> Ctx:
    return Ctx(None, "0" * 16, "0" * 16, "")  # type: ignore[arg-type]


@pytest.mark.parametrize("route", list(UNSAFE))
def test_cross_site_browser_requests_are_refused_and_change_nothing(ctx: Ctx, route):
    method, path, kwargs = UNSAFE[route](ctx)
    for browser, headers in REFUSED_HEADERS.items():
        before = _counts(ctx.client)
        response = ctx.client.request(method, path, headers=headers, **kwargs)
        _assert_refused(response, path)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert _counts(ctx.client) == before, browser
        assert ctx.client.get(f"/api/tasks/{ctx.job}").json()["status"] == "succeeded"
        assert ctx.token_id in [t["id"] for t in ctx.client.get("/api/tokens").json()["tokens"]]


def _assert_refused(response, path: str) -> None:  # type: ignore[no-untyped-def]
    """Cookie routes refuse a cross-site request (CSRF); the /v1 gateway, which no cookie opens,
    answers it with its own 401 in EvoLink's shape."""
    error = response.json()["error"]
    if path.startswith("/v1/"):
        assert response.status_code == 401, response.text
        assert error["type"] == "authentication_error"
        return
    assert response.status_code == 403, (path, response.text)
    assert error["code"] == "cross_site_request"
    assert "another site" in error["message"]


def _not_refused(response) -> None:  # type: ignore[no-untyped-def]
    if response.status_code == 403:
        assert response.json()["error"]["code"] != "cross_site_request", response.text


@pytest.mark.parametrize("route", list(UNSAFE))
def test_same_origin_typed_and_non_browser_requests_pass_the_guard(ctx: Ctx, route):
    # Against ids that do not exist, so that passing the guard destroys nothing.
    missing = Ctx(ctx.client, secrets.token_hex(8), secrets.token_hex(8), ctx.token)
    method, path, kwargs = UNSAFE[route](missing)
    for headers in (SAME_ORIGIN, TYPED, {}):
        _not_refused(ctx.client.request(method, path, headers=headers, **kwargs))


@pytest.mark.parametrize("route", list(UNSAFE))
def test_personal_token_requests_are_exempt_but_foreign_bearers_are_not(ctx: Ctx, route):
    missing = Ctx(ctx.client, secrets.token_hex(8), secrets.token_hex(8), ctx.token)
    method, path, kwargs = UNSAFE[route](missing)
    script = TestClient(ctx.client.app)  # no cookie: the token alone
    ours = {"Authorization": f"Bearer {ctx.token}", **CROSS_SITE}
    _not_refused(script.request(method, path, headers=ours, **kwargs))
    # A bearer value that is not one of our tokens authenticates nothing here, so it earns no
    # exemption (a login proxy may add its own to every request, cross-site ones included).
    foreign = {"Authorization": "Bearer eyJhbGciOiJub25lIn0.e30.", **CROSS_SITE}
    _assert_refused(ctx.client.request(method, path, headers=foreign, **kwargs), path)


def test_csrf_applies_in_proxy_mode_even_with_the_proxys_own_bearer(tmp_path, sim, make_client):
    # The TestClient's peer is "testclient"; trusting "0.0.0.0/0" would not match it either, so
    # this checks only the guard, which runs before anyone is identified.
    client = make_client(studio_settings(tmp_path, sim, user_mode="proxy"))
    headers = {"Remote-User": "alice", "Authorization": "Bearer proxy-jwt", **CROSS_SITE}
    response = client.post("/api/tokens", json={"name": "x"}, headers=headers)
    assert response.status_code == 403


# --- cookies ------------------------------------------------------------------------------------


def _session_cookie(response) -> str:  # type: ignore[no-untyped-def]
    cookies = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    found = [c for c in cookies if c.startswith(auth.SESSION_COOKIE + "=")]
    assert found, cookies
    return found[0]


def test_session_cookie_is_httponly_lax_and_not_secure_over_http(client: TestClient):
    cookie = _session_cookie(client.get("/"))
    attrs = [a.strip().lower() for a in cookie.split(";")]
    assert "httponly" in attrs and "samesite=lax" in attrs and "path=/" in attrs
    assert "secure" not in attrs


def test_session_cookie_is_secure_over_https(tmp_path, sim, make_client):
    app_client = make_client(studio_settings(tmp_path, sim))
    https = TestClient(app_client.app, base_url="https://testserver")
    cookie = _session_cookie(https.get("/"))
    attrs = [a.strip().lower() for a in cookie.split(";")]
    assert "secure" in attrs and "httponly" in attrs and "samesite=lax" in attrs
    # Behind a TLS-terminating proxy that says so.
    proxied = TestClient(app_client.app)
    cookie = _session_cookie(proxied.get("/", headers={"X-Forwarded-Proto": "https"}))
    assert "secure" in [a.strip().lower() for a in cookie.split(";")]


def test_scripts_with_a_token_get_no_session_cookie(ctx: Ctx):
    script = TestClient(ctx.client.app, headers={"Authorization": f"Bearer {ctx.token}"})
    response = script.get("/api/tasks")
    assert response.status_code == 200
    assert "set-cookie" not in response.headers


# --- headers ------------------------------------------------------------------------------------


def _assert_security_headers(response, where: str) -> None:  # type: ignore[no-untyped-def]
    csp = response.headers.get("content-security-policy", "")
    directives = {d.strip().split(" ")[0]: d.strip() for d in csp.split(";") if d.strip()}
    assert "script-src" in directives or "default-src" in directives, where
    script_src = directives.get("script-src", directives.get("default-src"))
    assert "'unsafe-inline'" not in script_src and "'unsafe-eval'" not in script_src, where
    assert "*" not in script_src.split(), where
    assert directives.get("frame-ancestors") == "frame-ancestors 'none'", where
    assert directives.get("object-src") == "object-src 'none'", where
    assert response.headers.get("x-content-type-options") == "nosniff", where
    assert response.headers.get("referrer-policy") in (
        "same-origin",
        "no-referrer",
        "strict-origin-when-cross-origin",
    ), where
    assert response.headers.get("x-frame-options") == "DENY", where


def test_security_headers_on_page_api_files_and_errors(ctx: Ctx):
    client = ctx.client
    qr = client.get(f"/partials/tasks/{ctx.job}/qr.svg")
    signed = qr.headers["x-signed-url"].split("://", 1)[1].split("/", 1)[1]
    responses = {
        "page": client.get("/"),
        "settings page": client.get("/settings"),
        "history partial": client.get("/partials/history"),
        "api list": client.get("/api/tasks"),
        "api job": client.get(f"/api/tasks/{ctx.job}"),
        "input file": client.get(f"/files/{ctx.job}/inputs/0"),
        "result file": client.get(f"/files/{ctx.job}/results/0"),
        "thumbnail": client.get(f"/files/{ctx.job}/inputs/0/thumb"),
        "qr code": qr,
        "signed link": TestClient(client.app).get("/" + signed),
        "static": client.get("/static/app.js"),
        "not found": client.get("/api/tasks/" + "f" * 16),
        "validation error": client.post("/api/tokens", json={}),
        "cross-site refusal": client.post("/api/tokens", json={"name": "x"}, headers=CROSS_SITE),
        "too large": client.post(
            "/api/tasks",
            content=b"x",
            headers={
                "content-type": "multipart/form-data; boundary=z",
                "content-length": "99999999",
            },
        ),
    }
    for where, response in responses.items():
        assert response.status_code < 500, where
        _assert_security_headers(response, where)


def test_files_are_served_with_their_own_image_type_only(ctx: Ctx):
    client = ctx.client
    job = client.get(f"/api/tasks/{ctx.job}").json()
    for role in ("inputs", "results"):
        meta = job[role][0]
        response = client.get(f"/files/{ctx.job}/{role}/0")
        assert response.headers["content-type"] == meta["content_type"]
        assert meta["content_type"] in ("image/png", "image/jpeg", "image/webp")
        disposition = response.headers["content-disposition"]
        assert disposition.startswith("inline;") and re.fullmatch(
            r'inline; filename="[0-9a-f]{16}-[a-z]+-\d+\.(png|jpg|webp)"', disposition
        )
    thumb = client.get(f"/files/{ctx.job}/inputs/0/thumb")
    assert thumb.headers["content-type"] == "image/jpeg"


def test_stored_files_are_not_reachable_by_their_storage_path(ctx: Ctx):
    client = ctx.client
    data_dir = client.app.state.studio.settings.data_dir
    stored = next(p for p in (data_dir / "files").rglob("*.*") if not p.name.startswith("."))
    relative = stored.relative_to(data_dir).as_posix()
    sha = stored.stem
    for path in (
        f"/{relative}",
        f"/data/{relative}",
        f"/files/{sha}",
        f"/files/{stored.name}",
        f"/static/../{relative}",
        f"/static/..%2F..%2Fdata%2F{relative}",
        f"/static/%2e%2e/%2e%2e/data/{relative}",
        "/static/../data/studio.db",
        "/static/../data/secret_key",
    ):
        response = client.get(path)
        # 404, or 400 where the path happens to fit a route's shape but not its types.
        assert response.status_code in (400, 404), (path, response.status_code)
        assert stored.read_bytes() not in response.content


def test_page_has_no_inline_script(client: TestClient):
    for path in ("/", "/settings"):
        html = client.get(path).text
        for tag, body in re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S | re.I):
            if re.search(r'type="application/(ld\+)?json"', tag):
                continue  # a data block: never executed, and CSP would not let it be
            assert "src=" in tag and not body.strip(), (path, tag)
        assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I), path
        assert "javascript:" not in html.lower(), path

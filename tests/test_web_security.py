"""CSRF rule, personal API tokens, security headers."""

from __future__ import annotations

from tests.conftest import image_bytes, post_job, wait_for


def test_cross_site_browser_request_is_refused(client):
    files = [("images", ("a.png", image_bytes(), "image/png"))]
    cross = client.post(
        "/api/tasks",
        data={"prompt": "x"},
        files=files,
        headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    )
    assert cross.status_code == 403
    assert cross.json()["error"]["code"] == "cross_site_request"
    other_origin = client.post(
        "/api/tasks", data={"prompt": "x"}, files=files, headers={"Origin": "https://evil.example"}
    )
    assert other_origin.status_code == 403
    same = client.post(
        "/api/tasks",
        data={"prompt": "x"},
        files=files,
        headers={"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},
    )
    assert same.status_code == 202
    # No Sec-Fetch-Site and no Origin: not a browser, allowed.
    assert post_job(client).status_code == 202


def test_token_routes_and_bearer_use(client):
    created = client.post("/api/tokens", json={"name": "laptop script"})
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"id", "name", "token"} and body["name"] == "laptop script"
    listed = client.get("/api/tokens").json()["tokens"]
    assert [t["id"] for t in listed] == [body["id"]]
    assert "token" not in listed[0]

    import httpx

    bearer = httpx.Client(
        transport=client._transport,
        base_url="http://testserver",
        headers={"Authorization": f"Bearer {body['token']}"},
    )
    job = post_job(bearer)
    assert job.status_code == 202
    # The token acts as the cookie's user: the same history.
    assert client.get(f"/api/tasks/{job.json()['id']}").status_code == 200
    wait_for(bearer, job.json()["id"])
    # Cross-site headers do not matter with a Bearer token (no cookie is involved).
    assert bearer.get("/api/tasks", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200

    assert client.delete(f"/api/tokens/{body['id']}").status_code == 204
    refused = bearer.get("/api/tasks")
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]["message"]


def test_security_headers_on_the_page(client):
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"]
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "<script>" not in page.text  # no inline script


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"

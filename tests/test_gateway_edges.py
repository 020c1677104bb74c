"""Middleware refusals on the /v1 gateway keep EvoLink's contract."""

from __future__ import annotations

from tests.conftest import post_job


def test_oversized_gateway_body_answers_in_evolink_shape(client):
    response = client.post(
        "/v1/images/generations",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": "1000000000"},
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] and error["message"] and error["type"]


def test_cross_site_request_to_the_gateway_gets_the_gateways_401(client):
    response = client.post(
        "/v1/images/generations",
        json={"model": "qwen-image-edit", "prompt": "x", "image_urls": ["https://a.example/x.png"]},
        headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    # The page's own API keeps its CSRF refusal.
    refused = client.post(
        "/api/tasks", data={"prompt": "x"}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert refused.status_code == 403
    assert post_job(client).status_code == 202

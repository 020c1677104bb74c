"""The settings page: personal API tokens created and revoked through /api/tokens, the secret
shown once, and the token working as a Bearer token until it is revoked."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.browser import (
    browser,  # noqa: F401  (the module's Chromium)
    live_studio,
    open_page,
    shot,
)
from tests.live import LiveServer


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    with live_studio(tmp_path) as server:
        yield server


def test_create_use_and_revoke_a_token(browser: Browser, live: LiveServer):  # noqa: F811
    with open_page(browser, live.url + "/") as page:
        page.get_by_role("link", name="Settings").click()
        expect(page).to_have_url(live.url + "/settings")
        expect(page.locator("#token-list")).to_contain_text("No tokens yet.")

        page.fill("#token-name", "laptop script")
        page.get_by_role("button", name="Create token").click()
        secret_box = page.locator("#token-value")
        expect(page.locator("#token-new")).to_be_visible()
        secret = secret_box.inner_text()
        assert secret.startswith("qes_") and len(secret) > 30
        expect(page.locator("#token-list li")).to_have_count(1)
        expect(page.locator("#token-list li")).to_contain_text("laptop script")
        expect(page.locator("#token-list li")).to_contain_text("never used")
        expect(page.locator("#announce")).to_have_text("Token “laptop script” created.")
        shot(page, "desktop-en-settings")

        bearer = {"Authorization": f"Bearer {secret}"}
        assert httpx.get(live.url + "/api/tasks", headers=bearer).status_code == 200

        # Shown once: a reload lists the token without its secret.
        page.reload()
        expect(page.locator("#token-list li")).to_contain_text("laptop script")
        expect(page.locator("#token-list li")).to_contain_text("last used")
        assert secret not in page.content()
        expect(page.locator("#token-new")).to_be_hidden()

        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Revoke: laptop script").click()
        expect(page.locator("#token-list")).to_contain_text("No tokens yet.")
        expect(page.locator("#announce")).to_have_text("Token revoked.")
        assert httpx.get(live.url + "/api/tasks", headers=bearer).status_code == 401


def test_settings_page_in_chinese_and_a_refused_name(browser: Browser, live: LiveServer):  # noqa: F811
    with open_page(browser, live.url + "/settings", locale="zh-CN") as page:
        expect(page.locator("#tokens-title")).to_have_text("个人 API 令牌")
        expect(page.locator("#token-list")).to_contain_text("还没有令牌。")
        page.evaluate("document.getElementById('token-name').removeAttribute('maxlength')")
        page.fill("#token-name", "x" * 150)
        page.get_by_role("button", name="创建令牌").click()
        expect(page.locator("#token-error .error")).to_contain_text("name")
        expect(page.locator("#token-list li")).to_have_count(1)  # still only the empty note
        shot(page, "desktop-zh-settings")

"""English and 简体中文: chosen from Accept-Language, switched on the page, remembered per
browser, for every page word and every error message (the page's own, the API's refusals, and
the reason a job failed)."""

from __future__ import annotations

import re
import string
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page, expect

from app import i18n
from tests.browser import (
    browser,  # noqa: F401  (the module's Chromium)
    drop_files,
    live_studio,
    newest_job,
    open_page,
)
from tests.conftest import image_bytes, post_job, studio_settings
from tests.live import LiveServer


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    with live_studio(tmp_path) as server:
        yield server


def _cookie(page: Page, name: str) -> str | None:
    found = [c["value"] for c in page.context.cookies() if c["name"] == name]
    return found[0] if found else None


def test_switch_to_chinese_is_remembered_and_back(browser: Browser, live: LiveServer):  # noqa: F811
    with open_page(browser, live.url + "/", locale="en-US") as page:
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.locator("h1")).to_have_text("Qwen Edit Studio")
        page.get_by_role("button", name="中文").click()
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        expect(page.locator("h1")).to_have_text("Qwen 图像编辑工作室")
        expect(page.locator(".counts")).to_have_text("0 运行中 · 0 已完成 · 最多保留 20 条")
        expect(page.locator("#submit")).to_have_text("编辑")
        expect(page.get_by_role("button", name="中文")).to_have_attribute("aria-pressed", "true")
        assert _cookie(page, "lang") == "zh"

        page.reload()
        expect(page.locator("h1")).to_have_text("Qwen 图像编辑工作室")
        # The page's own messages and its presets are Chinese too.
        drop_files(page, "#drop", [("anim.gif", b"GIF89a", "image/gif")])
        expect(page.locator("#form-error .error")).to_have_text(
            '"anim.gif" 不是允许的格式(JPG、JPEG、PNG、BMP、WEBP、TIFF)。'
        )
        page.get_by_role("button", name="猫船长").click()
        assert page.locator("#prompt").input_value().startswith("一只可爱的毛茸茸的猫船长")
        expect(page.locator("#prompt-count")).to_contain_text("个 token")

        page.get_by_role("button", name="English").click()
        expect(page.locator("h1")).to_have_text("Qwen Edit Studio")
        assert _cookie(page, "lang") == "en"


def test_accept_language_chooses_chinese_without_a_cookie(browser: Browser, live: LiveServer):  # noqa: F811
    with open_page(browser, live.url + "/", locale="zh-CN") as page:
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        expect(page.locator("#new-edit")).to_have_text("新的编辑")
        expect(page.locator("#sim-banner")).to_contain_text("模拟结果")
        assert _cookie(page, "lang") is None


def test_refusals_and_failure_reasons_in_chinese(browser: Browser, live: LiveServer):  # noqa: F811
    with open_page(browser, live.url + "/", locale="zh-CN") as page:
        drop_files(page, "#drop", [("ok.png", image_bytes(400, 400), "image/png")])
        page.fill("#prompt", "红" * 2100)
        page.click("#submit")
        expect(page.locator("#form-error .error")).to_have_text(
            re.compile(r"^提示词有 \d+ 个 token,上限是 2000 个。$")
        )
        page.fill("#prompt", "make it a cat [sim:fail=content_policy_violation]")
        page.click("#submit")
        job = newest_job(page)
        expect(job).to_have_attribute("data-status", "failed", timeout=15000)
        expect(job.locator(".badge")).to_have_text("失败")
        expect(job.locator(".error")).to_have_text(
            "服务商的安全过滤拦截了这个请求。请换一个提示词或图片。"
        )
        expect(job.get_by_role("button", name="重试")).to_be_visible()
        expect(page.locator("#announce")).to_contain_text("一个编辑失败")


def test_json_errors_follow_the_callers_language(tmp_path, make_client):
    client: TestClient = make_client(studio_settings(tmp_path, None))
    tiny = [("tiny.png", image_bytes(300, 300))]

    english = post_job(client, images=tiny)
    assert english.status_code == 400
    assert english.json()["error"]["message"].startswith('image 1 ("tiny.png") is 300x300 px')
    assert "content-language" not in english.headers

    client.headers["Accept-Language"] = "zh-CN,zh;q=0.9,en;q=0.5"
    chinese = post_job(client, images=tiny)
    assert chinese.status_code == 400
    assert chinese.headers["content-language"] == "zh-CN"
    assert chinese.json()["error"] == {
        "code": "bad_dimensions",
        "message": "图 1(“tiny.png”)为 300×300 像素;每边须在 384 到 3072 像素之间。",
    }

    del client.headers["Accept-Language"]
    client.cookies.set("lang", "zh")
    empty = post_job(client, prompt="   ")
    assert empty.json()["error"]["message"] == "提示词为空:请描述想要的修改。"
    client.cookies.set("lang", "en")
    assert post_job(client, prompt="  ").json()["error"]["message"].startswith("The prompt is")


def test_language_switch_route_checks_its_input(tmp_path, make_client):
    client: TestClient = make_client(studio_settings(tmp_path, None))
    ok = client.post("/lang", data={"lang": "zh", "next": "/settings"}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/settings"
    assert "lang=zh" in ok.headers["set-cookie"]
    # Never an open redirect to another site.
    away = client.post(
        "/lang", data={"lang": "en", "next": "//evil.example/"}, follow_redirects=False
    )
    assert away.headers["location"] == "/"
    bad = client.post("/lang", data={"lang": "fr"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_language"
    assert "en, zh" in bad.json()["error"]["message"]


def test_both_languages_have_every_string_with_the_same_placeholders():
    en, zh = i18n.STRINGS["en"], i18n.STRINGS["zh"]
    assert set(en) == set(zh)
    fields = string.Formatter()
    for key in en:
        names_en = {f for _, f, _, _ in fields.parse(en[key]) if f}
        names_zh = {f for _, f, _, _ in fields.parse(zh[key]) if f}
        assert names_en == names_zh, key
    for keys in i18n.CLIENT_KEYS.values():
        assert set(keys) <= set(en)
    assert all(isinstance(i18n.ERRORS_ZH[code], str) for code in i18n.CLIENT_ERRORS)
    for preset in i18n.PRESETS:
        assert preset["en"] and preset["zh"] and preset["en_name"] and preset["zh_name"]
    ids = {p["id"] for p in i18n.PRESETS}
    assert {"background", "object", "text", "style", "compose", "cat-captain"} <= ids


def test_language_is_picked_from_cookie_then_accept_language():
    assert i18n.pick_lang(None, None) == "en"
    assert i18n.pick_lang(None, "zh-TW,zh;q=0.9") == "zh"
    assert i18n.pick_lang(None, "fr-FR,fr;q=0.9,en;q=0.8") == "en"
    assert i18n.pick_lang(None, "en;q=0.4, zh;q=0.8") == "zh"
    assert i18n.pick_lang(None, "zh;q=0, en") == "en"
    assert i18n.pick_lang("en", "zh-CN") == "en"
    assert i18n.pick_lang("xx", "zh-CN") == "zh"
    # An unknown code keeps the server's words rather than showing nothing.
    assert i18n.error_message("brand_new_code", "Plain words.", "zh") == "Plain words."

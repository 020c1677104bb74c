"""The fal.ai and DashScope adapters against the simulator over real HTTP, plus the registry.

Why against a server: each adapter's worth is that it speaks its provider's documented protocol and
classifies every answer (success, refusal, fault, lost answer) the way the worker needs; only a
server that answers in that protocol, with faults injected, shows both. The simulator records the
bodies it receives, so the tests also see how the studio's options were mapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from app.config import Settings
from app.upstream.base import InputImage, SubmitRequest, Submitted, UpstreamError, UpstreamStatus
from app.upstream.dashscope import DashScopeProvider
from app.upstream.evolink import EvoLinkProvider
from app.upstream.fal import FalProvider
from app.upstream.registry import build_providers
from app.upstream.simulator import SimulatorConfig, SimulatorServer
from tests.test_simulator import LocalHTTP, assert_inverted, sample_image

KEY = "sim-key"
T = TypeVar("T")


# --- helpers -------------------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def png_input(data: bytes | None = None, public_url: str | None = None) -> InputImage:
    return InputImage(
        data=data if data is not None else sample_image(),
        content_type="image/png",
        ext="png",
        public_url=public_url,
    )


def job(
    *images: InputImage, model: str = "qwen-image-edit", prompt: str = "invert it", **options: Any
) -> SubmitRequest:
    return SubmitRequest(
        model=model, prompt=prompt, images=list(images) or [png_input()], options=options
    )


def data_uri_summary(data: bytes, mime: str = "image/png") -> str:
    """How the simulator records a data URI: type, size and hash instead of the bytes."""
    return f"data:{mime};base64,(bytes={len(data)},sha256={hashlib.sha256(data).hexdigest()})"


@contextlib.asynccontextmanager
async def fal(server: SimulatorServer, key: str = KEY, **kwargs: Any) -> AsyncIterator[FalProvider]:
    provider = FalProvider(api_key=key, base_url=server.base_url, price=0.03, **kwargs)
    try:
        yield provider
    finally:
        await provider.aclose()


@contextlib.asynccontextmanager
async def dashscope(
    server: SimulatorServer, key: str = KEY, **kwargs: Any
) -> AsyncIterator[DashScopeProvider]:
    provider = DashScopeProvider(api_key=key, base_url=server.base_url, price=0.045, **kwargs)
    try:
        yield provider
    finally:
        await provider.aclose()


async def until_done(
    provider: FalProvider, task_id: str, seen: list[str] | None = None
) -> UpstreamStatus:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = await provider.poll(task_id)
        if seen is not None:
            seen.append(status.state)
        if status.state in ("succeeded", "failed"):
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"{task_id} did not end")


async def fal_outcome(server: SimulatorServer, request: SubmitRequest) -> UpstreamStatus:
    async with fal(server) as provider:
        submitted = await provider.submit(request)
        return await until_done(provider, submitted.upstream_task_id)


def raised(coro: Coroutine[Any, Any, Any]) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        run(coro)
    return info.value


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(delay=0, api_key=KEY)) as sim:
        yield sim


@pytest.fixture
def control(server: SimulatorServer) -> Iterator[httpx.Client]:
    """The simulator's control surface, reset before each test."""
    with httpx.Client(base_url=server.base_url, trust_env=False, timeout=10) as http:
        assert http.post("/_sim/reset").status_code == 200
        yield http


@pytest.fixture
def studio() -> Iterator[LocalHTTP]:
    local = LocalHTTP()
    yield local
    local.close()


def configure(control: httpx.Client, **changes: Any) -> None:
    response = control.post("/_sim/config", json=changes)
    assert response.status_code == 200, response.text


def received(control: httpx.Client, protocol: str) -> list[dict[str, Any]]:
    return control.get("/_sim/requests").json().get(protocol, [])


def stats(control: httpx.Client) -> dict[str, int]:
    return control.get("/_sim/stats").json()


# --- fal.ai: the happy paths ---------------------------------------------------------------------


def test_fal_sends_bytes_as_data_uri_and_result_is_the_edit(
    server: SimulatorServer, control: httpx.Client
) -> None:
    configure(control, delay=0.5)
    source = sample_image((64, 48))

    async def scenario() -> tuple[Submitted, list[str], UpstreamStatus, bytes]:
        async with fal(server) as provider:
            submitted = await provider.submit(job(png_input(source)))
            seen: list[str] = []
            status = await until_done(provider, submitted.upstream_task_id, seen)
            return submitted, seen, status, await provider.download(status.result_urls[0], 10**7)

    submitted, seen, status, png = run(scenario())
    assert submitted.upstream_task_id.startswith("fal-ai/qwen-image-edit/requests/")
    assert submitted.status.state == "pending"
    assert seen[0] == "pending" and "running" in seen and seen[-1] == "succeeded"
    assert status.progress == 100 and len(status.result_urls) == 1
    assert_inverted(png, source)

    [call] = received(control, "fal")
    assert call["path"] == "/fal-ai/qwen-image-edit"
    assert call["body"] == {
        "prompt": "invert it",
        "image_url": data_uri_summary(source),
        "enable_safety_checker": True,
        "output_format": "png",
    }
    counts = stats(control)
    assert (counts["fal_submits"], counts["fal_requests"], counts["fetches"]) == (1, 1, 0)
    assert counts["fal_results"] == 1 and counts["creates"] == 0


def test_fal_sends_the_public_link_when_there_is_one(
    server: SimulatorServer, control: httpx.Client, studio: LocalHTTP
) -> None:
    source = sample_image((30, 40))
    url = studio.serve("/s/signed/input-1.png", source)
    status = run(fal_outcome(server, job(png_input(source, public_url=url))))
    assert status.state == "succeeded"
    assert received(control, "fal")[0]["body"]["image_url"] == url
    assert stats(control)["fetches"] == 1

    async def fetch() -> bytes:
        async with fal(server) as provider:
            return await provider.download(status.result_urls[0], 10**7)

    assert_inverted(run(fetch()), source)


def test_fal_plus_maps_options_and_sends_every_image(
    server: SimulatorServer, control: httpx.Client
) -> None:
    first, second = sample_image((40, 40)), sample_image((20, 30))
    request = job(
        png_input(first),
        png_input(second),
        model="qwen-image-edit-plus",
        n=2,
        seed=7,
        negative_prompt="blurry",
        prompt_extend=False,
        watermark=False,
    )
    status = run(fal_outcome(server, request))
    assert status.state == "succeeded" and len(status.result_urls) == 2
    [call] = received(control, "fal")
    assert call["path"] == "/fal-ai/qwen-image-edit-plus"
    assert call["body"] == {
        "prompt": "invert it",
        "image_urls": [data_uri_summary(first), data_uri_summary(second)],
        "num_images": 2,
        "negative_prompt": "blurry",
        "seed": 7,
        "enable_safety_checker": True,
        "output_format": "png",
    }


def test_fal_maps_size_to_image_size(server: SimulatorServer, control: httpx.Client) -> None:
    request = job(model="qwen-image-edit-plus", size="1024x768", prompt_extend=True)
    assert run(fal_outcome(server, request)).state == "succeeded"
    body = received(control, "fal")[0]["body"]
    assert body["image_size"] == {"width": 1024, "height": 768}
    assert "num_images" not in body and "prompt_extend" not in body and "size" not in body


def test_fal_webhook_is_passed_and_delivered(
    server: SimulatorServer, control: httpx.Client, studio: LocalHTTP
) -> None:
    hook = studio.base_url + "/hooks/fal?token=abc"

    async def scenario() -> Submitted:
        async with fal(server) as provider:
            return await provider.submit(
                SubmitRequest("qwen-image-edit", "x", [png_input()], callback_url=hook)
            )

    submitted = run(scenario())
    assert studio.received.wait(5)
    [delivered] = studio.callbacks
    assert submitted.upstream_task_id.endswith("/" + delivered["request_id"])
    assert delivered["status"] == "OK" and delivered["error"] is None
    assert len(delivered["payload"]["images"]) == 1
    assert stats(control)["fal_webhooks"] == 1


# --- fal.ai: what it cannot do is refused before sending -----------------------------------------


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (job(png_input(), png_input()), "one image at a time"),
        (job(model="qwen-image-edit-plus", n=5), "at most 4 images"),
        (job(model="qwen-image-edit-plus", watermark=True), "watermark"),
    ],
    ids=["two-inputs-for-the-base-model", "n-above-4", "watermark"],
)
def test_fal_refuses_unsupported_jobs_so_the_next_provider_can_try(
    server: SimulatorServer, control: httpx.Client, request_: SubmitRequest, words: str
) -> None:
    async def submit() -> Submitted:
        async with fal(server) as provider:
            return await provider.submit(request_)

    err = raised(submit())
    assert err.code == "unsupported_input" and words in err.message
    assert err.retryable and not err.ambiguous and not err.operator
    assert stats(control)["fal_submits"] == 0


# --- fal.ai: errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "flags"),
    [
        (401, "upstream_unauthorized", {"operator": True, "retryable": False}),
        (402, "upstream_no_credit", {"operator": True, "retryable": False}),
        (403, "upstream_forbidden", {"operator": True, "retryable": False}),
        (429, "upstream_rate_limited", {"operator": False, "retryable": True}),
        (500, "upstream_error", {"operator": False, "retryable": True}),
        (503, "upstream_unavailable", {"operator": False, "retryable": True}),
    ],
)
def test_fal_submit_errors_are_classified(
    server: SimulatorServer, control: httpx.Client, status: int, code: str, flags: dict[str, bool]
) -> None:
    configure(control, create_status=status, create_fail_count=1)

    async def submit() -> Submitted:
        async with fal(server) as provider:
            return await provider.submit(job())

    err = raised(submit())
    assert err.code == code
    assert (err.operator, err.retryable) == (flags["operator"], flags["retryable"])
    assert not err.ambiguous  # fal does not bill errors it answers
    assert err.retry_after == (1.0 if status == 429 else None)
    assert "fal.ai" in err.message
    assert stats(control)["fal_requests"] == 0


def test_fal_wrong_key_is_an_operator_error(server: SimulatorServer, control: httpx.Client) -> None:
    async def submit() -> Submitted:
        async with fal(server, key="wrong") as provider:
            return await provider.submit(job())

    err = raised(submit())
    assert err.operator and err.code == "upstream_unauthorized" and "QES_FAL_API_KEY" in err.message


@pytest.mark.parametrize(
    ("task_error", "code", "retryable", "words"),
    [
        ("content_policy_violation", "content_policy_violation", False, "safety filter"),
        ("nsfw_output", "content_policy_violation", False, "safety checker"),
        ("invalid_parameters", "invalid_parameters", False, "parameters"),
        ("image_processing_error", "image_processing_error", False, "input images"),
        ("generation_timeout", "generation_timeout", True, "timed out"),
        ("service_unavailable", "service_unavailable", True, "no free runner"),
        ("service_error", "service_error", True, "runner failed"),
    ],
)
def test_fal_request_failures_end_the_task_with_plain_words(
    server: SimulatorServer,
    control: httpx.Client,
    task_error: str,
    code: str,
    retryable: bool,
    words: str,
) -> None:
    configure(control, task_error=task_error, task_error_count=1)
    status = run(fal_outcome(server, job()))
    assert status.state == "failed" and status.error is not None
    assert status.error.code == code and words in status.error.message
    assert status.error.retryable is retryable
    assert not status.error.operator and not status.error.ambiguous


def test_fal_runner_validation_error_names_the_field(
    server: SimulatorServer, control: httpx.Client
) -> None:
    status = run(fal_outcome(server, job(model="qwen-image-edit-plus", seed=-1)))
    assert status.state == "failed" and status.error is not None
    assert status.error.code == "invalid_parameters" and not status.error.retryable
    assert "seed" in status.error.message


@pytest.mark.parametrize("how", ["garbage-bytes", "missing-link"])
def test_fal_unreadable_input_is_final(
    server: SimulatorServer, control: httpx.Client, studio: LocalHTTP, how: str
) -> None:
    image = (
        png_input(b"not an image at all")
        if how == "garbage-bytes"
        else png_input(public_url=studio.base_url + "/s/gone.png")
    )
    status = run(fal_outcome(server, job(image)))
    assert status.state == "failed" and status.error is not None
    assert status.error.code == "image_processing_error" and not status.error.retryable


def test_fal_status_read_faults_keep_the_task(
    server: SimulatorServer, control: httpx.Client
) -> None:
    async def scenario() -> tuple[list[UpstreamError], UpstreamStatus]:
        errors = []
        async with fal(server) as provider:
            submitted = await provider.submit(job())
            for status in (429, 500):
                configure(control, query_status=status, query_fail_count=1)
                with pytest.raises(UpstreamError) as info:
                    await provider.poll(submitted.upstream_task_id)
                errors.append(info.value)
            return errors, await until_done(provider, submitted.upstream_task_id)

    (limited, broken), status = run(scenario())
    assert limited.retryable and limited.retry_after == 1.0 and not limited.ambiguous
    assert broken.retryable and broken.code == "upstream_error"
    assert status.state == "succeeded"


def test_fal_result_read_fault_is_not_a_failed_request(
    server: SimulatorServer, control: httpx.Client
) -> None:
    """A 5xx while reading the result of a request fal called COMPLETED (no error) must not end
    the task: the request succeeded and was billed, so it is read again, never sent again."""

    async def scenario() -> tuple[UpstreamError, UpstreamStatus]:
        async with fal(server) as provider:
            submitted = await provider.submit(job())
            task_id = submitted.upstream_task_id
            while (await control_status(server, task_id))["status"] != "COMPLETED":
                await asyncio.sleep(0.02)
            configure(control, query_status=500, query_fail_count=1)
            with pytest.raises(UpstreamError) as info:
                await provider._result(task_id, {"status": "COMPLETED"})
            return info.value, await provider.poll(task_id)

    err, status = run(scenario())
    assert err.retryable and err.code == "upstream_error" and not err.ambiguous
    assert status.state == "succeeded"


async def control_status(server: SimulatorServer, task_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Key {KEY}"}, trust_env=False
    ) as http:
        return (await http.get(f"/{task_id}/status")).json()


def test_fal_lost_task_and_foreign_ids(server: SimulatorServer, control: httpx.Client) -> None:
    async def scenario() -> tuple[UpstreamError, UpstreamError]:
        async with fal(server) as provider:
            submitted = await provider.submit(job())
            configure(control, lose_task=True)
            with pytest.raises(UpstreamError) as lost:
                await provider.poll(submitted.upstream_task_id)
            with pytest.raises(UpstreamError) as foreign:
                await provider.poll("../../_sim/config")
            return lost.value, foreign.value

    lost, foreign = run(scenario())
    assert lost.code == "task_not_found" and lost.retryable
    assert foreign.code == "task_not_found" and not foreign.retryable
    assert stats(control)["fal_status"] == 1  # the foreign id never left the studio


def test_fal_malformed_answers(server: SimulatorServer, control: httpx.Client) -> None:
    async def scenario() -> tuple[UpstreamError, UpstreamError]:
        async with fal(server) as provider:
            submitted = await provider.submit(job())
            configure(control, malformed_json=True)
            with pytest.raises(UpstreamError) as on_submit:
                await provider.submit(job())
            with pytest.raises(UpstreamError) as on_poll:
                await provider.poll(submitted.upstream_task_id)
            return on_submit.value, on_poll.value

    on_submit, on_poll = run(scenario())
    assert on_submit.code == "bad_upstream_answer" and on_submit.retryable and on_submit.ambiguous
    assert on_poll.code == "bad_upstream_answer" and on_poll.retryable and not on_poll.ambiguous


def test_fal_lost_or_hung_submit_is_ambiguous(
    server: SimulatorServer, control: httpx.Client
) -> None:
    configure(control, drop_create_response=True, drop_create_count=1)

    async def submit(**kwargs: Any) -> Submitted:
        async with fal(server, **kwargs) as provider:
            return await provider.submit(job())

    dropped = raised(submit())
    assert dropped.ambiguous and dropped.retryable
    assert stats(control)["fal_requests"] == 1  # it was queued (and would be billed)
    configure(control, hang=True)
    hung = raised(submit(timeout=httpx.Timeout(5.0, read=0.3)))
    assert hung.ambiguous and hung.code == "upstream_unreachable"
    configure(control, hang=False)


# --- DashScope: the happy paths ------------------------------------------------------------------


def test_dashscope_answers_at_once_with_the_edit(
    server: SimulatorServer, control: httpx.Client
) -> None:
    source = sample_image((50, 36))

    async def scenario() -> tuple[Submitted, UpstreamStatus, bytes]:
        async with dashscope(server) as provider:
            submitted = await provider.submit(job(png_input(source), prompt="把背景换成海边"))
            again = await provider.poll(submitted.upstream_task_id)
            png = await provider.download(submitted.status.result_urls[0], 10**7)
            return submitted, again, png

    submitted, again, png = run(scenario())
    assert submitted.status.state == "succeeded" and submitted.status.progress == 100
    assert len(submitted.status.result_urls) == 1
    assert again == submitted.status  # poll answers the remembered outcome
    assert_inverted(png, source)
    [call] = received(control, "dashscope")
    assert call["path"] == "/api/v1/services/aigc/multimodal-generation/generation"
    assert call["body"] == {
        "model": "qwen-image-edit",
        "input": {
            "messages": [
                {
                    "role": "user",
                    "content": [{"image": data_uri_summary(source)}, {"text": "把背景换成海边"}],
                }
            ]
        },
        "parameters": {},
    }
    counts = stats(control)
    assert (counts["dashscope_calls"], counts["dashscope_generations"], counts["fetches"]) == (
        1,
        1,
        0,
    )


def test_dashscope_sends_the_public_link_when_there_is_one(
    server: SimulatorServer, control: httpx.Client, studio: LocalHTTP
) -> None:
    url = studio.serve("/s/signed/input-1.png", sample_image())

    async def submit() -> Submitted:
        async with dashscope(server) as provider:
            return await provider.submit(job(png_input(public_url=url)))

    assert run(submit()).status.state == "succeeded"
    content = received(control, "dashscope")[0]["body"]["input"]["messages"][0]["content"]
    assert content[0] == {"image": url}
    assert stats(control)["fetches"] == 1


@pytest.mark.parametrize(
    ("options", "parameters", "images"),
    [
        (
            {
                "n": 2,
                "seed": 42,
                "negative_prompt": "低质量",
                "prompt_extend": True,
                "watermark": True,
            },
            {
                "n": 2,
                "seed": 42,
                "negative_prompt": "低质量",
                "prompt_extend": True,
                "watermark": True,
            },
            2,
        ),
        (
            {"size": "1024x1536", "prompt_extend": False},
            {"size": "1024*1536", "prompt_extend": False},
            1,
        ),
    ],
    ids=["n-seed-negative-flags", "size"],
)
def test_dashscope_plus_maps_options_to_parameters(
    server: SimulatorServer,
    control: httpx.Client,
    options: dict[str, Any],
    parameters: dict[str, Any],
    images: int,
) -> None:
    first, second = sample_image((40, 40)), sample_image((20, 20))

    async def submit() -> Submitted:
        async with dashscope(server) as provider:
            request = job(
                png_input(first), png_input(second), model="qwen-image-edit-plus", **options
            )
            return await provider.submit(request)

    submitted = run(submit())
    assert len(submitted.status.result_urls) == images
    body = received(control, "dashscope")[0]["body"]
    assert body["model"] == "qwen-image-edit-plus"
    assert body["parameters"] == parameters
    content = body["input"]["messages"][0]["content"]
    assert content == [
        {"image": data_uri_summary(first)},
        {"image": data_uri_summary(second)},
        {"text": "invert it"},
    ]


def test_dashscope_refuses_a_prompt_it_would_cut(
    server: SimulatorServer, control: httpx.Client
) -> None:
    async def submit() -> Submitted:
        async with dashscope(server) as provider:
            return await provider.submit(job(prompt="x" * 801))

    err = raised(submit())
    assert err.code == "unsupported_input" and err.retryable and "800" in err.message
    assert stats(control)["dashscope_calls"] == 0


# --- DashScope: errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "code", "kind"),
    [
        ({"create_status": 401}, "upstream_unauthorized", "operator"),
        ({"create_status": 402}, "upstream_no_credit", "operator"),  # 400 Arrearage
        ({"create_status": 403}, "upstream_forbidden", "operator"),
        ({"create_status": 429}, "upstream_rate_limited", "retryable"),
        ({"create_status": 500}, "upstream_error", "retryable"),
        ({"task_error": "content_policy_violation"}, "content_policy_violation", "final"),
        ({"task_error": "invalid_parameters"}, "invalid_parameters", "final"),
        ({"task_error": "resource_exhausted"}, "upstream_rate_limited", "retryable"),
        ({"task_error": "service_error"}, "upstream_error", "retryable"),
    ],
)
def test_dashscope_errors_are_classified(
    server: SimulatorServer, control: httpx.Client, knobs: dict[str, Any], code: str, kind: str
) -> None:
    configure(control, **knobs)

    async def submit() -> Submitted:
        async with dashscope(server) as provider:
            return await provider.submit(job())

    err = raised(submit())
    assert err.code == code
    assert err.operator is (kind == "operator")
    assert err.retryable is (kind == "retryable")
    assert not err.ambiguous  # DashScope bills successful images only
    assert err.retry_after is None  # DashScope sends no Retry-After
    assert stats(control)["dashscope_generations"] == 0


def test_dashscope_content_policy_in_plain_words(
    server: SimulatorServer, control: httpx.Client
) -> None:
    async def submit() -> Submitted:
        async with dashscope(server) as provider:
            return await provider.submit(job(prompt="a hat [sim:fail=content_policy_violation]"))

    err = raised(submit())
    assert err.code == "content_policy_violation" and not err.retryable
    assert err.message.startswith("The provider's safety filter blocked this request.")
    assert err.http_status == 400


def test_dashscope_wrong_key_and_unreadable_input(
    server: SimulatorServer, control: httpx.Client
) -> None:
    async def submit(key: str, image: InputImage) -> Submitted:
        async with dashscope(server, key=key) as provider:
            return await provider.submit(job(image))

    wrong_key = raised(submit("wrong", png_input()))
    assert wrong_key.operator and "QES_DASHSCOPE_API_KEY" in wrong_key.message
    unreadable = raised(submit(KEY, png_input(b"GIF89a but not really")))
    assert unreadable.code == "image_processing_error" and not unreadable.retryable


def test_dashscope_lost_answers_are_ambiguous(
    server: SimulatorServer, control: httpx.Client
) -> None:
    async def submit(**kwargs: Any) -> Submitted:
        async with dashscope(server, **kwargs) as provider:
            return await provider.submit(job())

    configure(control, malformed_json=True)
    malformed = raised(submit())
    assert malformed.code == "bad_upstream_answer" and malformed.ambiguous and malformed.retryable
    configure(control, malformed_json=False, drop_create_response=True, drop_create_count=1)
    dropped = raised(submit())
    assert dropped.ambiguous and dropped.retryable
    assert stats(control)["dashscope_generations"] == 1  # made, billed, answer lost
    configure(control, delay=5)
    slow = raised(submit(timeout=httpx.Timeout(5.0, read=0.3)))
    assert slow.ambiguous and slow.code == "upstream_unreachable"


def test_dashscope_poll_of_an_unknown_id_is_final(server: SimulatorServer) -> None:
    async def poll() -> UpstreamStatus:
        async with dashscope(server) as provider:
            return await provider.poll("bf37ca26-0abe-98e4-8065-000000000000")

    err = raised(poll())
    assert err.code == "result_lost" and not err.retryable and "Retry" in err.message


# --- the registry --------------------------------------------------------------------------------


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg]


def test_registry_uses_configured_enabled_providers_cheapest_first(tmp_path: Path) -> None:
    async def build(**values: Any) -> list[tuple[str, float, type]]:
        providers = build_providers(settings(tmp_path, **values))
        try:
            return [(p.name, p.price, type(p)) for p in providers]
        finally:
            for p in providers:
                await p.aclose()

    everything = {
        "evolink_api_key": "e",
        "evolink_price": 0.05,
        "fal_api_key": "f",
        "fal_price": 0.04,
        "dashscope_api_key": "d",
        "dashscope_price": 0.01,
    }
    assert run(build(**everything)) == [
        ("dashscope", 0.01, DashScopeProvider),
        ("fal", 0.04, FalProvider),
        ("evolink", 0.05, EvoLinkProvider),
    ]
    assert [name for name, *_ in run(build(**everything, dashscope_enabled=False))] == [
        "fal",
        "evolink",
    ]
    assert [name for name, *_ in run(build(fal_api_key="f"))] == ["fal"]
    assert run(build(fal_api_key="", dashscope_api_key=None)) == []


def test_registry_simulator_mode_ignores_provider_keys(tmp_path: Path) -> None:
    async def build() -> list[str]:
        providers = build_providers(settings(tmp_path), "http://127.0.0.1:9")
        names = [p.name for p in providers]
        for p in providers:
            await p.aclose()
        return names

    assert run(build()) == ["simulator"]

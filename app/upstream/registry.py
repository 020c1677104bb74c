"""Which providers this studio uses, built from the settings, cheapest first.

A provider is used when its key is set and it is enabled (``QES_<PROVIDER>_API_KEY`` and
``QES_<PROVIDER>_ENABLED``); its ``QES_<PROVIDER>_PRICE`` orders it. With none, the built-in
simulator stands in (speaking EvoLink's protocol), so a fresh install works with no key.
"""

from __future__ import annotations

from app.config import Settings
from app.upstream.base import Provider, default_timeout
from app.upstream.dashscope import DashScopeProvider
from app.upstream.evolink import EvoLinkProvider
from app.upstream.fal import FalProvider


def build_providers(settings: Settings, simulator_url: str | None = None) -> list[Provider]:
    providers: list[Provider] = []
    timeout = default_timeout(settings.upstream_connect_timeout, settings.upstream_read_timeout)
    # DashScope answers only when the image is done: its single call may take minutes.
    sync_timeout = default_timeout(
        settings.upstream_connect_timeout, max(180.0, settings.upstream_read_timeout)
    )
    if simulator_url is not None:
        providers.append(
            EvoLinkProvider(
                api_key="simulator",
                base_url=simulator_url,
                files_url=simulator_url,
                price=0.0,
                name="simulator",
                timeout=timeout,
            )
        )
        return providers
    if settings.evolink_api_key and settings.evolink_enabled:
        providers.append(
            EvoLinkProvider(
                api_key=settings.evolink_api_key,
                base_url=settings.evolink_base_url,
                files_url=settings.evolink_files_url,
                price=settings.evolink_price,
                timeout=timeout,
            )
        )
    if settings.fal_api_key and settings.fal_enabled:
        providers.append(
            FalProvider(
                api_key=settings.fal_api_key,
                base_url=settings.fal_base_url,
                price=settings.fal_price,
                timeout=timeout,
            )
        )
    if settings.dashscope_api_key and settings.dashscope_enabled:
        providers.append(
            DashScopeProvider(
                api_key=settings.dashscope_api_key,
                base_url=settings.dashscope_base_url,
                price=settings.dashscope_price,
                timeout=sync_timeout,
            )
        )
    # sorted() is stable: at equal prices the order above (EvoLink, fal, DashScope) holds.
    return sorted(providers, key=lambda p: p.price)

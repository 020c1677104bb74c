"""Which providers this studio uses, built from the settings, cheapest first.

A provider is used when its key is set and it is enabled. With none, the built-in simulator
stands in (speaking EvoLink's protocol), so a fresh install works with no key.
"""

from __future__ import annotations

from app.config import Settings
from app.upstream.base import Provider
from app.upstream.evolink import EvoLinkProvider


def build_providers(settings: Settings, simulator_url: str | None = None) -> list[Provider]:
    providers: list[Provider] = []
    if simulator_url is not None:
        providers.append(
            EvoLinkProvider(
                api_key="simulator",
                base_url=simulator_url,
                files_url=simulator_url,
                price=0.0,
                name="simulator",
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
            )
        )
    return sorted(providers, key=lambda p: p.price)

"""Every knob of the studio, in one pydantic-settings class.

Names are a contract with deployments and scripts outside this repo (issue #8): each field is read
from ``QES_<NAME>`` in the environment or a ``.env`` file, and the README lists every one.
"""

from __future__ import annotations

import ipaddress
import secrets
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Runtime configuration; see the README's settings table for the meaning of each field."""

    model_config = SettingsConfigDict(
        env_prefix="QES_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Where things live
    data_dir: Path = Path("data")
    database_url: str | None = None
    secret_key: str | None = None
    public_base_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000

    # EvoLink (the first upstream)
    evolink_api_key: str | None = None
    evolink_base_url: str = "https://api.evolink.ai"
    evolink_files_url: str = "https://files-api.evolink.ai"
    evolink_price: float = 0.0319
    evolink_enabled: bool = True

    # fal.ai queue API (fal-ai/qwen-image-edit)
    fal_api_key: str | None = None
    fal_base_url: str = "https://queue.fal.run"
    fal_price: float = 0.03
    fal_enabled: bool = True

    # Alibaba Model Studio / DashScope (synchronous multimodal generation)
    dashscope_api_key: str | None = None
    dashscope_base_url: str = "https://dashscope-intl.aliyuncs.com"
    dashscope_price: float = 0.045
    dashscope_enabled: bool = True

    # Built-in simulator (used when no provider key is configured)
    simulator_delay: float = Field(3.0, ge=0)

    # Worker timing
    poll_interval: float = Field(1.0, gt=0)
    retry_max_delay: float = Field(30.0, gt=0)
    job_timeout: float = Field(600.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    worker_concurrency: int = Field(8, ge=1)
    upstream_connect_timeout: float = Field(10.0, gt=0)
    upstream_read_timeout: float = Field(60.0, gt=0)
    circuit_failures: int = Field(3, ge=1)
    circuit_cooldown: float = Field(30.0, gt=0)
    shutdown_grace: float = Field(30.0, ge=0)
    orphan_grace: float = Field(600.0, ge=0)
    result_max_bytes: int = Field(50 * 1024 * 1024, gt=0)

    # History and limits
    history_limit: int = Field(20, ge=1)
    jobs_per_minute: int = Field(10, ge=0)
    jobs_per_minute_per_ip: int = Field(30, ge=0)
    max_running_per_user: int = Field(5, ge=1)
    daily_spend_limit: float = Field(0.0, ge=0)

    # Users
    user_mode: Literal["anonymous", "proxy"] = "anonymous"
    proxy_user_header: str = "Remote-User"
    trusted_proxies: Annotated[list[str], NoDecode] = ["127.0.0.1"]
    admins: Annotated[list[str], NoDecode] = []
    fetch_allowed_networks: Annotated[list[str], NoDecode] = []

    # Kiosk
    kiosk: bool = False
    kiosk_idle_seconds: int = Field(90, ge=1)

    # Signed links
    link_ttl: int = Field(3600, ge=60)

    @field_validator("trusted_proxies", "admins", "fetch_allowed_networks", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("trusted_proxies", "fetch_allowed_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("public_base_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else None

    @property
    def simulated(self) -> bool:
        """True when no real provider key is set: the built-in simulator answers instead."""
        return not any(
            key and enabled
            for key, enabled in (
                (self.evolink_api_key, self.evolink_enabled),
                (self.fal_api_key, self.fal_enabled),
                (self.dashscope_api_key, self.dashscope_enabled),
            )
        )

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'studio.db').resolve()}"

    @cached_property
    def signing_key(self) -> str:
        """The configured secret, or one generated once and kept in the data dir across restarts."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        path.write_text(key)
        path.chmod(0o600)
        return key

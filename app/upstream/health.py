"""Provider health: a circuit breaker per provider, and operator faults that take one out.

Kept in memory per process (a replica learns a provider is down on its own within a few calls).
Our own small breaker rather than a library: the worker needs to *ask* before choosing a provider
("is this one usable now, and if not, when?") and the status page needs the state and last
error, while the asyncio breaker libraries wrap a call and raise, which fits neither.

closed: calls flow. After ``threshold`` consecutive retryable failures it opens for ``cooldown``
seconds: no calls. Then half-open: exactly one probe goes through; success closes it, failure
opens it again. An operator fault (bad key, no credit) disables the provider for
``operator_cooldown`` seconds, logged loudly, after which one probe is let through.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger("qes.providers")

State = Literal["healthy", "open", "half-open", "disabled"]


@dataclass
class ProviderHealth:
    name: str
    failures: int = 0
    opened_until: float = 0.0
    probing: bool = False
    disabled_until: float = 0.0
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None
    calls: int = 0
    errors: int = 0


@dataclass
class HealthBoard:
    threshold: int = 3
    cooldown: float = 30.0
    operator_cooldown: float = 600.0
    clock: object = field(default=time.monotonic)
    _items: dict[str, ProviderHealth] = field(default_factory=dict)

    def _now(self) -> float:
        return self.clock()  # type: ignore[operator]

    def get(self, name: str) -> ProviderHealth:
        if name not in self._items:
            self._items[name] = ProviderHealth(name)
        return self._items[name]

    def state(self, name: str) -> State:
        h = self.get(name)
        now = self._now()
        if h.disabled_until > now:
            return "disabled"
        if h.opened_until > now:
            return "open"
        if h.opened_until or h.disabled_until:
            return "half-open"
        return "healthy"

    def wait_seconds(self, name: str) -> float:
        """How long until this provider may be tried again (0 if now)."""
        h = self.get(name)
        return max(0.0, max(h.opened_until, h.disabled_until) - self._now())

    def allow(self, name: str) -> bool:
        """May a call go to this provider now? In half-open state only one probe at a time."""
        state = self.state(name)
        if state == "healthy":
            return True
        if state == "half-open":
            h = self.get(name)
            if h.probing:
                return False
            h.probing = True
            return True
        return False

    def record_success(self, name: str) -> None:
        h = self.get(name)
        if h.opened_until or h.disabled_until:
            log.warning("provider %s recovered", name)
        h.failures = 0
        h.opened_until = 0.0
        h.disabled_until = 0.0
        h.probing = False
        h.calls += 1
        h.last_success_at = time.time()

    def record_failure(self, name: str, message: str) -> None:
        """A retryable fault (5xx, timeout, 429 ...): counts toward opening the circuit."""
        h = self.get(name)
        h.calls += 1
        h.errors += 1
        h.failures += 1
        h.last_error = message
        h.last_error_at = time.time()
        if h.probing or h.failures >= self.threshold:
            h.opened_until = self._now() + self.cooldown
            log.warning(
                "provider %s: circuit open for %.0f s after %d failures (%s)",
                name,
                self.cooldown,
                h.failures,
                message,
            )
        h.probing = False

    def record_operator_error(self, name: str, message: str) -> None:
        """Our account is at fault: skip the provider for a while, and say so loudly."""
        h = self.get(name)
        h.calls += 1
        h.errors += 1
        h.last_error = message
        h.last_error_at = time.time()
        already = h.disabled_until > self._now()
        h.disabled_until = self._now() + self.operator_cooldown
        h.probing = False
        if already:
            return
        log.error(
            "provider %s disabled for %.0f s: %s -- an administrator must act",
            name,
            self.operator_cooldown,
            message,
        )

    def release_probe(self, name: str) -> None:
        """A probe that ended with neither success nor provider fault (e.g. the user's input)."""
        self.get(name).probing = False

    def snapshot(self) -> list[dict[str, object]]:
        out = []
        for name, h in self._items.items():
            out.append(
                {
                    "name": name,
                    "state": self.state(name),
                    "consecutive_failures": h.failures,
                    "retry_in_seconds": round(self.wait_seconds(name), 1),
                    "last_error": h.last_error,
                    "last_error_at": h.last_error_at,
                    "last_success_at": h.last_success_at,
                    "calls": h.calls,
                    "errors": h.errors,
                }
            )
        return out

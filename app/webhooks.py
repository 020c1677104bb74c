"""Telling a gateway client's ``callback_url`` that its job ended, the way EvoLink documents it,
and signed the way Standard Webhooks specifies so the receiver can tell it came from us.

EvoLink's rules for ``callback_url``: https only, no internal addresses, at most 2048 characters;
the body is the same JSON as ``GET /v1/tasks/{id}``; 10 s timeout; a non-2xx answer or an error is
retried at most 3 times, after 1, 2 and 4 seconds. EvoLink itself signs nothing; we add the
Standard Webhooks headers (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256>``) with the ``standardwebhooks`` package, so any of
its verifiers (Python, TypeScript, Go, ...) checks our callbacks with the user's secret.

The secret is per user and derived, not stored: HMAC-SHA256 of the user id under the app's signing
key. Nothing new has to be kept, it is stable across restarts, and it changes only when the
signing key does (which also invalidates every signed link, so that is already a rotation event).

Durability: the job row carries ``client_callback_url`` and ``client_callback_state``
(``pending`` until told, then ``sent`` or ``failed``). Delivery runs in the background so a slow
receiver never holds up the worker; whatever is still ``pending`` for an ended job (the process
stopped mid-delivery) is sent again at the next start. Receivers may therefore see a callback
twice, with the same ``webhook-id`` both times, which is what that header is for.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from app.db import session_scope
from app.errors import InputError
from app.fetcher import SafeFetcher
from app.models import FINISHED, Task

log = logging.getLogger("qes.webhooks")

MAX_CALLBACK_URL = 2048
CALLBACK_TIMEOUT = 10.0
RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0)

# Renders the body of a callback: the job as GET /v1/tasks/{id} shows it, with result links under
# the given base URL.
Render = Callable[[Task, str], dict[str, Any]]


def webhook_secret(signing_key: str, user_id: str) -> str:
    """The user's Standard Webhooks secret: ``whsec_`` + base64 of 32 derived bytes."""
    raw = hmac.new(
        signing_key.encode(), b"qes-webhook-secret:" + user_id.encode(), hashlib.sha256
    ).digest()
    return "whsec_" + base64.b64encode(raw).decode("ascii")


def message_id(task: Task) -> str:
    """One id for every try of one outcome (receivers dedupe on it); a re-run gets a new one."""
    ended = int(task.finished_at.replace(tzinfo=UTC).timestamp()) if task.finished_at else 0
    return f"msg_{task.id}_{ended}"


class CallbackSender:
    """Checks callback URLs at the door and delivers signed callbacks when jobs end.

    ``allow_insecure_for_tests`` lets a test receive callbacks over plain http on 127.0.0.1 (a
    test cannot get a publicly trusted certificate); it is a constructor argument of this class
    only, never a setting, so no deployment can switch the https rule off.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        fetcher: SafeFetcher,
        signing_key: str,
        render: Render,
        *,
        base_url: Callable[[str], str],
        timeout: float = CALLBACK_TIMEOUT,
        retry_delays: Iterable[float] = RETRY_DELAYS,
        allow_insecure_for_tests: bool = False,
    ) -> None:
        self.sessions = sessions
        self.fetcher = fetcher
        self.signing_key = signing_key
        self.render = render
        self.base_url = base_url
        self.timeout = timeout
        self.retry_delays = tuple(retry_delays)
        self.schemes: tuple[str, ...] = (
            ("https", "http") if allow_insecure_for_tests else ("https",)
        )
        self._running: set[asyncio.Task[None]] = set()
        self._inflight: set[str] = set()

    # --- at the door ----------------------------------------------------------------------------

    async def check_url(self, url: object) -> str:
        """The callback_url, or a 400 naming the rule it breaks (checked again when sending)."""
        if not isinstance(url, str) or not url.strip():
            raise InputError("invalid_callback_url", "callback_url must be a non-empty string.")
        url = url.strip()
        if len(url) > MAX_CALLBACK_URL:
            raise InputError(
                "invalid_callback_url",
                f"callback_url is {len(url)} characters long; at most {MAX_CALLBACK_URL} are "
                "allowed.",
            )
        await self.fetcher.check(url, "callback_url", self.schemes)
        return url

    # --- delivery -------------------------------------------------------------------------------

    async def on_finished(self, job_id: str) -> None:
        """Worker finish hook: start the delivery in the background and return at once."""
        self.start(job_id)

    def start(self, job_id: str) -> None:
        if job_id in self._inflight:
            return
        self._inflight.add(job_id)
        task = asyncio.get_running_loop().create_task(
            self._deliver_guarded(job_id), name=f"qes-callback-{job_id}"
        )
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def resend_pending(self) -> int:
        """Start delivery of every callback still pending for an ended job (after a restart)."""
        ids = await asyncio.to_thread(self._pending_ids)
        for job_id in ids:
            self.start(job_id)
        return len(ids)

    async def wait_idle(self) -> None:
        """Wait for the deliveries under way (tests and shutdown)."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    def _pending_ids(self) -> list[str]:
        with session_scope(self.sessions) as s:
            return list(
                s.scalars(
                    select(Task.id).where(
                        Task.client_callback_state == "pending",
                        Task.client_callback_url.is_not(None),
                        Task.status.in_(FINISHED),
                    )
                )
            )

    async def _deliver_guarded(self, job_id: str) -> None:
        try:
            await self.deliver(job_id)
        except Exception:  # a background task must not die with an unseen traceback
            log.exception("callback delivery for job %s failed", job_id)
        finally:
            self._inflight.discard(job_id)

    async def deliver(self, job_id: str) -> str | None:
        """Send the job's callback with retries; record and return ``sent`` or ``failed``."""
        prepared = await asyncio.to_thread(self._prepare, job_id)
        if prepared is None:
            return None
        url, user_id, msg_id, body = prepared
        signer = Webhook(webhook_secret(self.signing_key, user_id))
        outcome = "failed"
        last_reason = ""
        for attempt in range(len(self.retry_delays) + 1):
            if attempt:
                await asyncio.sleep(self.retry_delays[attempt - 1])
            now = datetime.now(UTC)
            headers = {
                "Content-Type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signer.sign(msg_id, now, body),
            }
            try:
                status = await self.fetcher.post(
                    url,
                    "callback_url",
                    content=body.encode(),
                    headers=headers,
                    schemes=self.schemes,
                    timeout=self.timeout,
                )
            except InputError as exc:
                last_reason = exc.message
                continue
            if 200 <= status < 300:
                outcome = "sent"
                break
            last_reason = f"callback_url answered HTTP {status}"
        if outcome == "failed":
            log.warning("callback for job %s not delivered: %s", job_id, last_reason)
        await asyncio.to_thread(self._record, job_id, outcome)
        return outcome

    def _prepare(self, job_id: str) -> tuple[str, str, str, str] | None:
        with session_scope(self.sessions) as s:
            task = s.get(Task, job_id)
            if (
                task is None
                or not task.client_callback_url
                or task.client_callback_state != "pending"
                or task.status not in FINISHED
            ):
                return None
            _ = task.files
            payload = self.render(task, self.base_url(job_id))
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
            return task.client_callback_url, task.user_id, message_id(task), body

    def _record(self, job_id: str, outcome: str) -> None:
        with session_scope(self.sessions) as s:
            task = s.get(Task, job_id)
            if task is not None and task.client_callback_state == "pending":
                task.client_callback_state = outcome

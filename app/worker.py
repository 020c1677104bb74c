"""The one worker loop: submit queued jobs, follow running ones, save results, retry, fail over.

It runs inside the app's event loop (started by the lifespan). Each pass claims the due jobs with a
lease, takes one step of each, and commits what happened before the next step, so a crash at any
point loses nothing: on start, leases of dead processes are released and every queued and running
row is picked up again. ``run_once()`` is the unit tests drive step by step.

Never billed twice: an attempt is written as ``submitting`` before the create request leaves. If
the answer is lost (a timeout after sending, a crash before the task id is saved), nobody can tell
whether the provider accepted and will bill the job, and EvoLink offers no lookup by our own
reference. The studio then does not resubmit on its own: the job ends ``failed`` with code
``submit_unknown`` and says so, and the person decides whether to press Retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import random
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta

from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from app import tasks
from app.config import Settings
from app.db import session_scope
from app.masks import composite
from app.models import Task, TaskFile, utcnow
from app.storage import LocalStorage, Storage
from app.upstream.base import InputImage, Provider, SubmitRequest, UpstreamError, UpstreamStatus
from app.upstream.health import HealthBoard

log = logging.getLogger("qes.worker")

LEASE_SECONDS = 120.0
SWEEP_EVERY = 300.0
POLL_REFUSALS_BEFORE_FAILING = 5
RESULT_FORMATS = {
    "PNG": ("png", "image/png"),
    "JPEG": ("jpg", "image/jpeg"),
    "WEBP": ("webp", "image/webp"),
}


def _owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Worker:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        storage: Storage,
        providers: list[Provider],
        input_url: Callable[[Task, TaskFile], str | None],
        callback_url: Callable[[str, str], str] | None = None,
        health: HealthBoard | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.storage = storage
        self.providers = sorted(providers, key=lambda p: p.price)
        self.input_url = input_url
        # Builds the URL a provider calls back on (job id, secret token); None when we are not
        # reachable over https, where providers may not call back.
        self.callback_url = callback_url
        self.health = health or HealthBoard(
            threshold=settings.circuit_failures, cooldown=settings.circuit_cooldown
        )
        self.owner = _owner_id()
        # Called with a job's id after it ended (succeeded, failed, canceled) and was committed,
        # e.g. to tell a gateway client's callback_url. Must not raise.
        self.finish_hooks: list[Callable[[str], Awaitable[None]]] = []
        self._wake = asyncio.Event()
        self._stopping = False
        # Steps under way, by job id: a slow call (a 3-minute synchronous provider, a big
        # download) holds up only its own job, never the polling of the others.
        self._inflight: dict[str, asyncio.Task[None]] = {}
        # Consecutive refusals of our key while following a job (see _follow).
        self._poll_refusals: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def recover(self) -> int:
        """Release leases held by processes of this host that are gone (crashed or restarted)."""
        host = socket.gethostname()
        with session_scope(self.sessions) as s:
            dead = set()
            for owner in tasks.lease_owners(s):
                parts = owner.split(":")
                if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
                    pid = int(parts[1])
                    if pid == os.getpid() and owner != self.owner or not _alive(pid):
                        dead.add(owner)
            return tasks.release_leases(s, dead)

    def wake(self) -> None:
        """Ask the loop to look now (a job was added, a callback arrived). Thread-safe."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        self._stopping = True
        self.wake()

    def sweep(self) -> int:
        """Remove stored files that no job refers to (see tasks.sweep_orphans)."""
        if not isinstance(self.storage, LocalStorage):
            return 0
        with session_scope(self.sessions) as s:
            removed = tasks.sweep_orphans(s, self.storage, self.settings.orphan_grace)
        if removed:
            log.info("removed %d orphaned files", removed)
        return removed

    async def run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.recover)
        await asyncio.to_thread(self.sweep)
        next_sweep = self._loop.time() + SWEEP_EVERY
        next_renewal = self._loop.time() + LEASE_SECONDS / 4
        while not self._stopping:
            now = self._loop.time()
            if now >= next_sweep:
                next_sweep = now + SWEEP_EVERY
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.sweep)
            if now >= next_renewal:
                next_renewal = now + LEASE_SECONDS / 4
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._renew_leases)
            self._wake.clear()
            try:
                await self.run_once(wait=False)
            except Exception:  # the loop must survive anything one pass throws
                log.exception("worker pass failed")
            if self._stopping:
                break
            wait = await asyncio.to_thread(self._seconds_to_next, set(self._inflight))
            wait = min(wait, max(0.05, next_renewal - self._loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
        # Stop between steps: no new step starts; the ones under way end with their commit.
        if self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        log.info("worker stopped between steps")

    def _renew_leases(self) -> None:
        """Keep the leases of long steps alive so no other worker takes their jobs meanwhile."""
        if self._inflight:
            with session_scope(self.sessions) as s:
                tasks.renew_leases(s, list(self._inflight), self.owner, LEASE_SECONDS)

    def _seconds_to_next(self, busy: set[str]) -> float:
        with session_scope(self.sessions) as s:
            due = tasks.next_due_at(s, busy)
        if due is None:
            return 5.0
        return min(5.0, max(0.05, (due - utcnow()).total_seconds()))

    # --- one pass -------------------------------------------------------------------------------

    async def run_once(self, wait: bool = True) -> int:
        """Start one step of every due job not already under way (at most
        QES_WORKER_CONCURRENCY at once); with ``wait``, return when they have ended. Returns how
        many steps were started."""
        room = self.settings.worker_concurrency - len(self._inflight)
        if room <= 0:
            return 0
        ids = await asyncio.to_thread(self._claim_due, room, set(self._inflight))
        started = []
        for task_id in ids:
            step = asyncio.create_task(self._step_safely(task_id), name=f"qes-step-{task_id}")
            self._inflight[task_id] = step
            step.add_done_callback(lambda _t, i=task_id: self._step_done(i))
            started.append(step)
        if wait and started:
            await asyncio.gather(*started)
        return len(started)

    def _step_done(self, task_id: str) -> None:
        self._inflight.pop(task_id, None)
        self._wake.set()  # a slot is free, and the job may be due again at once

    def _claim_due(self, limit: int, skip: set[str]) -> list[str]:
        claimed = []
        with session_scope(self.sessions) as s:
            for task_id in tasks.due_task_ids(s, limit + len(skip), self.owner):
                if task_id in skip or len(claimed) >= limit:
                    continue
                if tasks.claim(s, task_id, self.owner, LEASE_SECONDS):
                    claimed.append(task_id)
        return claimed

    async def _step_safely(self, task_id: str) -> None:
        try:
            await self.step(task_id)
        except Exception:
            log.exception("step of job %s failed; it will be looked at again", task_id)
            await asyncio.to_thread(self._reschedule_after_bug, task_id)

    def _reschedule_after_bug(self, task_id: str) -> None:
        with session_scope(self.sessions) as s:
            task = s.get(Task, task_id)
            if task is not None and task.active:
                tasks.schedule(task, self._backoff(task.poll_delay))
                task.lease_owner = task.lease_until = None

    async def step(self, task_id: str) -> None:
        task = await asyncio.to_thread(self._load, task_id)
        if task is None or not task.active:
            return
        if utcnow() > task.created_at + timedelta(seconds=self.settings.job_timeout):
            await self._commit(task_id, lambda t: self._timeout(t))
            return
        if task.status == "queued":
            await self._submit(task)
        else:
            await self._follow(task)

    # --- queued: send it ------------------------------------------------------------------------

    async def _submit(self, task: Task) -> None:
        last = tasks.current_attempt(task)
        if last is not None and last.state == "submitting":
            await self._commit(task.id, self._ambiguous_after_crash)
            return
        provider, wait = self._choose_provider(task)
        if provider is None:
            if wait is not None:  # every provider left is cooling down: wait for one
                await self._commit(task.id, lambda t: tasks.schedule(t, max(0.05, wait)))
                return
            err = self._last_error(task)
            code, message = err or ("no_provider", "No upstream provider is available.")
            await self._commit(task.id, lambda t: tasks.mark_failed(t, code, message))
            return
        try:
            request = await asyncio.to_thread(self._build_request, task)
            token = secrets.token_urlsafe(24) if self.callback_url else None

            def begin(t: Task) -> int:
                if token:
                    t.callback_token = token
                return tasks.start_attempt(self._session_of(t), t, provider.name).id

            attempt_id = await self._commit(task.id, begin)
        except BaseException:
            self.health.release_probe(provider.name)
            raise
        if attempt_id is None:  # deleted meanwhile
            self.health.release_probe(provider.name)
            return
        if token and self.callback_url:
            request = dataclasses.replace(request, callback_url=self.callback_url(task.id, token))
        try:
            submitted = await provider.submit(request)
        except UpstreamError as err:
            await self._upstream_error(task.id, attempt_id, provider.name, err)
            return
        self.health.record_success(provider.name)

        def saved(t: Task) -> None:
            tasks.mark_submitted(
                t,
                self._attempt(t, attempt_id),
                submitted.upstream_task_id,
                submitted.status.estimated_time,
                self.settings.poll_interval,
            )
            t.progress = submitted.status.progress

        await self._commit(task.id, saved)
        if submitted.status.state in ("succeeded", "failed"):
            await self._finish(task.id, attempt_id, provider, submitted.status)

    def _build_request(self, task: Task) -> SubmitRequest:
        images = [
            InputImage(
                data=self.storage.read(f.sha256, f.ext),
                content_type=f.content_type,
                ext=f.ext,
                public_url=self.input_url(task, f),
            )
            for f in task.inputs
        ]
        mask = None
        if task.mask is not None:
            m = task.mask
            mask = InputImage(
                data=self.storage.read(m.sha256, m.ext),
                content_type=m.content_type,
                ext=m.ext,
                public_url=self.input_url(task, m),
            )
        return SubmitRequest(
            model=task.model,
            prompt=task.prompt,
            images=images,
            options=dict(task.options or {}),
            mask=mask,
        )

    def _candidates(self, task: Task) -> list[Provider]:
        """Providers this job may still go to, cheapest first: not skipped for it (operator
        fault, input it cannot take) and with tries left."""
        out = []
        for provider in self.providers:
            used = [a for a in task.attempt_rows if a.provider == provider.name]
            if any(a.state == "skipped" for a in used):
                continue
            if len(used) < self.settings.max_attempts:
                out.append(provider)
        return out

    def _choose_provider(self, task: Task) -> tuple[Provider | None, float | None]:
        """The cheapest usable candidate; or, if all are cooling down, how long to wait."""
        candidates = self._candidates(task)
        if not candidates:
            return None, None
        for provider in candidates:
            if self.health.allow(provider.name):
                return provider, None
        return None, min(self.health.wait_seconds(p.name) for p in candidates)

    # --- running: follow it ---------------------------------------------------------------------

    async def _follow(self, task: Task) -> None:
        provider = self._provider(task.provider)
        attempt = tasks.current_attempt(task)
        if provider is None or attempt is None or not task.upstream_task_id:
            name = task.provider
            await self._commit(
                task.id,
                lambda t: tasks.mark_failed(
                    t, "provider_gone", f"The provider {name!r} is no longer configured."
                ),
            )
            return
        attempt_id = attempt.id
        try:
            status = await provider.poll(task.upstream_task_id)
        except UpstreamError as err:
            if err.operator:
                # Our key stopped working while the provider holds the task: it may still finish
                # and bill it, so the job is never sent elsewhere. Keep following for a few
                # tries (a key being rotated), then end it saying so.
                self.health.record_operator_error(provider.name, err.message)
                refusals = self._poll_refusals.get(task.id, 0) + 1
                self._poll_refusals[task.id] = refusals
                if refusals >= POLL_REFUSALS_BEFORE_FAILING:
                    self._poll_refusals.pop(task.id, None)
                    await self._commit(
                        task.id,
                        lambda t, e=err: tasks.mark_failed(
                            t,
                            e.code,
                            f"{e.message} The provider refused the studio's key while following "
                            "this job; it was not sent to another provider, since the first "
                            "one may still finish and bill it.",
                        ),
                    )
                else:
                    await self._commit(
                        task.id, lambda t: tasks.schedule(t, self._backoff(t.poll_delay))
                    )
            elif err.retryable and err.code != "task_not_found":
                # The task is still there; only reading it failed. Keep following, slower.
                self.health.record_failure(provider.name, err.message)
                await self._commit(
                    task.id,
                    lambda t, e=err: tasks.schedule(t, self._backoff(t.poll_delay, e.retry_after)),
                )
            else:
                await self._upstream_error(task.id, attempt_id, provider.name, err)
            return
        self.health.record_success(provider.name)
        self._poll_refusals.pop(task.id, None)
        await self._finish(task.id, attempt_id, provider, status)

    async def _finish(
        self, task_id: str, attempt_id: int, provider: Provider, status: UpstreamStatus
    ) -> None:
        if status.state in ("pending", "running"):

            def progress(t: Task) -> None:
                t.progress = max(t.progress, min(99, status.progress))
                if status.estimated_time:
                    t.estimated_time = status.estimated_time
                tasks.schedule(t, self._backoff(t.poll_delay, grow=1.5))

            await self._commit(task_id, progress)
            return
        if status.state == "failed":
            err = status.error or UpstreamError(
                "unknown_error", "The provider failed.", retryable=True
            )
            await self._upstream_error(task_id, attempt_id, provider.name, err)
            return
        masked = None
        if not getattr(provider, "supports_mask", False):
            masked = await asyncio.to_thread(self._mask_context, task_id)
        try:
            files = await self._download_all(provider, status.result_urls, masked)
        except UpstreamError as err:
            if err.retryable:
                await self._commit(
                    task_id, lambda t: tasks.schedule(t, self._backoff(t.poll_delay))
                )
            else:
                await self._commit(task_id, lambda t, e=err: self._fail(t, attempt_id, e))
            return
        cost = provider.price * len(files)

        def done(t: Task) -> None:
            attempt = self._attempt(t, attempt_id)
            if attempt is not None:
                attempt.cost = cost
            tasks.end_attempt(attempt, "succeeded", None, None)
            t.cost = cost
            tasks.mark_succeeded(t, files)

        await self._commit(task_id, done)

    async def _download_all(
        self, provider: Provider, urls: list[str], masked: tuple[bytes, bytes] | None
    ) -> list[TaskFile]:
        files: list[TaskFile] = []
        for position, url in enumerate(urls):
            data = await provider.download(url, self.settings.result_max_bytes)
            if masked is not None:
                data = await asyncio.to_thread(self._composite, masked, data)
            files.append(await asyncio.to_thread(self._store_result, data, position))
        return files

    def _mask_context(self, task_id: str) -> tuple[bytes, bytes] | None:
        """(first input, mask) bytes when the job has a mask the provider did not apply."""
        with session_scope(self.sessions) as s:
            task = s.get(Task, task_id)
            if task is None or task.mask is None or not task.inputs:
                return None
            first, mask = task.inputs[0], task.mask
            return (
                self.storage.read(first.sha256, first.ext),
                self.storage.read(mask.sha256, mask.ext),
            )

    @staticmethod
    def _composite(masked: tuple[bytes, bytes], result: bytes) -> bytes:
        try:
            return composite(masked[0], result, masked[1])
        except (OSError, ValueError) as exc:
            raise UpstreamError(
                "bad_result", "The provider's result is not a usable image."
            ) from exc

    def _store_result(self, data: bytes, position: int) -> TaskFile:
        """Check the bytes decode as an image and keep them as the provider made them.

        Stored by content hash, so a download repeated after a crash never makes a second copy.
        """
        try:
            with Image.open(io.BytesIO(data), formats=list(RESULT_FORMATS)) as im:
                im.load()
                fmt = im.format or ""
                width, height = im.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise UpstreamError(
                "bad_result", "The provider's result is not a usable image."
            ) from exc
        ext, content_type = RESULT_FORMATS[fmt]
        sha = self.storage.put(data, ext)
        return TaskFile(
            role="result",
            position=position,
            sha256=sha,
            ext=ext,
            content_type=content_type,
            width=width,
            height=height,
            size_bytes=len(data),
        )

    # --- errors, retries, failover --------------------------------------------------------------

    async def _upstream_error(
        self, task_id: str, attempt_id: int, provider: str, err: UpstreamError
    ) -> None:
        """Record what the fault says about the provider, then decide the job's next step."""
        if err.operator:
            self.health.record_operator_error(provider, err.message)
        elif err.retryable or err.ambiguous:
            self.health.record_failure(provider, err.message)
        else:
            # The provider answered properly; the request itself was refused (e.g. content).
            self.health.record_success(provider)
        await self._commit(task_id, lambda t: self._after_error(t, attempt_id, err))

    def _after_error(self, task: Task, attempt_id: int, err: UpstreamError) -> None:
        """Runs in the job's transaction: ambiguous → stop; final → failed; operator or
        retryable → the same provider later or the next one, until none is left."""
        attempt = self._attempt(task, attempt_id)
        if err.ambiguous:
            tasks.end_attempt(attempt, "unknown", err.code, err.message)
            tasks.mark_failed(
                task,
                "submit_unknown",
                "The provider may have received this job, but its answer was lost "
                f"({err.message}) It was not sent again, so it cannot be billed twice; "
                "press Retry to send it again.",
            )
            return
        if not (err.retryable or err.operator):
            self._fail(task, attempt_id, err)
            return
        # An operator fault or an input this provider cannot take: move on from it for this job.
        skip = err.operator or err.code == "unsupported_input"
        tasks.end_attempt(attempt, "skipped" if skip else "failed", err.code, err.message)
        task.status = "queued"
        task.upstream_task_id = None
        task.progress = 0
        if not self._candidates(task):
            tasks.mark_failed(task, err.code, err.message)
            return
        if skip:
            tasks.schedule(task, 0.0)
        else:
            base = max(task.poll_delay, self.settings.poll_interval)
            tasks.schedule(task, self._backoff(base, err.retry_after))

    def _fail(self, task: Task, attempt_id: int, err: UpstreamError) -> None:
        tasks.end_attempt(self._attempt(task, attempt_id), "failed", err.code, err.message)
        tasks.mark_failed(task, err.code, err.message)

    def _ambiguous_after_crash(self, task: Task) -> None:
        attempt = tasks.current_attempt(task)
        msg = (
            "The studio stopped while sending this job, so it is unknown whether the provider "
            "received it. It was not sent again, so it cannot be billed twice; press Retry to "
            "send it again."
        )
        tasks.end_attempt(attempt, "unknown", "submit_unknown", msg)
        tasks.mark_failed(task, "submit_unknown", msg)

    def _timeout(self, task: Task) -> None:
        msg = (
            f"Timed out upstream: the job did not finish within {int(self.settings.job_timeout)} s."
        )
        tasks.end_attempt(tasks.current_attempt(task), "failed", "timeout", msg)
        tasks.mark_failed(task, "timeout", msg)

    def _last_error(self, task: Task) -> tuple[str, str] | None:
        for attempt in reversed(task.attempt_rows):
            if attempt.error_code:
                return attempt.error_code, attempt.error_message or ""
        return None

    def _backoff(
        self, current: float, retry_after: float | None = None, grow: float = 2.0
    ) -> float:
        """Exponential backoff with jitter, capped by QES_RETRY_MAX_DELAY."""
        base = self.settings.poll_interval if current <= 0 else current * grow
        delay = min(self.settings.retry_max_delay, base)
        delay = delay * random.uniform(0.8, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.settings.retry_max_delay))
        return max(0.05, delay)

    # --- plumbing -------------------------------------------------------------------------------

    def _provider(self, name: str | None) -> Provider | None:
        return next((p for p in self.providers if p.name == name), None)

    @staticmethod
    def _attempt(task: Task, attempt_id: int):  # type: ignore[no-untyped-def]
        return next((a for a in task.attempt_rows if a.id == attempt_id), None)

    @staticmethod
    def _session_of(task: Task) -> Session:
        from sqlalchemy.orm import object_session

        session = object_session(task)
        assert session is not None
        return session

    def _load(self, task_id: str) -> Task | None:
        with session_scope(self.sessions) as s:
            task = s.get(Task, task_id)
            if task is not None:
                _ = task.files, task.attempt_rows
            return task

    async def _commit(self, task_id: str, change):  # type: ignore[no-untyped-def]
        """Apply one change to the job's row in its own transaction (off the event loop)."""

        ended = False

        def run():  # type: ignore[no-untyped-def]
            nonlocal ended
            with session_scope(self.sessions) as s:
                task = s.get(Task, task_id)
                if task is None:
                    return None
                was_active = task.active
                result = change(task)
                if not task.active:
                    task.lease_owner = task.lease_until = None
                    ended = was_active
                return result

        result = await asyncio.to_thread(run)
        if ended:
            for hook in self.finish_hooks:
                try:
                    await hook(task_id)
                except Exception:
                    log.exception("finish hook failed for job %s", task_id)
        return result

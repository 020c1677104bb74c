"""The job's whole life: creation (with the history cap and the limits), every state change the
worker makes, deletion with its files, and the queries the page and the API read.

Every change is one committed transaction, so the database is the queue and a crash between two
steps leaves a row the worker can pick up again.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app import spend
from app.config import Settings
from app.errors import NotFound, StudioError
from app.images import IngestedImage
from app.models import ACTIVE, FINISHED, Attempt, Task, TaskFile, User, utcnow
from app.storage import LocalStorage, Storage

MODELS = ("qwen-image-edit", "qwen-image-edit-plus")


class LimitError(StudioError):
    """A refusal that passes with time: 429 with a Retry-After."""

    def __init__(self, code: str, message: str, retry_after: int) -> None:
        super().__init__(code, message, 429)
        self.retry_after = max(1, retry_after)


@dataclass(frozen=True)
class NewInput:
    image: IngestedImage
    original_name: str | None


FileKey = tuple[str, str]


def new_id() -> str:
    return secrets.token_hex(8)


def ensure_user(session: Session, user_id: str, name: str | None = None) -> User:
    user = session.get(User, user_id)
    if user is None:
        user = User(id=user_id, name=name)
        session.add(user)
        session.flush()
    return user


def check_limits(
    session: Session,
    settings: Settings,
    user_id: str,
    client_ip: str | None,
    images: int = 1,
) -> None:
    """Refuse a new job that would pass the per-user and per-address limits or the daily spend
    limit (before any upload is stored, so a refused request leaves nothing behind).

    ``images`` is how many result images the new job asks for (its ``n``), for the spend limit.
    Jobs deleted since still count toward the per-minute and spend limits (see app/spend.py).
    """
    now = utcnow()
    running = session.scalar(
        select(func.count()).where(Task.user_id == user_id, Task.status.in_(ACTIVE))
    )
    if running and running >= settings.max_running_per_user:
        raise LimitError(
            "too_many_running",
            f"You already have {running} jobs queued or running; the limit is "
            f"{settings.max_running_per_user}. Wait for one to finish.",
            max(2, int(settings.poll_interval * 5)),
        )
    window = now - timedelta(minutes=1)
    checks: list[tuple[int, dict[str, str], str]] = [
        (settings.jobs_per_minute, {"user_id": user_id}, "per user"),
    ]
    if client_ip:
        checks.append((settings.jobs_per_minute_per_ip, {"client_ip": client_ip}, "per address"))
    for limit, who, label in checks:
        if not limit:
            continue
        recent = spend.recent_starts(session, window, **who)
        if len(recent) >= limit:
            wait = (recent[-limit] + timedelta(minutes=1) - now).total_seconds()
            raise LimitError(
                "rate_limited",
                f"Too many new jobs: the limit is {limit} per minute {label}. "
                f"Try again in {max(1, int(wait) + 1)} seconds.",
                int(wait) + 1,
            )
    if settings.daily_spend_limit > 0:
        _check_daily_spend(session, settings, user_id, images, now)


def _check_daily_spend(
    session: Session, settings: Settings, user_id: str, images: int, now: datetime
) -> None:
    """QES_DAILY_SPEND_LIMIT: refuse a job whose least cost would take today's spend past it."""
    limit = settings.daily_spend_limit
    spent = spend.spent_today(session, settings, user_id, now)
    cost = spend.reservation_price(settings) * max(1, images)
    if spent + cost <= limit + spend.EPSILON:
        return
    wait = spend.seconds_to_utc_midnight(now)
    hours, minutes = divmod((wait + 59) // 60, 60)
    raise LimitError(
        "daily_spend_limit",
        f"Your daily spending limit of {_money(limit)} is reached: you have spent "
        f"{_money(spent)} today (UTC) and this job would cost at least {_money(cost)}. "
        f"Try again after midnight UTC, in {hours} h {minutes} min.",
        wait,
    )


def _money(value: float) -> str:
    """Prices as configured (0.0319 stays 0.0319, 0.1 shows as 0.10)."""
    text = f"{value:.4f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def create_task(
    session: Session,
    storage: Storage,
    settings: Settings,
    *,
    user_id: str,
    user_name: str | None,
    prompt: str,
    model: str,
    options: dict[str, Any],
    inputs: list[NewInput],
    client_ip: str | None,
    source: str = "web",
    mask: IngestedImage | None = None,
) -> tuple[Task, list[FileKey]]:
    """Store the inputs and queue the job; return it and the files a dropped old job freed.

    Runs inside the caller's transaction. The user's row is written first so that two requests of
    the same user are serialised on it, and the history cap cannot be raced past.
    """
    ensure_user(session, user_id, user_name)
    session.execute(update(User).where(User.id == user_id).values(name=User.name))
    check_limits(session, settings, user_id, client_ip, images=spend.requested_images(options))
    freed = _make_room(session, settings, user_id)

    task = Task(
        id=new_id(),
        user_id=user_id,
        prompt=prompt,
        model=model,
        options=options,
        status="queued",
        client_ip=client_ip,
        source=source,
        next_check_at=utcnow(),
    )
    for position, item in enumerate(inputs):
        img = item.image
        storage.put(img.data, img.ext)
        task.files.append(_file_row("input", position, img, item.original_name))
    if mask is not None:
        storage.put(mask.data, mask.ext)
        task.files.append(_file_row("mask", 0, mask, "mask.png"))
    session.add(task)
    session.flush()
    return task, freed


def _file_row(role: str, position: int, img: IngestedImage, name: str | None) -> TaskFile:
    return TaskFile(
        role=role,
        position=position,
        sha256=img.sha256,
        ext=img.ext,
        content_type=img.content_type,
        width=img.width,
        height=img.height,
        size_bytes=len(img.data),
        original_name=(name or "")[:255] or None,
    )


def _make_room(session: Session, settings: Settings, user_id: str) -> list[FileKey]:
    """Drop the user's oldest finished jobs until one more fits under the history limit."""
    total = session.scalar(select(func.count()).where(Task.user_id == user_id)) or 0
    freed: list[FileKey] = []
    while total >= settings.history_limit:
        oldest = session.scalars(
            select(Task)
            .where(Task.user_id == user_id, Task.status.in_(FINISHED))
            .order_by(Task.created_at, Task.id)
            .limit(1)
        ).first()
        if oldest is None:
            raise LimitError(
                "history_full",
                f"All {settings.history_limit} jobs in your history are still running; "
                "wait for one to finish before starting another.",
                max(2, int(settings.poll_interval * 5)),
            )
        freed.extend(_delete(session, oldest))
        total -= 1
    return freed


def _delete(session: Session, task: Task) -> list[FileKey]:
    keys = [(f.sha256, f.ext) for f in task.files]
    session.delete(task)
    session.flush()
    return keys


def unreferenced(session: Session, keys: Iterable[FileKey]) -> list[FileKey]:
    """The keys no remaining job uses: safe to delete from storage (content is shared by hash)."""
    out: list[FileKey] = []
    for sha, ext in set(keys):
        used = session.scalar(
            select(func.count()).where(TaskFile.sha256 == sha, TaskFile.ext == ext)
        )
        if not used:
            out.append((sha, ext))
    return out


def remove_files(session: Session, storage: Storage, keys: Iterable[FileKey]) -> None:
    for sha, ext in unreferenced(session, keys):
        storage.delete(sha, ext)


def get_task(session: Session, user_id: str, task_id: str) -> Task:
    """The caller's job; someone else's job is 'not found', exactly like a missing one."""
    task = session.get(Task, task_id)
    if task is None or task.user_id != user_id:
        raise NotFound()
    return task


def list_tasks(session: Session, user_id: str) -> list[Task]:
    return list(
        session.scalars(
            select(Task)
            .where(Task.user_id == user_id)
            .order_by(Task.created_at.desc(), Task.id.desc())
        )
    )


def counts(tasks: Iterable[Task]) -> tuple[int, int]:
    items = list(tasks)
    running = sum(1 for t in items if t.status in ACTIVE)
    completed = sum(1 for t in items if t.status == "succeeded")
    return running, completed


def delete_task(session: Session, user_id: str, task_id: str) -> list[FileKey]:
    task = get_task(session, user_id, task_id)
    return _delete(session, task)


def retry_task(
    session: Session, settings: Settings, user_id: str, task_id: str, client_ip: str | None
) -> Task:
    """Queue a failed or canceled job again with the same inputs (a fresh round of attempts).

    A retry may be billed again, so the running and spend limits apply as to a new job."""
    task = get_task(session, user_id, task_id)
    if task.status not in ("failed", "canceled"):
        raise StudioError("not_retryable", "Only a failed or canceled job can be retried.", 409)
    check_limits(session, settings, user_id, client_ip, images=spend.requested_images(task.options))
    task.status = "queued"
    task.progress = 0
    task.error_code = task.error_message = None
    task.upstream_task_id = None
    task.provider = None
    task.finished_at = None
    task.created_at = utcnow()
    task.next_check_at = utcnow()
    task.poll_delay = 0.0
    task.attempts = 0
    if task.client_callback_url:
        task.client_callback_state = "pending"  # the gateway client hears the new outcome too
    return task


# --- transitions the worker makes -------------------------------------------------------------


def claim(session: Session, task_id: str, owner: str, lease_seconds: float) -> bool:
    """Take the job for one step; atomic, so two workers never run the same job."""
    now = utcnow()
    result = session.execute(
        update(Task)
        .where(
            Task.id == task_id,
            Task.status.in_(ACTIVE),
            (Task.lease_until.is_(None)) | (Task.lease_until < now) | (Task.lease_owner == owner),
        )
        .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def due_task_ids(session: Session, limit: int, owner: str) -> list[str]:
    now = utcnow()
    return list(
        session.scalars(
            select(Task.id)
            .where(
                Task.status.in_(ACTIVE),
                Task.next_check_at <= now,
                (Task.lease_until.is_(None))
                | (Task.lease_until < now)
                | (Task.lease_owner == owner),
            )
            .order_by(Task.next_check_at)
            .limit(limit)
        )
    )


def renew_leases(session: Session, task_ids: list[str], owner: str, lease_seconds: float) -> None:
    session.execute(
        update(Task)
        .where(Task.id.in_(task_ids), Task.lease_owner == owner)
        .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )


def next_due_at(session: Session, exclude: Iterable[str] = ()) -> datetime | None:
    """When the next job (other than those in ``exclude``, already being stepped) is due."""
    query = select(func.min(Task.next_check_at)).where(Task.status.in_(ACTIVE))
    exclude = list(exclude)
    if exclude:
        query = query.where(Task.id.not_in(exclude))
    return session.scalar(query)


def release_leases(session: Session, owners: Iterable[str]) -> int:
    owners = list(owners)
    if not owners:
        return 0
    result = session.execute(
        update(Task)
        .where(Task.lease_owner.in_(owners))
        .values(lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount  # type: ignore[attr-defined]


def lease_owners(session: Session) -> list[str]:
    return list(session.scalars(select(Task.lease_owner).where(Task.lease_owner.is_not(None))))


def start_attempt(session: Session, task: Task, provider: str) -> Attempt:
    """Record the paid request *before* it is sent: a crash after this is the ambiguous case."""
    attempt = Attempt(task_id=task.id, provider=provider, state="submitting")
    task.attempt_rows.append(attempt)
    task.attempts += 1
    task.provider = provider
    session.flush()
    return attempt


def mark_submitted(
    task: Task, attempt: Attempt, upstream_id: str, estimated: int | None, poll: float
) -> None:
    attempt.upstream_task_id = upstream_id
    attempt.state = "running"
    task.status = "running"
    task.upstream_task_id = upstream_id
    task.estimated_time = estimated
    task.started_at = task.started_at or utcnow()
    schedule(task, poll)


def schedule(task: Task, delay: float) -> None:
    task.poll_delay = delay
    task.next_check_at = utcnow() + timedelta(seconds=delay)


def end_attempt(attempt: Attempt | None, state: str, code: str | None, message: str | None) -> None:
    if attempt is None:
        return
    attempt.state = state
    attempt.error_code = code
    attempt.error_message = message
    attempt.ended_at = utcnow()


def mark_failed(task: Task, code: str, message: str) -> None:
    task.status = "failed"
    task.error_code = code
    task.error_message = message
    task.finished_at = utcnow()
    task.lease_owner = None
    task.lease_until = None


def mark_succeeded(task: Task, results: list[TaskFile]) -> None:
    for result in results:
        task.files.append(result)
    task.status = "succeeded"
    task.progress = 100
    task.error_code = task.error_message = None
    task.finished_at = utcnow()
    task.lease_owner = None
    task.lease_until = None


def current_attempt(task: Task) -> Attempt | None:
    return task.attempt_rows[-1] if task.attempt_rows else None


# --- what the page and the API show -----------------------------------------------------------

UrlFor = Callable[[Task, TaskFile, bool], str]


def file_json(task: Task, f: TaskFile, url_for: UrlFor) -> dict[str, Any]:
    return {
        "url": url_for(task, f, False),
        "thumbnail_url": url_for(task, f, True),
        "width": f.width,
        "height": f.height,
        "content_type": f.content_type,
        "size_bytes": f.size_bytes,
        "name": f.original_name,
    }


def task_json(task: Task, url_for: UrlFor) -> dict[str, Any]:
    return {
        "id": task.id,
        "status": task.status,
        "progress": task.progress,
        "prompt": task.prompt,
        "model": task.model,
        "options": task.options or {},
        "provider": task.provider,
        "estimated_time": task.estimated_time,
        "created_at": _iso(task.created_at),
        "updated_at": _iso(task.updated_at),
        "finished_at": _iso(task.finished_at),
        "inputs": [file_json(task, f, url_for) for f in task.inputs],
        "results": [file_json(task, f, url_for) for f in task.results],
        "mask": file_json(task, task.mask, url_for) if task.mask else None,
        "error": (
            {"code": task.error_code, "message": task.error_message} if task.error_code else None
        ),
        "attempts": [
            {
                "provider": a.provider,
                "state": a.state,
                "started_at": _iso(a.started_at),
                "ended_at": _iso(a.ended_at),
                "error": {"code": a.error_code, "message": a.error_message}
                if a.error_code
                else None,
            }
            for a in task.attempt_rows
        ],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None


def purge_user_tasks(session: Session, user_id: str) -> list[FileKey]:
    """Remove every job of a user (the kiosk's idle reset); returns the freed file keys."""
    keys = [
        (f.sha256, f.ext)
        for f in session.scalars(select(TaskFile).join(Task).where(Task.user_id == user_id))
    ]
    session.execute(delete(Task).where(Task.user_id == user_id))
    return keys


def sweep_orphans(session: Session, storage: LocalStorage, grace: float) -> int:
    """Delete stored files no job refers to (left by a crash between writing a file and
    committing its row), if older than ``grace`` seconds so an ingest in flight is spared."""
    referenced = {(sha, ext) for sha, ext in session.execute(select(TaskFile.sha256, TaskFile.ext))}
    cutoff = time.time() - grace
    removed = 0
    for sha, ext in storage.all_keys() - referenced:
        path = storage.path(sha, ext)
        try:
            if path.stat().st_mtime <= cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed

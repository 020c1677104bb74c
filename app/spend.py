"""What a user's jobs cost today, for the optional daily spend limit (``QES_DAILY_SPEND_LIMIT``).

The spend of a user on a UTC day is the sum, over the jobs they started that day, of what each
job costs at the providers' configured prices (``QES_EVOLINK_PRICE``, ``QES_FAL_PRICE``,
``QES_DASHSCOPE_PRICE``; the built-in simulator is free):

* a job that succeeded costs its ``cost`` (the worker records it), or, if that is not known,
  its number of result images (at least 1) times the price of the provider it ran on;
* a job still queued or running holds a *reservation*: the cheapest configured provider's price
  times the images it asked for (``n``, else 1), since it will cost at least that;
* a failed or canceled job costs nothing (providers bill results, not failures).

Deleting a job must not give the money back, so each accepted job also gets a row in the
``usage_events`` ledger (:class:`app.models.UsageEvent`), which outlives the job. Jobs that
still exist are read live (and their ledger rows brought up to date); jobs that are gone count
with the amount their row had when they were deleted. A job created by a path that did not
write a ledger row still counts while it exists, and gets its row when it is deleted.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper, Session

from app.config import Settings
from app.models import ACTIVE, FINISHED, Task, UsageEvent

# Provider name (as the worker records it on a job) -> the setting holding its price.
PRICE_SETTINGS: dict[str, str] = {
    "evolink": "evolink_price",
    "fal": "fal_price",
    "dashscope": "dashscope_price",
}
_KEY_SETTINGS: dict[str, tuple[str, str]] = {
    "evolink": ("evolink_api_key", "evolink_enabled"),
    "fal": ("fal_api_key", "fal_enabled"),
    "dashscope": ("dashscope_api_key", "dashscope_enabled"),
}
# Float sums of prices such as 0.05 are not exact; a spend this close to the limit is "at" it.
EPSILON = 1e-9


def provider_prices(settings: Settings) -> dict[str, float]:
    """The configured price per result image of every provider the worker may name."""
    prices = {name: float(getattr(settings, field)) for name, field in PRICE_SETTINGS.items()}
    prices["simulator"] = 0.0
    return prices


def reservation_price(settings: Settings) -> float:
    """The cheapest configured provider's price: the least a new job will cost per image."""
    if settings.simulated:
        return 0.0
    configured = [
        float(getattr(settings, PRICE_SETTINGS[name]))
        for name, (key, enabled) in _KEY_SETTINGS.items()
        if getattr(settings, key) and getattr(settings, enabled)
    ]
    return min(configured, default=0.0)


def requested_images(options: dict[str, Any] | None) -> int:
    n = (options or {}).get("n", 1)
    return n if isinstance(n, int) and n >= 1 else 1


def job_cost(task: Task, prices: dict[str, float], reserve: float) -> tuple[float, int, float]:
    """(amount, images, unit price) of a job in its current state; see the module docstring."""
    if task.status == "succeeded":
        images = max(1, len(task.results))
        unit = prices.get(task.provider or "", reserve)
        if task.cost and task.cost > 0:
            return float(task.cost), images, float(task.cost) / images
        return images * unit, images, unit
    if task.status in ACTIVE:
        images = requested_images(task.options)
        return images * reserve, images, reserve
    return 0.0, 0, 0.0


def record(session: Session, settings: Settings, task: Task) -> UsageEvent:
    """Write the ledger row of a job just accepted (in the transaction that stores the job)."""
    reserve = reservation_price(settings)
    images = requested_images(task.options)
    row = UsageEvent(
        user_id=task.user_id,
        task_id=task.id,
        client_ip=task.client_ip,
        created_at=task.created_at,
        provider=None,
        status=task.status,
        images=images,
        unit_price=reserve,
        amount=images * reserve,
    )
    session.add(row)
    session.flush()
    return row


def utc_day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def seconds_to_utc_midnight(now: datetime) -> int:
    """Seconds until the next UTC day begins (``now`` is naive UTC, like every stored time)."""
    return max(1, int((utc_day_start(now) + timedelta(days=1) - now).total_seconds()) + 1)


def spent_today(session: Session, settings: Settings, user_id: str, now: datetime) -> float:
    """The user's spend since UTC midnight; settles the ledger rows of jobs that still exist."""
    start = utc_day_start(now)
    prices = provider_prices(settings)
    reserve = reservation_price(settings)
    total = 0.0
    counted: set[str] = set()
    rows = session.scalars(
        select(UsageEvent).where(UsageEvent.user_id == user_id, UsageEvent.created_at >= start)
    )
    for row in rows:
        task = session.get(Task, row.task_id)
        if task is not None and task.user_id == user_id:
            amount, images, unit = job_cost(task, prices, reserve)
            _settle(row, task, amount, images, unit)
            counted.add(task.id)
        total += row.amount
    live = session.scalars(select(Task).where(Task.user_id == user_id, Task.created_at >= start))
    for task in live:
        if task.id not in counted:
            total += job_cost(task, prices, reserve)[0]
    return total


def _settle(row: UsageEvent, task: Task, amount: float, images: int, unit: float) -> None:
    if task.status in ACTIVE:
        # Still a reservation: keep the price it was made at unless the job asked for more.
        amount = max(amount, row.amount)
    values = {
        "status": task.status,
        "provider": task.provider,
        "images": images,
        "unit_price": unit,
        "amount": amount,
    }
    for name, value in values.items():
        if getattr(row, name) != value:
            setattr(row, name, value)


def recent_starts(
    session: Session, since: datetime, *, user_id: str | None = None, client_ip: str | None = None
) -> list[datetime]:
    """When the jobs of a user (or from an address) started after ``since``, oldest first.

    Jobs deleted since still count, through their ledger rows: deleting a job must not make room
    under a per-minute limit.
    """
    if user_id is not None:
        task_where = Task.user_id == user_id
        row_where = UsageEvent.user_id == user_id
    else:
        task_where = Task.client_ip == client_ip
        row_where = UsageEvent.client_ip == client_ip
    starts: dict[str, datetime] = {
        task_id: created
        for task_id, created in session.execute(
            select(Task.id, Task.created_at).where(task_where, Task.created_at > since)
        )
    }
    for task_id, created in session.execute(
        select(UsageEvent.task_id, UsageEvent.created_at).where(
            row_where, UsageEvent.created_at > since
        )
    ):
        starts.setdefault(task_id, created)
    return sorted(starts.values())


@event.listens_for(Task, "before_delete")
def _settle_before_delete(_mapper: Mapper[Task], connection: Connection, task: Task) -> None:
    """Freeze the job's spend in the ledger as the job row goes (user delete, history cap).

    No settings reach an ORM event, so a success without a recorded ``cost`` is priced at the
    row's unit price (the reservation's); the worker records ``cost`` on every success.
    """
    table = UsageEvent.__table__
    values: dict[str, Any] = {"status": task.status, "provider": task.provider}
    if task.status == "succeeded":
        images = max(1, len(task.results))
        values["images"] = images
        if task.cost and task.cost > 0:
            values["amount"] = float(task.cost)
            values["unit_price"] = float(task.cost) / images
        else:
            values["amount"] = table.c.unit_price * images
    elif task.status in FINISHED:
        values.update(amount=0.0, images=0)
    changed = connection.execute(
        update(table).where(table.c.task_id == task.id).values(**values)
    ).rowcount
    if changed:
        return
    # A job from a path that kept no ledger row: write what it is known to have cost.
    amount = float(task.cost or 0.0) if task.status == "succeeded" else 0.0
    connection.execute(
        insert(table).values(
            user_id=task.user_id,
            task_id=task.id,
            client_ip=task.client_ip,
            created_at=task.created_at,
            provider=task.provider,
            status=task.status,
            images=max(1, len(task.results)) if task.status == "succeeded" else 0,
            unit_price=0.0,
            amount=amount,
        )
    )

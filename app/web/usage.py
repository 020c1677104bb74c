"""Usage and cost: jobs, images, provider and spend by day, for a user and (admins) the team.

Spend is what the studio's own configuration says a job cost, not an invoice: ``Task.cost`` when
the worker recorded one, otherwise (result images, at least 1) x the configured price per image of
the provider that ran it (``QES_EVOLINK_PRICE``, ``QES_FAL_PRICE``, ``QES_DASHSCOPE_PRICE``; the
built-in simulator costs 0) -- the same rule as the daily spend limit (app/spend.py). Only
succeeded jobs count as spent: the providers do not bill failures. Days are UTC days on which the
job was accepted.

Jobs are read from the ``usage_events`` ledger (one row per accepted job, kept when the job is
deleted by hand or by the history cap), joined with the job itself while it still exists; jobs
older than the ledger count while they exist. So deleting a job does not lower the usage.

"Spent today" next to ``QES_DAILY_SPEND_LIMIT`` is the limit's own count (app/spend.py), which
also holds a reservation for jobs still queued or running, so it can exceed the succeeded spend.

Admins are the users named in ``QES_ADMINS``, matched against the name the login proxy asserts.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import spend
from app.auth import Principal, Unauthorized
from app.errors import StudioError
from app.models import Task, UsageEvent, User, utcnow
from app.web import pages
from app.web.deps import SessionDep, Studio, StudioDep, UserDep, current_user

router = APIRouter(tags=["usage"])

NOTE = (
    "Spend counts succeeded jobs only, at each provider's configured price per result image "
    "(the simulator costs 0). Deleted jobs still count: each accepted job is kept in a usage "
    "ledger that outlives it (jobs from before the ledger existed count only while they are "
    "in the history)."
)


@dataclass
class UsageRow:
    day: str
    user: str
    provider: str
    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    images: int = 0
    spend: float = 0.0


@dataclass(frozen=True)
class _Entry:
    """One job's part in the usage: live from the job, or from its ledger row once deleted."""

    created_at: datetime
    user_id: str
    provider: str | None
    status: str
    images: int
    spend: float


def prices(studio: Studio) -> dict[str, float]:
    """Configured price per image of each provider the studio knows."""
    table = spend.provider_prices(studio.settings)
    if studio.worker is not None:
        for provider in studio.worker.providers:
            table.setdefault(provider.name, provider.price)
    return table


def job_spend(task: Task, price_table: dict[str, float], reserve: float) -> float:
    """What a job cost at the configured prices; only succeeded jobs are spent."""
    if task.status != "succeeded":
        return 0.0
    return spend.job_cost(task, price_table, reserve)[0]


def is_admin(studio: Studio, session: Session, user: Principal) -> bool:
    admins = {a.strip() for a in studio.settings.admins if a.strip()}
    if not admins:
        return False
    name = user.name
    if name is None:  # a token or cookie: the name the proxy asserted for this user, if any
        row = session.get(User, user.user_id)
        name = row.name if row is not None else None
    return name in admins


def _entries(studio: Studio, session: Session, user_id: str | None) -> list[_Entry]:
    table = prices(studio)
    reserve = spend.reservation_price(studio.settings)
    job_query = select(Task)
    event_query = select(UsageEvent)
    if user_id is not None:
        job_query = job_query.where(Task.user_id == user_id)
        event_query = event_query.where(UsageEvent.user_id == user_id)
    live = {t.id: t for t in session.scalars(job_query)}
    out: list[_Entry] = []

    def from_job(task: Task, created: datetime) -> _Entry:
        images = len(task.results) if task.status == "succeeded" else 0
        cost = job_spend(task, table, reserve)
        return _Entry(created, task.user_id, task.provider, task.status, images, cost)

    for event in session.scalars(event_query):
        task = live.pop(event.task_id, None)
        if task is not None and task.user_id == event.user_id:
            out.append(from_job(task, event.created_at))
            continue
        done = event.status == "succeeded"
        out.append(
            _Entry(
                event.created_at,
                event.user_id,
                event.provider,
                event.status,
                event.images if done else 0,
                float(event.amount) if done else 0.0,
            )
        )
    out.extend(from_job(task, task.created_at) for task in live.values())
    return out


def collect(studio: Studio, session: Session, user: Principal, team: bool) -> dict[str, Any]:
    """Usage rows by day (and provider, and user for the team), totals and the daily limit."""
    entries = _entries(studio, session, None if team else user.user_id)
    names = {u.id: u.name for u in session.scalars(select(User))} if team else {}
    rows: dict[tuple[str, str, str], UsageRow] = {}
    for entry in entries:
        day = entry.created_at.date().isoformat()
        who = (names.get(entry.user_id) or entry.user_id) if team else ""
        provider = entry.provider or "none"
        row = rows.setdefault((day, who, provider), UsageRow(day, who, provider))
        row.jobs += 1
        if entry.status == "succeeded":
            row.succeeded += 1
            row.images += entry.images
        elif entry.status in ("failed", "canceled"):
            row.failed += 1
        row.spend += entry.spend
    ordered = sorted(rows.values(), key=lambda r: (r.day, r.user, r.provider), reverse=True)
    for row in ordered:
        row.spend = round(row.spend, 6)
    totals = {
        "jobs": sum(r.jobs for r in ordered),
        "succeeded": sum(r.succeeded for r in ordered),
        "failed": sum(r.failed for r in ordered),
        "images": sum(r.images for r in ordered),
        "spend": round(sum(r.spend for r in ordered), 6),
    }
    by_provider: dict[str, float] = {}
    for row in ordered:
        by_provider[row.provider] = round(by_provider.get(row.provider, 0.0) + row.spend, 6)
    return {
        "scope": "team" if team else "user",
        "currency": "USD",
        "prices": prices(studio),
        "rows": [asdict(r) for r in ordered],
        "totals": totals,
        "spend_by_provider": dict(sorted(by_provider.items())),
        "daily_limit": daily_limit(studio, session, user),
        "admin": is_admin(studio, session, user),
        "note": NOTE,
    }


def daily_limit(studio: Studio, session: Session, user: Principal) -> dict[str, float] | None:
    """Today's spend against QES_DAILY_SPEND_LIMIT, counted exactly as the limit counts it."""
    limit = studio.settings.daily_spend_limit
    if not limit:
        return None
    spent = spend.spent_today(session, studio.settings, user.user_id, utcnow())
    return {
        "limit": limit,
        "spent_today": round(spent, 6),
        "left": round(max(0.0, limit - spent), 6),
    }


def _scope(studio: Studio, session: Session, user: Principal, scope: str | None) -> bool:
    """True for the team view; refuses it to anyone not in QES_ADMINS."""
    if scope in (None, "", "user", "me"):
        return False
    if scope != "team":
        raise StudioError("invalid_scope", "scope must be 'user' or 'team'.", 400)
    if not is_admin(studio, session, user):
        raise StudioError(
            "forbidden", "Team usage is shown to admins only (the users in QES_ADMINS).", 403
        )
    return True


_CSV_RISKY = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """Keep a spreadsheet from reading a user name as a formula."""
    if isinstance(value, str) and value.startswith(_CSV_RISKY):
        return "'" + value
    return value


def to_csv(data: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    team = data["scope"] == "team"
    header = (
        ["day"]
        + (["user"] if team else [])
        + ["provider", "jobs", "succeeded", "failed", "images", "spend_usd"]
    )
    writer.writerow(header)
    for row in data["rows"]:
        writer.writerow(
            [row["day"]]
            + ([_cell(row["user"])] if team else [])
            + [
                _cell(row["provider"]),
                row["jobs"],
                row["succeeded"],
                row["failed"],
                row["images"],
                f"{row['spend']:.4f}",
            ]
        )
    return out.getvalue()


@router.get("/api/usage", summary="Jobs, images and spend by day (scope=team for admins)")
def usage_json(
    studio: StudioDep, user: UserDep, session: SessionDep, scope: str | None = None
) -> dict[str, Any]:
    team = _scope(studio, session, user, scope)
    return collect(studio, session, user, team)


@router.get("/usage.csv", summary="The usage table as CSV (scope=team for admins)")
def usage_csv(
    studio: StudioDep, user: UserDep, session: SessionDep, scope: str | None = None
) -> Response:
    team = _scope(studio, session, user, scope)
    data = collect(studio, session, user, team)
    name = f"usage-{'team' if team else 'mine'}-{date.today().isoformat()}.csv"
    return Response(
        to_csv(data),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/usage", response_class=HTMLResponse, include_in_schema=False)
def usage_page(
    request: Request, studio: StudioDep, session: SessionDep, scope: str | None = None
) -> Any:
    try:
        user = current_user(request, studio, session)
    except Unauthorized as exc:
        return pages._render(request, "unauthorized.html", {"error": exc}, 401)
    error: str | None = None
    status = 200
    try:
        team = _scope(studio, session, user, scope)
    except StudioError as exc:
        team, error, status = False, exc.message, exc.status_code
    data = collect(studio, session, user, team)
    context = {"usage": data, "team": team, "error": error, "page": "usage"}
    return pages._render(request, "usage.html", context, status)

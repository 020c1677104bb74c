"""ORM rows: users, their jobs, the files of a job, each upstream attempt, API tokens.

Times are stored as naive UTC datetimes so SQLite and PostgreSQL compare them the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "canceled")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # Anonymous users have no name; proxy users are keyed by the name the proxy asserts.
    name: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_user_created", "user_id", "created_at"),
        Index("ix_tasks_status_next", "status", "next_check_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    prompt: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(64))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[int] = mapped_column(Integer, default=0)
    provider: Mapped[str | None] = mapped_column(String(32))
    upstream_task_id: Mapped[str | None] = mapped_column(String(128))
    estimated_time: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    client_ip: Mapped[str | None] = mapped_column(String(64))
    # Where the job came from: "web" (page and /api) or "gateway" (the EvoLink-compatible /v1).
    source: Mapped[str] = mapped_column(String(16), default="web")
    # Secret per-job token in the callback URL given to a provider (only when we are https).
    callback_token: Mapped[str | None] = mapped_column(String(64))
    # The gateway client's own callback_url, and whether it has been told the outcome.
    client_callback_url: Mapped[str | None] = mapped_column(Text)
    client_callback_state: Mapped[str | None] = mapped_column(String(16))
    # What the job cost at the provider's configured price (set when results are saved).
    cost: Mapped[float] = mapped_column(default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    # Worker bookkeeping: when to look at the job next, the current backoff, and the lease.
    next_check_at: Mapped[datetime] = mapped_column(default=utcnow)
    poll_delay: Mapped[float] = mapped_column(default=0.0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column()

    files: Mapped[list[TaskFile]] = relationship(
        back_populates="task",
        cascade="all, delete-orphan",
        order_by="(TaskFile.role, TaskFile.position)",
        lazy="selectin",
    )
    attempt_rows: Mapped[list[Attempt]] = relationship(
        back_populates="task", cascade="all, delete-orphan", order_by="Attempt.id", lazy="selectin"
    )

    @property
    def inputs(self) -> list[TaskFile]:
        return [f for f in self.files if f.role == "input"]

    @property
    def results(self) -> list[TaskFile]:
        return [f for f in self.files if f.role == "result"]

    @property
    def mask(self) -> TaskFile | None:
        return next((f for f in self.files if f.role == "mask"), None)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


class TaskFile(Base):
    __tablename__ = "task_files"
    __table_args__ = (Index("ix_task_files_sha256", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(8))  # "input" | "result" | "mask"
    position: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    ext: Mapped[str] = mapped_column(String(8))
    content_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    original_name: Mapped[str | None] = mapped_column(String(255))

    task: Mapped[Task] = relationship(back_populates="files")


class Attempt(Base):
    """One try at one provider. Written as ``submitting`` before the paid request goes out."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    upstream_task_id: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))  # submitting|running|succeeded|failed|unknown
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    cost: Mapped[float] = mapped_column(default=0.0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column()

    task: Mapped[Task] = relationship(back_populates="attempt_rows")


class ApiToken(Base):
    """A personal API token; only its SHA-256 is kept, the secret is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()


class UsageEvent(Base):
    """One accepted job's spend, kept apart from the job: the ledger behind QES_DAILY_SPEND_LIMIT.

    Why a separate table: the limit must not drop when a user deletes a job (or the history cap
    drops one), so the amount lives in a row that deleting the job does not touch (no foreign
    key to ``tasks`` on purpose). One row per job:

    * written when the job is accepted, as a *reservation*: ``images`` (the job's ``n``, else 1)
      times ``unit_price``, the cheapest configured provider's price, ``status`` = ``queued``;
    * *settled* to what the job really cost whenever the user's spend is computed and once more
      just before the job row is deleted: ``status`` becomes the job's last known status,
      ``provider``/``images``/``unit_price`` those it ran with, and ``amount`` the job's ``cost``
      (or images × price), 0 for ``failed``/``canceled`` (providers do not bill those).

    Reading it for a usage page: a user's spend on a UTC day is ``sum(amount)`` over their rows
    with ``created_at`` on that day; rows with ``status`` queued/running are still estimates.
    Prices are in the providers' configured unit (``QES_*_PRICE``). ``client_ip`` lets the
    per-address rate limit count jobs that were deleted since.
    """

    __tablename__ = "usage_events"
    __table_args__ = (Index("ix_usage_events_user_created", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(40))
    task_id: Mapped[str] = mapped_column(String(32), unique=True)
    client_ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    provider: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    images: Mapped[int] = mapped_column(Integer, default=1)
    unit_price: Mapped[float] = mapped_column(default=0.0)
    amount: Mapped[float] = mapped_column(default=0.0)

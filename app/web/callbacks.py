"""Provider callbacks: a nudge, never the truth.

A provider that supports it (EvoLink's ``callback_url``) is given
``{QES_PUBLIC_BASE_URL}/callbacks/{job}/{secret token}`` when the studio is reachable over https.
A callback only moves the job's next check to now and wakes the worker, which then re-reads the
task from the provider with our key. The body is never read: forged, duplicate, late and unknown
callbacks change nothing and are answered at once.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Response
from sqlalchemy import update

from app.models import ACTIVE, Task, utcnow
from app.web.deps import SessionDep, StudioDep

router = APIRouter(tags=["callbacks"])


def url_builder(public_base_url: str | None):  # type: ignore[no-untyped-def]
    """The callback URL maker, or None when providers could not (or must not) call us."""
    if not public_base_url or not public_base_url.startswith("https://"):
        return None

    def build(task_id: str, token: str) -> str:
        return f"{public_base_url}/callbacks/{task_id}/{token}"

    return build


@router.post("/callbacks/{task_id}/{token}", status_code=204, summary="Provider callback (a nudge)")
def provider_callback(task_id: str, token: str, studio: StudioDep, session: SessionDep) -> Response:
    task = session.get(Task, task_id)
    if task is None or not task.callback_token:
        return Response(status_code=404)
    if not hmac.compare_digest(task.callback_token.encode(), token.encode()):
        return Response(status_code=404)
    if task.status in ACTIVE:
        session.execute(
            update(Task)
            .where(Task.id == task_id, Task.status.in_(ACTIVE))
            .values(next_check_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if studio.worker is not None:
            studio.worker.wake()
    return Response(status_code=204)

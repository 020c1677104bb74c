"""Serving stored images: the owner's links, and signed links that leave the owner's session.

Files are looked up through the job (so another user's job is a 404, like a missing one) and
always served with the content type we decided at ingest, never one derived from a name.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from app import tasks
from app.errors import NotFound
from app.images import make_thumbnail
from app.models import Task, TaskFile
from app.web.deps import SessionDep, StudioDep, UserDep

router = APIRouter(tags=["files"])

ROLES = {"inputs": "input", "results": "result", "masks": "mask"}


def _find(task: Task, role: str, position: int) -> TaskFile:
    for f in task.files:
        if f.role == role and f.position == position:
            return f
    raise NotFound("No such file.")


def _image_response(data: bytes, content_type: str, filename: str, private: bool) -> Response:
    return Response(
        data,
        media_type=content_type,
        headers={
            "Cache-Control": ("private" if private else "public") + ", max-age=86400, immutable",
            "Content-Disposition": f'inline; filename="{filename}"',
        },
    )


@router.get("/files/{task_id}/{role}/{position}", summary="A job's input or result (owner only)")
def get_file(
    task_id: str, role: str, position: int, studio: StudioDep, user: UserDep, session: SessionDep
) -> Response:
    if role not in ROLES:
        raise NotFound("No such file.")
    f = _find(tasks.get_task(session, user.user_id, task_id), ROLES[role], position)
    data = studio.storage.read(f.sha256, f.ext)
    return _image_response(data, f.content_type, f"{task_id}-{f.role}-{position}.{f.ext}", True)


@router.get("/files/{task_id}/{role}/{position}/thumb", summary="A small JPEG preview")
async def get_thumb(
    task_id: str, role: str, position: int, studio: StudioDep, user: UserDep, session: SessionDep
) -> Response:
    if role not in ROLES:
        raise NotFound("No such file.")
    f = _find(tasks.get_task(session, user.user_id, task_id), ROLES[role], position)
    data = await run_in_threadpool(studio.storage.read, f.sha256, f.ext)
    thumb = await run_in_threadpool(make_thumbnail, data)
    return _image_response(thumb, "image/jpeg", f"{task_id}-{position}-thumb.jpg", True)


@router.get("/s/{token}/{name}", summary="A signed, expiring link to one file")
def signed_file(token: str, name: str, studio: StudioDep, session: SessionDep) -> Response:
    grant = studio.signer.verify(token, studio.settings.link_ttl)
    if grant is None:
        raise NotFound("This link is not valid or has expired.")
    task_id, role, position = grant
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound("No such file.")
    f = _find(task, role, position)
    data = studio.storage.read(f.sha256, f.ext)
    return _image_response(data, f.content_type, f"{role}-{position}.{f.ext}", False)


def signed_url(studio_base: str, token: str, ext: str, role: str, position: int) -> str:
    return f"{studio_base}/s/{token}/{role}-{position + 1}.{ext}"

"""The JSON API under /api: jobs, their files, personal tokens. Thin: each route calls one
function of intake/tasks and renders the result."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.datastructures import UploadFile

from app import auth, tasks
from app.errors import InputError, NotFound, StudioError
from app.intake import Upload, accept_job
from app.models import ApiToken, Task, TaskFile
from app.web.deps import SessionDep, StudioDep, UserDep, client_ip
from app.web.forms import job_form

router = APIRouter(prefix="/api", tags=["api"])

OPTION_FIELDS = ("n", "negative_prompt", "size", "seed", "prompt_extend", "watermark")

_TASK_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["images", "prompt"],
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                            "maxItems": 3,
                            "description": "1-3 images (jpg, png, bmp, webp, tiff), 10 MB each, "
                            "384-3072 px per side.",
                        },
                        "prompt": {"type": "string", "description": "At most 2000 tokens."},
                        "model": {
                            "type": "string",
                            "enum": list(tasks.MODELS),
                            "default": "qwen-image-edit",
                        },
                        "n": {"type": "integer", "minimum": 1, "maximum": 6},
                        "negative_prompt": {"type": "string", "maxLength": 500},
                        "size": {"type": "string", "pattern": "^[0-9]+x[0-9]+$"},
                        "seed": {"type": "integer", "minimum": 0, "maximum": 2147483647},
                        "prompt_extend": {"type": "boolean"},
                        "watermark": {"type": "boolean"},
                        "mask": {
                            "type": "string",
                            "format": "binary",
                            "description": "Optional greyscale PNG the size of the first image: "
                            "white = edit, black = keep.",
                        },
                    },
                }
            }
        },
    }
}


def file_url(request: Request, task: Task, f: TaskFile, thumb: bool) -> str:
    path = f"/files/{task.id}/{f.role}s/{f.position}"
    if thumb:
        path += "/thumb"
    return str(request.base_url).rstrip("/") + path


def render(request: Request, task: Task) -> dict[str, Any]:
    return tasks.task_json(task, lambda t, f, thumb: file_url(request, t, f, thumb))


@router.post("/tasks", status_code=202, openapi_extra=_TASK_FORM, summary="Start an edit job")
async def create_task(request: Request, studio: StudioDep, user: UserDep) -> dict[str, Any]:
    async with job_form(request, max_files=10, max_fields=50) as form:
        uploads = []
        for item in form.getlist("images"):
            if not isinstance(item, UploadFile):
                raise InputError("invalid_images", "The field 'images' must carry files.")
            uploads.append(Upload(item.filename, item.size, item.file))
        mask_part = form.get("mask")
        mask = None
        if isinstance(mask_part, UploadFile):
            mask = Upload(mask_part.filename, mask_part.size, mask_part.file)
        elif mask_part not in (None, ""):
            raise InputError("invalid_mask", "The field 'mask' must be a PNG file.")
        prompt = form.get("prompt")
        model = form.get("model")
        options = {k: form.get(k) for k in OPTION_FIELDS if isinstance(form.get(k), str)}
        if prompt is not None and not isinstance(prompt, str):
            raise InputError("prompt_invalid", "The field 'prompt' must be text.")
        if model is not None and not isinstance(model, str):
            raise InputError("invalid_model", "The field 'model' must be text.")
        task = await run_in_threadpool(
            accept_job,
            studio,
            user,
            prompt=prompt,
            uploads=uploads,
            model=model,
            options=options,  # type: ignore[arg-type]
            client_ip=client_ip(request),
            mask=mask,
        )
    return render(request, task)


@router.get("/tasks", summary="The caller's jobs, newest first")
def list_tasks(
    request: Request, studio: StudioDep, user: UserDep, session: SessionDep
) -> dict[str, Any]:
    items = tasks.list_tasks(session, user.user_id)
    running, completed = tasks.counts(items)
    return {
        "tasks": [render(request, t) for t in items],
        "running": running,
        "completed": completed,
        "limit": studio.settings.history_limit,
    }


@router.get("/tasks/{task_id}", summary="One job")
def get_task(request: Request, task_id: str, user: UserDep, session: SessionDep) -> dict[str, Any]:
    return render(request, tasks.get_task(session, user.user_id, task_id))


@router.delete("/tasks/{task_id}", status_code=204, summary="Delete a job and its files")
def delete_task(task_id: str, studio: StudioDep, user: UserDep, session: SessionDep) -> Response:
    freed = tasks.delete_task(session, user.user_id, task_id)
    session.flush()
    tasks.remove_files(session, studio.storage, freed)
    return Response(status_code=204)


@router.post("/tasks/{task_id}/retry", status_code=202, summary="Run a failed job again")
def retry_task(
    request: Request, task_id: str, studio: StudioDep, user: UserDep, session: SessionDep
) -> dict[str, Any]:
    task = tasks.retry_task(session, studio.settings, user.user_id, task_id, client_ip(request))
    session.commit()
    if studio.worker is not None:
        studio.worker.wake()
    return render(request, task)


class TokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")


def _cookie_or_proxy_only(user: auth.Principal) -> None:
    if user.via == "token":
        raise StudioError(
            "forbidden", "Tokens are managed from the settings page, not with a token.", 403
        )


@router.post("/tokens", status_code=201, summary="Create a personal API token (shown once)")
def create_token(body: TokenIn, user: UserDep, session: SessionDep) -> dict[str, str]:
    _cookie_or_proxy_only(user)
    tasks.ensure_user(session, user.user_id, user.name)
    secret = auth.new_token()
    row = ApiToken(
        id=tasks.new_id(),
        user_id=user.user_id,
        name=body.name.strip(),
        token_hash=auth.hash_token(secret),
    )
    session.add(row)
    return {"id": row.id, "name": row.name, "token": secret}


@router.get("/tokens", summary="The caller's tokens, without secrets")
def list_tokens(user: UserDep, session: SessionDep) -> dict[str, list[dict[str, Any]]]:
    rows = session.scalars(
        select(ApiToken).where(ApiToken.user_id == user.user_id).order_by(ApiToken.created_at)
    )
    return {
        "tokens": [
            {
                "id": r.id,
                "name": r.name,
                "created_at": tasks._iso(r.created_at),
                "last_used_at": tasks._iso(r.last_used_at),
            }
            for r in rows
        ]
    }


@router.delete("/tokens/{token_id}", status_code=204, summary="Revoke a token at once")
def revoke_token(token_id: str, user: UserDep, session: SessionDep) -> Response:
    _cookie_or_proxy_only(user)
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != user.user_id:
        raise NotFound("No such token.")
    session.delete(row)
    return Response(status_code=204)

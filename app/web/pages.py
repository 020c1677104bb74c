"""The HTML page and its HTMX partials. Served from the database only: a browser's polling never
reaches an upstream provider."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse

from app import tasks
from app.auth import Principal, Unauthorized
from app.errors import StudioError
from app.models import Task, TaskFile, utcnow
from app.prompts import MAX_PROMPT_TOKENS, count_tokens
from app.web.deps import SessionDep, StudioDep, UserDep, current_user

router = APIRouter(include_in_schema=False)


def _file_url(task: Task, f: TaskFile, thumb: bool) -> str:
    return f"/files/{task.id}/{f.role}s/{f.position}" + ("/thumb" if thumb else "")


def _elapsed(task: Task) -> str:
    end = task.finished_at or utcnow()
    seconds = max(0, int((end - task.created_at).total_seconds()))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def history_context(studio: Any, session: Any, user: Principal) -> dict[str, Any]:
    items = tasks.list_tasks(session, user.user_id)
    running, completed = tasks.counts(items)
    return {
        "tasks": items,
        "running": running,
        "completed": completed,
        "limit": studio.settings.history_limit,
        "file_url": _file_url,
        "elapsed": _elapsed,
        "full": len(items) >= studio.settings.history_limit,
    }


def _render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Any:
    studio = request.app.state.studio
    return studio.templates.TemplateResponse(request, name, context, status_code=status)


@router.get("/", response_class=HTMLResponse)
def index(request: Request, studio: StudioDep, session: SessionDep) -> Any:
    try:
        user = current_user(request, studio, session)
    except Unauthorized as exc:
        return _render(request, "unauthorized.html", {"message": exc.message}, 401)
    context = history_context(studio, session, user)
    context.update(
        simulated=studio.settings.simulated,
        providers=studio.provider_names,
        max_tokens=MAX_PROMPT_TOKENS,
        user=user,
        now=datetime.now(),
    )
    return _render(request, "index.html", context)


@router.get("/partials/history", response_class=HTMLResponse)
def history(request: Request, studio: StudioDep, user: UserDep, session: SessionDep) -> Any:
    return _render(request, "_history.html", history_context(studio, session, user))


@router.delete("/partials/tasks/{task_id}", response_class=HTMLResponse)
def delete_from_history(
    request: Request, task_id: str, studio: StudioDep, user: UserDep, session: SessionDep
) -> Any:
    freed = tasks.delete_task(session, user.user_id, task_id)
    session.flush()
    tasks.remove_files(session, studio.storage, freed)
    return _render(request, "_history.html", history_context(studio, session, user))


@router.post("/partials/tasks/{task_id}/retry", response_class=HTMLResponse)
def retry_from_history(
    request: Request, task_id: str, studio: StudioDep, user: UserDep, session: SessionDep
) -> Any:
    tasks.retry_task(session, user.user_id, task_id)
    session.commit()
    if studio.worker is not None:
        studio.worker.wake()
    return _render(request, "_history.html", history_context(studio, session, user))


@router.post("/partials/prompt-count", response_class=HTMLResponse)
def prompt_count(request: Request, prompt: str = Form("")) -> Any:
    used = count_tokens(prompt.strip()) if prompt.strip() else 0
    return _render(
        request,
        "_prompt_count.html",
        {"used": used, "limit": MAX_PROMPT_TOKENS, "over": used > MAX_PROMPT_TOKENS},
    )


def error_response(request: Request, exc: StudioError, headers: dict[str, str]) -> Response:
    response = _render(request, "_error.html", {"error": exc}, exc.status_code)
    response.headers.update(headers)
    return response

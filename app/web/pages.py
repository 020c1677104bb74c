"""The HTML pages and their HTMX partials. Served from the database only: a browser's polling
never reaches an upstream provider.

Every page word goes through ``t`` (app/i18n.py), in the language of the ``lang`` cookie or of
Accept-Language. Kiosk mode (``QES_KIOSK``) adds a QR code beside each result, pointing at a
signed, expiring link a visitor's phone can open without our cookie, and an idle reset that
deletes the visitor's jobs and gives the browser a fresh anonymous session.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import segno
from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from markupsafe import Markup

from app import i18n, tasks
from app.auth import SESSION_COOKIE, Principal, Unauthorized
from app.errors import NotFound, StudioError
from app.models import Task, TaskFile, utcnow
from app.prompts import MAX_PROMPT_TOKENS, count_tokens
from app.web import files
from app.web.deps import SessionDep, StudioDep, UserDep, current_user

router = APIRouter(include_in_schema=False)

YEAR = 365 * 24 * 3600


def _file_url(task: Task, f: TaskFile, thumb: bool) -> str:
    return f"/files/{task.id}/{f.role}s/{f.position}" + ("/thumb" if thumb else "")


def _elapsed(t: Callable[..., str]) -> Callable[[Task], str]:
    def elapsed(task: Task) -> str:
        end = task.finished_at or utcnow()
        seconds = max(0, int((end - task.created_at).total_seconds()))
        if seconds >= 60:
            return f"{seconds // 60}:{seconds % 60:02d}"
        return t("seconds", n=seconds)

    return elapsed


def public_base(request: Request) -> str:
    """Where a phone reaches the studio: QES_PUBLIC_BASE_URL if set, else this request's base."""
    configured = request.app.state.studio.settings.public_base_url
    return configured or str(request.base_url).rstrip("/")


def signed_result_url(request: Request, task: Task, f: TaskFile) -> str:
    """A link to one result that works without our cookie and stops working after QES_LINK_TTL."""
    studio = request.app.state.studio
    token = studio.signer.sign(task.id, f.role, f.position)
    return files.signed_url(public_base(request), token, f.ext, f.role, f.position)


def history_context(request: Request, studio: Any, session: Any, user: Principal) -> dict[str, Any]:
    """What the history partial shows: the user's jobs, the counts and the kiosk's links."""
    items = tasks.list_tasks(session, user.user_id)
    running, completed = tasks.counts(items)
    t = i18n.translator(i18n.request_lang(request))
    return {
        "tasks": items,
        "running": running,
        "completed": completed,
        "limit": studio.settings.history_limit,
        "file_url": _file_url,
        "elapsed": _elapsed(t),
        "full": len(items) >= studio.settings.history_limit,
        "signed_url": lambda task, f: signed_result_url(request, task, f),
        "link_minutes": max(1, studio.settings.link_ttl // 60),
    }


def _render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Any:
    """Render a template with what every page needs: ``t``, the language, kiosk mode, and for
    whole pages the strings their script reads (partials never carry them)."""
    studio = request.app.state.studio
    lang = i18n.request_lang(request)
    base: dict[str, Any] = {
        "t": i18n.translator(lang),
        "lang": lang,
        "html_lang": i18n.HTML_LANG[lang],
        "kiosk": studio.settings.kiosk,
        "error_text": lambda code, message: i18n.error_message(code, message or "", lang),
    }
    base.update(context)
    if not name.startswith("_"):
        strings = i18n.client_strings(lang, base.get("page", ""))
        base["client_json"] = Markup(i18n.script_json(strings))
    return studio.templates.TemplateResponse(request, name, base, status_code=status)


@router.get("/", response_class=HTMLResponse)
def index(request: Request, studio: StudioDep, session: SessionDep) -> Any:
    try:
        user = current_user(request, studio, session)
    except Unauthorized as exc:
        return _render(request, "unauthorized.html", {"error": exc}, 401)
    context = history_context(request, studio, session, user)
    context.update(
        simulated=studio.settings.simulated,
        providers=studio.provider_names,
        max_tokens=MAX_PROMPT_TOKENS,
        models=tasks.MODELS,
        presets=i18n.presets(i18n.request_lang(request)),
        idle_seconds=studio.settings.kiosk_idle_seconds,
        page="studio",
    )
    return _render(request, "index.html", context)


@router.get("/settings", response_class=HTMLResponse)
def settings_page(request: Request, studio: StudioDep, session: SessionDep) -> Any:
    """Personal API tokens; the page's script uses the JSON routes under /api/tokens."""
    try:
        current_user(request, studio, session)
    except Unauthorized as exc:
        return _render(request, "unauthorized.html", {"error": exc}, 401)
    return _render(request, "settings.html", {"page": "settings"})


@router.post("/lang")
def set_language(lang: str = Form(...), next: str = Form("/")) -> Response:
    """The language switch: remember the choice in the ``lang`` cookie, back to the same page."""
    if lang not in i18n.LANGS:
        raise StudioError(
            "invalid_language", f"Unknown language {lang!r}; choose one of: en, zh.", 400
        )
    target = next if next.startswith("/") and not next.startswith("//") else "/"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(i18n.LANG_COOKIE, lang, max_age=YEAR, path="/", samesite="lax")
    return response


@router.get("/partials/history", response_class=HTMLResponse)
def history(request: Request, studio: StudioDep, user: UserDep, session: SessionDep) -> Any:
    return _render(request, "_history.html", history_context(request, studio, session, user))


@router.delete("/partials/tasks/{task_id}", response_class=HTMLResponse)
def delete_from_history(
    request: Request, task_id: str, studio: StudioDep, user: UserDep, session: SessionDep
) -> Any:
    freed = tasks.delete_task(session, user.user_id, task_id)
    # Committed before the answer leaves, so the next poll can never see the job again.
    session.commit()
    tasks.remove_files(session, studio.storage, freed)
    return _render(request, "_history.html", history_context(request, studio, session, user))


@router.post("/partials/tasks/{task_id}/retry", response_class=HTMLResponse)
def retry_from_history(
    request: Request, task_id: str, studio: StudioDep, user: UserDep, session: SessionDep
) -> Any:
    tasks.retry_task(
        session, studio.settings, user.user_id, task_id, request.client and request.client.host
    )
    session.commit()
    if studio.worker is not None:
        studio.worker.wake()
    return _render(request, "_history.html", history_context(request, studio, session, user))


@router.get("/partials/tasks/{task_id}/qr.svg")
def result_qr(
    request: Request, task_id: str, user: UserDep, session: SessionDep, position: int = 0
) -> Response:
    """A QR code (SVG) of a fresh signed link to one result, for the owner's page only.

    The encoded link is also in the SVG's <title>, so people and tests can read what it opens.
    """
    task = tasks.get_task(session, user.user_id, task_id)
    found = [f for f in task.results if f.position == position]
    if not found:
        raise NotFound("No such file.")
    url = signed_result_url(request, task, found[0])
    buf = io.BytesIO()
    segno.make(url, error="m").save(
        buf, kind="svg", scale=4, border=2, xmldecl=False, title=url, dark="#000", light="#fff"
    )
    return Response(
        buf.getvalue(),
        media_type="image/svg+xml",
        headers={"Cache-Control": "private, max-age=300", "X-Signed-Url": url},
    )


@router.post("/kiosk/reset", status_code=204)
def kiosk_reset(studio: StudioDep, user: UserDep, session: SessionDep) -> Response:
    """The kiosk's idle reset: delete this visitor's jobs and files, forget the browser's
    session (the middleware hands out a new one on the next request) and its language."""
    if not studio.settings.kiosk:
        raise NotFound("Not found.")
    freed = tasks.purge_user_tasks(session, user.user_id)
    session.commit()
    tasks.remove_files(session, studio.storage, freed)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    response.delete_cookie(i18n.LANG_COOKIE, path="/", samesite="lax")
    return response


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

"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import text

from app.db import session_scope
from app.web.deps import Studio, StudioDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Database and storage writable, a provider usable")
def readyz(studio: StudioDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        with session_scope(studio.sessions) as s:
            s.execute(text("CREATE TEMPORARY TABLE IF NOT EXISTS _ready (x INTEGER)"))
            s.execute(text("INSERT INTO _ready (x) VALUES (1)"))
            s.execute(text("DELETE FROM _ready"))
        checks["database"] = "ok"
    except Exception as exc:  # report, don't crash the probe
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        studio.storage.check_writable()
        checks["storage"] = "ok"
    except OSError as exc:
        checks["storage"] = f"error: {type(exc).__name__}"
    worker = studio.worker
    usable = [
        name
        for name in studio.provider_names
        if worker is not None and worker.health.state(name) in ("healthy", "half-open")
    ]
    checks["providers"] = ", ".join(usable) or "none usable"
    checks["worker"] = "ok" if worker is not None else "not running"
    ready = (
        checks["database"] == "ok" and checks["storage"] == "ok" and bool(usable) and bool(worker)
    )
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


def provider_status(studio: Studio) -> list[dict[str, Any]]:
    """Each configured provider, cheapest first, with its circuit state and last error."""
    worker = studio.worker
    if worker is None:
        return []
    known = {item["name"]: item for item in worker.health.snapshot()}
    out = []
    for provider in worker.providers:
        item = known.get(provider.name) or {
            "name": provider.name,
            "state": worker.health.state(provider.name),
            "last_error": None,
            "calls": 0,
            "errors": 0,
            "retry_in_seconds": 0,
        }
        out.append({**item, "price": provider.price})
    return out


@router.get("/api/status", summary="Providers: healthy, open circuit or disabled, last error")
def status_json(studio: StudioDep) -> dict[str, Any]:
    return {"providers": provider_status(studio), "simulated": studio.settings.simulated}


@router.get("/status", response_class=HTMLResponse, include_in_schema=False)
def status_page(request: Request, studio: StudioDep) -> HTMLResponse:
    from app.web.pages import _render  # the page's shared context (language, strings)

    return _render(
        request,
        "status.html",
        {"providers": provider_status(studio), "simulated": studio.settings.simulated},
    )

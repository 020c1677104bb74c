"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.db import session_scope
from app.web.deps import StudioDep

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
    checks["providers"] = ", ".join(studio.provider_names) or "none"
    worker_up = studio.worker is not None
    checks["worker"] = "ok" if worker_up else "not running"
    ready = (
        checks["database"] == "ok"
        and checks["storage"] == "ok"
        and bool(studio.provider_names)
        and worker_up
    )
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )

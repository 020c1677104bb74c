"""create_app(): settings, database, storage, providers, the worker (in the lifespan), routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import i18n, prompts, tasks
from app.auth import SessionCodec
from app.config import Settings
from app.db import make_engine, make_sessionmaker, run_migrations
from app.errors import StudioError
from app.links import LinkSigner
from app.models import Task, TaskFile
from app.storage import LocalStorage
from app.upstream.base import Provider
from app.upstream.registry import build_providers
from app.web import api, callbacks, files, gateway, health, pages, usage
from app.web.deps import Studio
from app.web.middleware import BodyLimit, CrossOriginGuard, SessionAndHeaders
from app.worker import Worker

log = logging.getLogger("qes")
ROOT = Path(__file__).resolve().parent.parent
# 3 images of 10 MB, plus the prompt, options and multipart framing.
MAX_REQUEST_BYTES = 3 * 10 * 1024 * 1024 + 1024 * 1024


def create_app(
    settings: Settings | None = None, providers: list[Provider] | None = None
) -> FastAPI:
    """Build the app. ``providers`` replaces the ones built from settings (tests with two
    simulators, embedding)."""
    settings = settings or Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    sessions = make_sessionmaker(engine)
    storage = LocalStorage(settings.data_dir / "files")
    signer = LinkSigner(settings.signing_key)
    templates = Jinja2Templates(directory=str(ROOT / "templates"))
    studio = Studio(
        settings=settings,
        sessions=sessions,
        storage=storage,
        signer=signer,
        codec=SessionCodec(settings.signing_key),
        templates=templates,
    )

    def input_url(task: Task, f: TaskFile) -> str | None:
        if not settings.public_base_url:
            return None
        token = signer.sign(task.id, f.role, f.position)
        return files.signed_url(settings.public_base_url, token, f.ext, f.role, f.position)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(run_migrations, settings.db_url)
        await asyncio.to_thread(storage.sweep_temp_files)
        await asyncio.to_thread(prompts.warm_up)
        simulator = None
        if settings.simulated and providers is None:
            from app.upstream.simulator import SimulatorConfig, SimulatorServer

            simulator = SimulatorServer(SimulatorConfig(delay=settings.simulator_delay))
            await asyncio.to_thread(simulator.start)
            log.warning(
                "No QES_EVOLINK_API_KEY: jobs go to the built-in simulator at %s; "
                "results are simulated, not edited by the model.",
                simulator.base_url,
            )
        active = providers or build_providers(settings, simulator.base_url if simulator else None)
        studio.provider_names = [p.name for p in active]
        worker = Worker(
            settings,
            sessions,
            storage,
            active,
            input_url,
            callback_url=callbacks.url_builder(settings.public_base_url),
        )
        studio.worker = worker
        gateway.install(app)
        runner = asyncio.create_task(worker.run_forever(), name="qes-worker")
        try:
            yield
        finally:
            worker.stop()
            # In-flight steps finish (each is one upstream call and one commit); past the grace
            # period they are cancelled, which leaves every row as its last commit wrote it.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(runner, timeout=settings.shutdown_grace)
            for provider in active:
                await provider.aclose()
            if simulator is not None:
                await asyncio.to_thread(simulator.stop)
            studio.worker = None
            engine.dispose()

    app = FastAPI(
        title="Qwen Edit Studio",
        summary="Instruction-based image editing with Qwen Image Edit",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.studio = studio
    app.include_router(pages.router)
    app.include_router(api.router)
    app.include_router(files.router)
    app.include_router(health.router)
    app.include_router(callbacks.router)
    app.include_router(gateway.router)
    app.include_router(usage.router)
    app.mount("/static", StaticFiles(directory=str(ROOT / "static")), name="static")

    @app.exception_handler(StudioError)
    async def studio_error(request: Request, exc: StudioError) -> JSONResponse:
        headers = {}
        if isinstance(exc, tasks.LimitError):
            headers["Retry-After"] = str(exc.retry_after)
        if request.url.path.startswith("/partials/") or _wants_html(request):
            return pages.error_response(request, exc, headers)
        message = exc.message
        # The page's own requests carry its language (the `lang` cookie or Accept-Language);
        # scripts that say nothing, and the EvoLink-compatible /v1 gateway, get English.
        if i18n.asked_for_language(request) and not request.url.path.startswith("/v1/"):
            lang = i18n.request_lang(request)
            message = i18n.error_message(exc.code, exc.message, lang)
            headers["Content-Language"] = i18n.HTML_LANG[lang]
        return JSONResponse(
            {"error": {"code": exc.code, "message": message}},
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse(
            {"error": {"code": "invalid_request", "message": "; ".join(parts)}}, status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        codes = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request"}
        message = exc.detail if isinstance(exc.detail, str) else "Request refused."
        if exc.status_code == 404:
            message = "Not found."
        return JSONResponse(
            {"error": {"code": codes.get(exc.status_code, "http_error"), "message": message}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    # Outermost first: size cap before anything reads the body, then CSRF, then the session.
    app.add_middleware(SessionAndHeaders, codec=studio.codec)
    app.add_middleware(CrossOriginGuard)
    app.add_middleware(BodyLimit, max_bytes=MAX_REQUEST_BYTES)
    return app


def _wants_html(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def __getattr__(name: str) -> Any:
    # `uvicorn app.main:app` builds the app from the environment on first access.
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)

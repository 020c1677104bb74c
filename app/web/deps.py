"""FastAPI dependencies: the studio's shared parts, a DB session per request, the current user."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from app import auth
from app.config import Settings
from app.db import session_scope
from app.links import LinkSigner
from app.storage import LocalStorage
from app.worker import Worker


@dataclass
class Studio:
    """Everything a request may need, built once by create_app()."""

    settings: Settings
    sessions: sessionmaker[Session]
    storage: LocalStorage
    signer: LinkSigner
    codec: auth.SessionCodec
    templates: Jinja2Templates
    worker: Worker | None = None
    provider_names: list[str] = field(default_factory=list)


def get_studio(request: Request) -> Studio:
    return request.app.state.studio


StudioDep = Annotated[Studio, Depends(get_studio)]


def get_session(studio: StudioDep) -> Iterator[Session]:
    with session_scope(studio.sessions) as session:
        yield session


# scope="function": commit before the response is sent, so a client that got its answer (a
# revoked token, a deleted job) never races the commit with its next request.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def current_user(request: Request, studio: StudioDep, session: SessionDep) -> auth.Principal:
    settings = studio.settings
    return auth.resolve(
        settings,
        session,
        authorization=request.headers.get("authorization"),
        proxy_name=request.headers.get(settings.proxy_user_header),
        client_ip=client_ip(request),
        cookie_user=request.scope.get("state", {}).get("anon_user"),
    )


UserDep = Annotated[auth.Principal, Depends(current_user)]

"""Who is asking: a personal API token, a user named by the trusted login proxy, or an anonymous
browser known by a signed cookie.

Bearer tokens win when present (scripts); otherwise ``QES_USER_MODE`` decides. A proxy header is
believed only from an address in ``QES_TRUSTED_PROXIES``; from anywhere else it is ignored.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from typing import Literal

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import StudioError
from app.models import ApiToken, utcnow

SESSION_COOKIE = "qes_session"
TOKEN_PREFIX = "qes_"


@dataclass(frozen=True)
class Principal:
    user_id: str
    name: str | None
    via: Literal["cookie", "proxy", "token"]


class Unauthorized(StudioError):
    def __init__(self, message: str) -> None:
        super().__init__("unauthorized", message, 401)


class SessionCodec:
    """Signs the anonymous user id into the session cookie."""

    def __init__(self, secret: str) -> None:
        self._s = URLSafeSerializer(secret, salt="qes-session")

    def new_user_id(self) -> str:
        return "a-" + secrets.token_hex(12)

    def dumps(self, user_id: str) -> str:
        return self._s.dumps(user_id)

    def loads(self, value: str | None) -> str | None:
        if not value:
            return None
        try:
            user_id = self._s.loads(value)
        except BadSignature:
            return None
        return user_id if isinstance(user_id, str) else None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def proxy_user_id(name: str) -> str:
    """A stable id for a proxy-asserted name (the name itself may be long or odd)."""
    return "p-" + hashlib.sha256(name.encode()).hexdigest()[:24]


def is_trusted(settings: Settings, client_ip: str | None) -> bool:
    if not client_ip:
        return False
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(net, strict=False) for net in settings.trusted_proxies)


def user_from_token(session: Session, token: str) -> Principal:
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    if row is None:
        raise Unauthorized("The API token is not valid (it may have been revoked).")
    row.last_used_at = utcnow()
    return Principal(row.user_id, None, "token")


def resolve(
    settings: Settings,
    session: Session,
    *,
    authorization: str | None,
    proxy_name: str | None,
    client_ip: str | None,
    cookie_user: str | None,
) -> Principal:
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Use 'Authorization: Bearer <token>' with a personal API token.")
        return user_from_token(session, token.strip())
    if settings.user_mode == "proxy":
        name = (proxy_name or "").strip()
        if not name or not is_trusted(settings, client_ip):
            raise Unauthorized(
                "This studio is used through the company's login proxy; sign in there, "
                "or use a personal API token."
            )
        return Principal(proxy_user_id(name), name[:200], "proxy")
    if not cookie_user:
        raise Unauthorized("No session: enable cookies, or use a personal API token.")
    return Principal(cookie_user, None, "cookie")

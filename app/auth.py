"""Who is asking: a personal API token, a user named by the trusted login proxy, or an anonymous
browser known by a signed cookie.

The rules, in order:

1. ``Authorization: Bearer qes_...`` (one of our personal tokens) names the user, in every mode.
   An unknown or revoked token is refused at once: the hash is looked up on every request.
2. ``QES_USER_MODE=proxy``: the user is the value of ``QES_PROXY_USER_HEADER``, believed only when
   the TCP peer is in ``QES_TRUSTED_PROXIES``. From any other address the header is ignored and
   the request is refused (401), so a client that reaches the studio around the proxy cannot
   name itself. Whatever else the proxy forwards in ``Authorization`` (its own session, an
   OIDC token) is the proxy's business and is ignored.
3. ``QES_USER_MODE=anonymous``: the signed ``qes_session`` cookie set by
   :class:`app.web.middleware.SessionAndHeaders`. A ``Bearer`` value that is not one of ours is
   refused rather than quietly treated as a new anonymous visitor (a script with a mistyped token
   would otherwise see an empty history and not know why); other schemes (``Basic`` from a
   password-protected kiosk's web server) are ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Literal

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import StudioError
from app.models import ApiToken, utcnow

log = logging.getLogger("qes.auth")

SESSION_COOKIE = "qes_session"
TOKEN_PREFIX = "qes_"
MAX_PROXY_NAME = 200
# last_used_at is a hint for the settings page, not an audit log: writing it on every request of
# a polling script would turn each read into a write.
_TOUCH_EVERY = timedelta(minutes=1)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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


def bearer_token(authorization: str | None) -> str | None:
    """Our personal token in an ``Authorization`` header, or None if the header carries none.

    Shared with the CSRF guard: a request is exempt from the cross-site check exactly when it is
    authenticated by one of these tokens, never by a credential the browser adds on its own.
    """
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value.startswith(TOKEN_PREFIX):
        return value
    return None


def proxy_user_id(name: str) -> str:
    """A stable id for a proxy-asserted name (the name itself may be long or odd)."""
    return "p-" + hashlib.sha256(name.encode()).hexdigest()[:24]


@lru_cache(maxsize=64)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(net, strict=False) for net in cidrs)


def is_trusted(settings: Settings, client_ip: str | None) -> bool:
    """Whether the TCP peer is one of the configured login proxies."""
    if not client_ip:
        return False
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in _networks(tuple(settings.trusted_proxies)))


def clean_proxy_name(raw: str | None) -> str:
    """The user name a proxy sent, as text: HTTP headers arrive as Latin-1, proxies send UTF-8."""
    value = (raw or "").strip()
    with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
        value = value.encode("latin-1").decode("utf-8")
    return _CONTROL.sub("", value).strip()


def user_from_token(session: Session, token: str) -> Principal:
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    if row is None:
        raise Unauthorized("The API token is not valid (it may have been revoked).")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY:
        row.last_used_at = now
    return Principal(row.user_id, None, "token")


_warned_peers: set[str] = set()


def _warn_untrusted(settings: Settings, client_ip: str | None) -> None:
    """Say once per address that a user header was ignored: a misconfigured proxy shows up in
    the log instead of as a mystery 401, without one line per request."""
    key = client_ip or "?"
    if key in _warned_peers or len(_warned_peers) > 1000:
        return
    _warned_peers.add(key)
    log.warning(
        "ignored the %s header from %s: that address is not in QES_TRUSTED_PROXIES",
        settings.proxy_user_header,
        key,
    )


def resolve(
    settings: Settings,
    session: Session,
    *,
    authorization: str | None,
    proxy_name: str | None,
    client_ip: str | None,
    cookie_user: str | None,
) -> Principal:
    token = bearer_token(authorization)
    if token is not None:
        return user_from_token(session, token)
    if settings.user_mode == "proxy":
        return _proxy_user(settings, proxy_name, client_ip)
    if authorization and authorization.strip().lower().startswith("bearer"):
        raise Unauthorized(
            "The API token is not valid: personal API tokens start with 'qes_' and are sent "
            "as 'Authorization: Bearer <token>'."
        )
    if not cookie_user:
        raise Unauthorized("No session: enable cookies, or use a personal API token.")
    return Principal(cookie_user, None, "cookie")


def _proxy_user(settings: Settings, raw_name: str | None, client_ip: str | None) -> Principal:
    name = clean_proxy_name(raw_name)
    if not is_trusted(settings, client_ip):
        if name:
            _warn_untrusted(settings, client_ip)
        raise Unauthorized(
            "This studio is used through the company's login proxy, and this request did not "
            "come through it (a user header from anywhere else is ignored). Sign in through the "
            "proxy, or use a personal API token."
        )
    if not name:
        raise Unauthorized(
            f"The login proxy did not name a user (the {settings.proxy_user_header} header is "
            "missing or empty). Sign in through the proxy, or use a personal API token."
        )
    if len(name) > MAX_PROXY_NAME:
        raise Unauthorized(
            f"The user name from the login proxy is longer than {MAX_PROXY_NAME} characters."
        )
    return Principal(proxy_user_id(name), name, "proxy")

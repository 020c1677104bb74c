"""Pure ASGI wrappers in front of every route.

- :class:`BodyLimit` refuses an oversized request on its Content-Length, and counts the bytes of
  a chunked one as they arrive, before Starlette parses (and spools) anything.
- :class:`SessionAndHeaders` gives each browser its signed anonymous-session cookie and adds the
  security headers (CSP without inline script, nosniff, referrer policy, frame-ancestors).
- :class:`CrossOriginGuard` refuses state-changing browser requests sent from another site: the
  token-free CSRF check (Sec-Fetch-Site, then Origin). Requests authenticated by a personal API
  token (``Authorization: Bearer qes_...``) carry no ambient credential and pass.
"""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import SESSION_COOKIE, SessionCodec, bearer_token

SAFE_METHODS = {"GET", "HEAD", "OPTIONS", "TRACE"}


def _is_gateway(scope: Scope) -> bool:
    return str(scope.get("path", "")).startswith("/v1/")


async def _send_json(
    send: Send, status: int, code: str, message: str, extra: dict | None = None
) -> None:
    body = json.dumps({"error": {"code": code, "message": message, **(extra or {})}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                # These answers leave before SessionAndHeaders runs; they get its headers too.
                (b"content-security-policy", CSP.encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"referrer-policy", b"same-origin"),
                (b"x-frame-options", b"DENY"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    @staticmethod
    def _extra(scope: Scope) -> dict[str, str] | None:
        # The /v1 gateway answers in EvoLink's error shape, which always carries a type.
        return {"type": "request_too_large_error"} if _is_gateway(scope) else None

    def _message(self) -> str:
        mb = self.max_bytes / (1024 * 1024)
        return (
            f"The request is larger than {mb:.0f} MB. Send at most 3 images of at most 10 MB each."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(send, 413, "request_too_large", self._message(), self._extra(scope))
            return
        received = 0
        too_large = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(
                    send, 413, "request_too_large", self._message(), self._extra(scope)
                )
        except Exception:
            if too_large and not started:
                await _send_json(
                    send, 413, "request_too_large", self._message(), self._extra(scope)
                )
            else:
                raise


class _TooLarge(Exception):
    pass


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)


class SessionAndHeaders:
    """The anonymous session cookie and the security headers, on every response.

    The cookie is HttpOnly and SameSite=Lax always, and Secure when the request came over https:
    either directly (the ASGI scheme) or through a TLS-terminating proxy that says so in
    ``X-Forwarded-Proto``. Believing that header from anyone is safe here: all it can do is mark
    the sender's own new cookie Secure. Requests that authenticate with a personal API token get
    no cookie: scripts have no use for one.
    """

    def __init__(self, app: ASGIApp, codec: SessionCodec) -> None:
        self.app = app
        self.codec = codec

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookie = SimpleCookie()
        raw = _header(scope, b"cookie")
        if raw:
            try:
                cookie.load(raw)
            except Exception:
                cookie = SimpleCookie()
        morsel = cookie.get(SESSION_COOKIE)
        user_id = self.codec.loads(morsel.value if morsel else None)
        new_cookie: str | None = None
        if user_id is None:
            user_id = self.codec.new_user_id()
            if bearer_token(_header(scope, b"authorization")) is None:
                new_cookie = self.codec.dumps(user_id)
        scope.setdefault("state", {})["anon_user"] = user_id
        forwarded = (_header(scope, b"x-forwarded-proto") or "").split(",")[0].strip().lower()
        secure = scope.get("scheme") == "https" or forwarded == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", CSP.encode()))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"same-origin"))
                headers.append((b"x-frame-options", b"DENY"))
                if new_cookie is not None:
                    parts = [
                        f"{SESSION_COOKIE}={new_cookie}",
                        "Path=/",
                        "HttpOnly",
                        "SameSite=Lax",
                        "Max-Age=31536000",
                    ]
                    if secure:
                        parts.append("Secure")
                    headers.append((b"set-cookie", "; ".join(parts).encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class CrossOriginGuard:
    """Token-free CSRF protection for every unsafe method (POST, PUT, PATCH, DELETE).

    A browser says where a request comes from: ``Sec-Fetch-Site`` (all current browsers) or, older
    ones, ``Origin``. Anything but ``same-origin`` (or ``none``: typed by the user) is refused,
    ``same-site`` too, since a sibling subdomain is another party. A request with neither header
    is not from a browser and cannot carry a victim's cookie against their will. A request with
    one of our Bearer tokens is authenticated by that token alone; a cross-site page cannot set
    that header (it would need a CORS preflight the studio never grants).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        # Our Bearer token authenticates alone; and /v1 accepts nothing else (no cookie), so a
        # cross-site request there gains nothing and gets the gateway's own 401.
        if bearer_token(_header(scope, b"authorization")) is not None or _is_gateway(scope):
            await self.app(scope, receive, send)
            return
        site = _header(scope, b"sec-fetch-site")
        origin = _header(scope, b"origin")
        host = (_header(scope, b"host") or "").lower()
        refused = False
        if site is not None:
            refused = site.strip().lower() not in ("same-origin", "none")
        elif origin is not None and origin != "null":
            refused = urlsplit(origin.strip()).netloc.lower() != host
        elif origin == "null":
            refused = True
        if refused:
            await _send_json(
                send,
                403,
                "cross_site_request",
                "This request came from another site and was refused (CSRF protection): "
                "use the studio's own page, or a script with a personal API token.",
            )
            return
        await self.app(scope, receive, send)

"""Signed, expiring links for files that must leave the owner's session.

The upstream fetches our inputs by URL, a kiosk visitor's phone opens a QR code: neither has our
cookie, so they get a link that carries its own permission (itsdangerous, with the app's secret)
and stops working after a while.
"""

from __future__ import annotations

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer


class LinkSigner:
    def __init__(self, secret: str) -> None:
        self._s = URLSafeTimedSerializer(secret, salt="qes-file-link")

    def sign(self, task_id: str, role: str, position: int) -> str:
        return self._s.dumps([task_id, role, position])

    def verify(self, token: str, max_age: int) -> tuple[str, str, int] | None:
        """The (task, role, position) a token grants, or None if forged or expired."""
        try:
            task_id, role, position = self._s.loads(token, max_age=max_age)
        except (BadSignature, SignatureExpired, ValueError, TypeError):
            return None
        if role not in ("input", "result", "mask") or not isinstance(position, int):
            return None
        return str(task_id), role, position

"""Outgoing HTTP to addresses a client gave us, with a guard against server-side request forgery.

The gateway fetches ``image_urls`` and posts to ``callback_url``: both are URLs a caller chose, and
the studio usually sits inside a network with things a caller must not reach (the cloud's metadata
service at 169.254.169.254, an admin panel on 10.x, the studio's own port on 127.0.0.1). So:

* Only ``http``/``https`` (``https`` alone for callbacks).
* The host is resolved once (``getaddrinfo`` in a thread), and every address it answers with is
  checked: loopback, private, link-local, multicast, reserved, unspecified, carrier-grade NAT
  (100.64/10), and IPv6 forms that carry such an IPv4 address (IPv4-mapped, 6to4, NAT64) are
  refused, unless the address lies in ``QES_FETCH_ALLOWED_NETWORKS``. A name with one bad
  answer among good ones is refused whole (a classic DNS-rebinding trick).
* The connection goes to the address that was checked, not to the name: httpx has no resolver
  hook, so the request URL carries the IP, the original ``Host`` header is sent, and for https the
  TLS server name (SNI, and the certificate check) is set through httpcore's ``sni_hostname``
  request extension. A second DNS answer can therefore never slip in between check and connect.
* Redirects are followed by hand, at most three, and each hop is checked the same way before any
  connection is made to it.
* Caps: bytes (counted while streaming, and on Content-Length before), total time, connect and
  read timeouts. No proxy from the environment is used (it would bypass the pinning).

Every refusal is an :class:`InputError` that names the URL (``image_urls[1]``) and the reason, so
the gateway can answer 400 with words a script's author can act on. Resolved addresses of a host
name are not echoed back (that would let a caller map the internal DNS); literal ones are.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass

import httpx

from app.errors import InputError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_FETCH_BYTES = 10 * 1024 * 1024
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
USER_AGENT = "QwenEditStudio/0.1 (+image fetch)"

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchRefused(InputError):
    """A URL the studio will not (or could not) fetch; always names the URL and the reason."""


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str | None
    final_url: str


def _embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, where a router would translate it."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def _kind(addr: IPAddress) -> str | None:
    """Why an address is internal (plain words), or None if it is public."""
    if addr.is_unspecified:
        return "the unspecified address"
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_multicast:
        return "a multicast address"
    if isinstance(addr, ipaddress.IPv4Address) and addr in _CGNAT:
        return "a shared (carrier-grade NAT) address"
    if addr.is_private:
        return "a private-network address"
    if addr.is_reserved:
        return "a reserved address"
    if not addr.is_global:
        return "not a public address"
    return None


class AddressPolicy:
    """Which addresses the studio may connect to on a caller's behalf."""

    def __init__(self, allowed_networks: Iterable[str] = ()) -> None:
        self.allowed: list[IPNetwork] = [
            ipaddress.ip_network(n.strip(), strict=False) for n in allowed_networks if n.strip()
        ]

    def _allowed(self, addr: IPAddress) -> bool:
        return any(addr.version == net.version and addr in net for net in self.allowed)

    def refusal(self, addr: IPAddress) -> str | None:
        """Why ``addr`` is refused, or None when it may be connected to."""
        if addr.is_unspecified or addr.is_multicast:
            return _kind(addr)  # never a server, whatever the allow-list says
        inner = _embedded_ipv4(addr)
        if self._allowed(addr) or (inner is not None and self._allowed(inner)):
            return None
        if inner is not None:
            reason = _kind(inner)
            if reason:
                return f"{reason} (inside an IPv6 address)"
        return _kind(addr)


class SafeFetcher:
    """Guarded GETs of image URLs and POSTs to callback URLs (see the module docstring).

    ``verify`` is passed to httpx (True = the system's CAs); tests give an SSL context that trusts
    their own certificate. The knobs are constructor arguments, not settings: they are limits the
    product promises (EvoLink's 10 MB per image), not something a deployment tunes.
    """

    def __init__(
        self,
        allowed_networks: Iterable[str] = (),
        *,
        max_bytes: int = MAX_FETCH_BYTES,
        total_timeout: float = 20.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        max_redirects: int = 3,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.policy = AddressPolicy(allowed_networks)
        self.max_bytes = max_bytes
        self.total_timeout = total_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_redirects = max_redirects
        self.verify = verify

    # --- the checks -----------------------------------------------------------------------------

    def parse(self, url: str, label: str, schemes: Iterable[str]) -> httpx.URL:
        """The URL parsed, or a refusal if it is not an absolute URL of an allowed scheme."""
        allowed = tuple(schemes)
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise self._refused(label, url, "is not a valid URL") from exc
        if parsed.scheme not in allowed:
            words = " or ".join(allowed)
            reason = (
                f"must be an {words} URL" if parsed.scheme else f"is not an absolute {words} URL"
            )
            raise self._refused(label, url, reason)
        if not parsed.raw_host:
            raise self._refused(label, url, "has no host")
        # httpx accepts any number (even -1) as a port; the socket layer then fails with an
        # OverflowError that is no HTTP error, so an out-of-range port is refused here.
        if parsed.port is not None and not 1 <= parsed.port <= 65535:
            raise self._refused(label, url, "has an invalid port (allowed: 1 to 65535)")
        return parsed

    async def addresses(self, url: httpx.URL, label: str) -> list[IPAddress]:
        """Resolve the URL's host once and check every answer; IPv4 first, as they are tried."""
        host = url.raw_host.decode("ascii")
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            reason = self.policy.refusal(literal)
            if reason:
                raise self._refused(
                    label,
                    str(url),
                    f"points to {literal}, {reason}; only public addresses are fetched",
                )
            return [literal]
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            infos = await asyncio.to_thread(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise self._refused(label, str(url), "has a host name that does not resolve") from exc
        found: list[IPAddress] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            addr = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if addr not in found:
                found.append(addr)
        if not found:
            raise self._refused(label, str(url), "has a host name that does not resolve")
        for addr in found:
            reason = self.policy.refusal(addr)
            if reason:
                raise self._refused(
                    label,
                    str(url),
                    f"has a host name that points to {reason}; only public addresses are fetched",
                )
        return sorted(found, key=lambda a: a.version)

    async def check(self, url: str, label: str, schemes: Iterable[str]) -> httpx.URL:
        """Parse and resolve without connecting (to refuse a callback_url at the door)."""
        parsed = self.parse(url, label, schemes)
        try:
            async with asyncio.timeout(self.total_timeout):
                await self.addresses(parsed, label)
        except TimeoutError as exc:
            raise self._refused(label, url, "has a host name that did not resolve in time") from exc
        return parsed

    # --- fetching -------------------------------------------------------------------------------

    async def fetch(self, url: str, label: str) -> Fetched:
        """GET an image URL: guarded, redirects re-checked, capped in size and time."""
        try:
            async with asyncio.timeout(self.total_timeout):
                return await self._fetch(url, label)
        except TimeoutError as exc:
            raise self._refused(
                label, url, f"did not finish downloading within {self.total_timeout:g} s"
            ) from exc

    async def _fetch(self, url: str, label: str) -> Fetched:
        current = self.parse(url, label, ("http", "https"))
        hop_label = label
        hops = 0
        while True:
            headers = {"Accept": "image/*"}
            async with self._pinned("GET", current, hop_label, headers, None) as response:
                if response.status_code in REDIRECT_STATUSES and "location" in response.headers:
                    hops += 1
                    if hops > self.max_redirects:
                        raise self._refused(
                            label, url, f"redirects more than {self.max_redirects} times"
                        )
                    hop_label = f"{label}'s redirect"
                    try:
                        target = str(current.join(response.headers["location"]))
                    except (httpx.InvalidURL, ValueError) as exc:
                        raise self._refused(label, url, "redirects to an invalid URL") from exc
                    current = self.parse(target, hop_label, ("http", "https"))
                    continue
                if not response.is_success:
                    raise self._refused(
                        hop_label, str(current), f"answered HTTP {response.status_code}"
                    )
                data = await self._read_capped(response, hop_label, str(current))
                return Fetched(data, response.headers.get("content-type"), str(current))

    async def post(
        self,
        url: str,
        label: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        schemes: Iterable[str] = ("https",),
        timeout: float = 10.0,
    ) -> int:
        """POST ``content`` to a guarded URL (no redirects followed); returns the HTTP status."""
        parsed = self.parse(url, label, schemes)
        try:
            async with (
                asyncio.timeout(timeout),
                self._pinned("POST", parsed, label, dict(headers), content) as response,
            ):
                # Only the status matters. The body is not read: a receiver could otherwise
                # stream without end into memory, or break off mid-body with an error that is
                # no refusal (and would leave the delivery unrecorded).
                return response.status_code
        except TimeoutError as exc:
            raise self._refused(label, url, f"did not answer within {timeout:g} s") from exc

    @contextlib.asynccontextmanager
    async def _pinned(
        self,
        method: str,
        url: httpx.URL,
        label: str,
        headers: dict[str, str],
        content: bytes | None,
    ) -> AsyncIterator[httpx.Response]:
        """Send to the checked address of ``url``'s host; yields the streamed response."""
        addresses = await self.addresses(url, label)
        timeout = httpx.Timeout(
            connect=self.connect_timeout,
            read=self.read_timeout,
            write=self.read_timeout,
            pool=self.connect_timeout,
        )
        sent_headers = {
            "User-Agent": USER_AGENT,
            **headers,
            "Host": url.netloc.decode("ascii"),
        }
        extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
        last: Exception | None = None
        for addr in addresses:
            # A fresh client per connection: a pooled connection to this IP must never be reused
            # for another host name (its TLS session was checked against the first one).
            async with httpx.AsyncClient(
                verify=self.verify, trust_env=False, timeout=timeout, follow_redirects=False
            ) as client:
                request = client.build_request(
                    method,
                    url.copy_with(host=str(addr)),
                    headers=sent_headers,
                    content=content,
                    extensions=extensions,
                )
                try:
                    response = await client.send(request, stream=True)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    last = exc
                    continue  # every address was checked; try the next one
                except httpx.TimeoutException as exc:
                    raise self._refused(label, str(url), "did not answer in time") from exc
                except httpx.HTTPError as exc:
                    raise self._refused(
                        label, str(url), f"could not be fetched ({type(exc).__name__})"
                    ) from exc
                try:
                    yield response
                finally:
                    await response.aclose()
                return
        reason = "could not be reached"
        if isinstance(last, httpx.ConnectError) and "SSL" in str(last):
            reason = "could not be reached over a verified TLS connection"
        elif isinstance(last, httpx.ConnectTimeout):
            reason = "did not accept a connection in time"
        raise self._refused(label, str(url), reason) from last

    async def _read_capped(self, response: httpx.Response, label: str, shown: str) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(label, shown)
        chunks: list[bytes] = []
        total = 0
        try:
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > self.max_bytes:
                    raise self._too_large(label, shown)
                chunks.append(chunk)
        except httpx.TimeoutException as exc:
            raise self._refused(label, shown, "stopped sending (read timeout)") from exc
        except httpx.HTTPError as exc:
            raise self._refused(
                label, shown, f"broke off while downloading ({type(exc).__name__})"
            ) from exc
        return b"".join(chunks)

    def _too_large(self, label: str, shown: str) -> FetchRefused:
        mb = self.max_bytes / (1024 * 1024)
        return self._refused(label, shown, f"is larger than {mb:g} MB, the limit per image")

    @staticmethod
    def _refused(label: str, url: str, reason: str) -> FetchRefused:
        shown = url if len(url) <= 120 else url[:117] + "..."
        return FetchRefused("url_refused", f"{label} ({shown}) {reason}.")

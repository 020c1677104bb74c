"""The SSRF guard of the gateway's image fetcher, against real HTTP(S) servers on loopback.

Every refusal must happen before any connection is made: tests that point at a second server
check it was never contacted, and addresses outside loopback are never actually dialled.
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.errors import InputError
from app.fetcher import AddressPolicy, SafeFetcher
from tests.conftest import image_bytes

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


class ImageServer:
    """A tiny HTTP(S) server with scripted routes; records every request it gets."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Handler] = {}
        self.hits: list[dict[str, Any]] = []
        self.sni: list[str | None] = []
        server = self

        class _H(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.hits.append({"path": self.path, "headers": dict(self.headers), "body": body})
                handler = server.routes.get(self.path.split("?", 1)[0])
                if handler is None:
                    self.send_error(404)
                    return
                handler(self)

            do_GET = do_POST = _serve

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), _H)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.sni.append(name)
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.host = host
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def add(
        self,
        path: str,
        body: bytes,
        status: int = 200,
        content_type: str = "image/png",
        length: bool = True,
    ) -> None:
        def handler(h: http.server.BaseHTTPRequestHandler) -> None:
            h.send_response(status)
            h.send_header("Content-Type", content_type)
            if length:
                h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)

        self.routes[path] = handler

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        def handler(h: http.server.BaseHTTPRequestHandler) -> None:
            h.send_response(status)
            h.send_header("Location", location)
            h.send_header("Content-Length", "0")
            h.end_headers()

        self.routes[path] = handler

    def drip(self, path: str, chunks: int, pause: float) -> None:
        """Send headers, then a byte every ``pause`` seconds (a server that never finishes)."""

        def handler(h: http.server.BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.end_headers()
            try:
                for _ in range(chunks):
                    h.wfile.write(b"x")
                    h.wfile.flush()
                    time.sleep(pause)
            except OSError:
                pass

        self.routes[path] = handler

    def paths(self) -> list[str]:
        return [h["path"] for h in self.hits]

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def refusal(fetcher: SafeFetcher, url: str, label: str = "image_urls[0]") -> str:
    with pytest.raises(InputError) as info:
        run(fetcher.fetch(url, label))
    assert info.value.status_code == 400
    return info.value.message


@pytest.fixture
def server():
    with ImageServer() as srv:
        yield srv


PNG = image_bytes(400, 400)


def test_fetches_an_image_from_an_allowed_network(server):
    server.add("/cat.png", PNG)
    fetcher = SafeFetcher(["127.0.0.1/32"])
    got = run(fetcher.fetch(server.url("/cat.png"), "image_urls[0]"))
    assert got.data == PNG
    assert got.content_type == "image/png"
    # The request went to the checked address with the original Host header.
    [hit] = server.hits
    assert hit["headers"]["Host"] == f"127.0.0.1:{server.port}"


def test_loopback_is_refused_without_the_allow_list_and_never_contacted(server):
    server.add("/cat.png", PNG)
    message = refusal(SafeFetcher(), server.url("/cat.png"), "image_urls[2]")
    assert message.startswith("image_urls[2] (")
    assert "loopback" in message and "only public addresses" in message
    assert server.hits == []


def test_a_host_name_that_resolves_to_loopback_is_refused(server):
    server.add("/cat.png", PNG)
    message = refusal(SafeFetcher(), server.url("/cat.png", host="localhost"))
    assert "host name that points to a loopback address" in message
    # The resolved address is not echoed (it would map the internal DNS for a caller).
    assert "127.0.0.1" not in message.split(") ", 1)[1]
    assert server.hits == []


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://10.1.2.3/a.png", "private-network"),
        ("http://192.168.0.10/a.png", "private-network"),
        ("http://172.20.0.1:8080/a.png", "private-network"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://100.64.1.1/a.png", "carrier-grade NAT"),
        ("http://0.0.0.0/a.png", "unspecified"),
        ("http://224.0.0.1/a.png", "multicast"),
        ("http://240.0.0.1/a.png", "address"),
        ("http://[::1]/a.png", "loopback"),
        ("http://[fe80::1]/a.png", "link-local"),
        ("http://[fd00::5]/a.png", "private-network"),
        ("http://[::ffff:10.0.0.1]/a.png", "private-network address (inside an IPv6 address)"),
        ("http://[::ffff:127.0.0.1]/a.png", "loopback address (inside an IPv6 address)"),
        ("http://[2002:a00:1::]/a.png", "inside an IPv6 address"),
        ("http://[64:ff9b::a9fe:a9fe]/a.png", "link-local address (inside an IPv6 address)"),
        # Odd spellings of 127.0.0.1 are resolved by the system, then checked like any answer.
        ("http://2130706433/a.png", "loopback"),
        ("http://0x7f.1/a.png", "loopback"),
    ],
)
def test_internal_literal_addresses_are_refused_before_connecting(url, words):
    # The message comes from the address check, which runs before any socket is opened.
    message = refusal(SafeFetcher(["203.0.113.0/24"]), url)
    assert "points to" in message and words in message


def test_the_allow_list_admits_only_its_networks():
    policy = AddressPolicy(["10.20.0.0/16", "127.0.0.1/32"])
    assert policy.refusal(ipaddress.ip_address("10.20.3.4")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:10.20.3.4")) is None
    assert policy.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert policy.refusal(ipaddress.ip_address("127.0.0.2")) == "a loopback address"
    assert policy.refusal(ipaddress.ip_address("10.21.0.1")) == "a private-network address"
    assert policy.refusal(ipaddress.ip_address("93.184.215.14")) is None  # public
    # Unspecified and multicast are never a server, whatever the list says.
    assert AddressPolicy(["0.0.0.0/0"]).refusal(ipaddress.ip_address("0.0.0.0")) is not None


def test_a_redirect_to_a_refused_host_is_refused_before_connecting(server):
    with ImageServer(host="127.0.0.2") as other:
        other.add("/secret.png", PNG)
        server.redirect("/to-other", other.url("/secret.png"))
        server.redirect("/to-metadata", "http://169.254.169.254/latest/meta-data/", 301)
        fetcher = SafeFetcher(["127.0.0.1/32"])
        message = refusal(fetcher, server.url("/to-other"))
        assert message.startswith("image_urls[0]'s redirect (http://127.0.0.2:")
        assert "loopback" in message
        assert other.hits == []  # 127.0.0.2 is outside 127.0.0.1/32: never contacted
        message = refusal(fetcher, server.url("/to-metadata"))
        assert "169.254.169.254" in message and "link-local" in message
    assert server.paths() == ["/to-other", "/to-metadata"]


def test_redirects_are_followed_up_to_three_times(server):
    server.add("/final.png", PNG)
    server.redirect("/r3", "/final.png", 307)
    server.redirect("/r2", server.url("/r3"), 308)
    server.redirect("/r1", "r2", 303)
    server.redirect("/r0", "/r1")
    fetcher = SafeFetcher(["127.0.0.1/32"])
    got = run(fetcher.fetch(server.url("/r1"), "image_urls[0]"))
    assert got.data == PNG and got.final_url == server.url("/final.png")
    message = refusal(fetcher, server.url("/r0"))
    assert "redirects more than 3 times" in message


def test_size_is_capped_on_the_declared_length_and_while_streaming(server):
    big = b"\x89PNG" + b"\0" * (10 * 1024 * 1024)
    server.add("/declared.png", big)
    server.add("/streamed.png", big, length=False)
    fetcher = SafeFetcher(["127.0.0.1/32"])
    assert "larger than 10 MB" in refusal(fetcher, server.url("/declared.png"))
    assert "larger than 10 MB" in refusal(fetcher, server.url("/streamed.png"))
    small = SafeFetcher(["127.0.0.1/32"], max_bytes=1000)
    server.add("/ok.png", b"x" * 1000, length=False)
    assert len(run(small.fetch(server.url("/ok.png"), "image_urls[0]")).data) == 1000


def test_total_time_is_capped(server):
    server.drip("/slow.png", chunks=50, pause=0.1)
    fetcher = SafeFetcher(["127.0.0.1/32"], total_timeout=0.5)
    assert "did not finish downloading within 0.5 s" in refusal(fetcher, server.url("/slow.png"))


def test_error_status_and_bad_schemes_are_named(server):
    fetcher = SafeFetcher(["127.0.0.1/32"])
    assert "answered HTTP 404" in refusal(fetcher, server.url("/missing.png"))
    assert "must be an http or https URL" in refusal(fetcher, "file:///etc/passwd")
    assert "must be an http or https URL" in refusal(fetcher, "ftp://example.com/a.png")
    assert "is not an absolute http or https URL" in refusal(fetcher, "/relative.png")
    assert "does not resolve" in refusal(fetcher, "http://no-such-host.invalid/a.png")


def test_callbacks_post_only_to_https_unless_relaxed(server):
    server.routes["/hook"] = lambda h: (h.send_response(204), h.end_headers())
    fetcher = SafeFetcher(["127.0.0.1/32"])
    with pytest.raises(InputError) as info:
        run(fetcher.post(server.url("/hook"), "callback_url", content=b"{}", headers={}))
    assert "must be an https URL" in info.value.message
    status = run(
        fetcher.post(
            server.url("/hook"),
            "callback_url",
            content=b'{"a":1}',
            headers={"Content-Type": "application/json"},
            schemes=("https", "http"),
        )
    )
    assert status == 204 and server.hits[-1]["body"] == b'{"a":1}'


def _self_signed(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``name`` and a client context trusting only it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cafile=str(cert_file))
    return server_ctx, client_ctx


def test_https_connects_to_the_checked_address_with_the_host_name_for_tls(tmp_path):
    server_ctx, client_ctx = _self_signed(tmp_path, "localhost")
    with ImageServer(tls=server_ctx) as tls_server:
        tls_server.add("/cat.png", PNG)
        fetcher = SafeFetcher(["127.0.0.1/32", "::1/128"], verify=client_ctx)
        got = run(fetcher.fetch(tls_server.url("/cat.png", host="localhost"), "image_urls[0]"))
        assert got.data == PNG
        # SNI and the certificate check used the name, the TCP connection the checked IP.
        assert tls_server.sni == ["localhost"]
        assert tls_server.hits[0]["headers"]["Host"] == f"localhost:{tls_server.port}"
        # By IP the certificate (made for "localhost") does not match: refused, not ignored.
        message = refusal(fetcher, tls_server.url("/cat.png", host="127.0.0.1"))
        assert "verified TLS connection" in message


@pytest.mark.parametrize("port", ["65536", "99999", "0"])
def test_ports_out_of_range_are_refused_before_connecting(server, port):
    # httpx parses any number as a port; the socket layer then raised an OverflowError, which is
    # no refusal (the gateway answered 500). Loopback is allowed here, so only the port is wrong.
    fetcher = SafeFetcher(["127.0.0.1/32"])
    url = f"http://127.0.0.1:{port}/photo.png"
    assert "invalid port" in refusal(fetcher, url)
    with pytest.raises(InputError, match="invalid port"):
        run(fetcher.check(f"https://127.0.0.1:{port}/hook", "callback_url", ("https",)))
    with pytest.raises(InputError, match="invalid port"):
        run(fetcher.post(url, "callback_url", content=b"{}", headers={}, schemes=("http",)))


def test_a_callback_receivers_body_is_never_read(server):
    """Only the status of a callback matters: a receiver that streams without end (memory) or
    breaks off mid-body (an httpx error that is no refusal) still counts as having answered."""

    def endless(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        try:
            while True:
                h.wfile.write(b"x" * 65536)
        except OSError:
            pass

    def broken(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(202)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        h.wfile.write(b"only a little")
        h.wfile.flush()
        h.close_connection = True

    server.routes["/endless"] = endless
    server.routes["/broken"] = broken
    fetcher = SafeFetcher(["127.0.0.1/32"])

    def post(path: str) -> int:
        return run(
            fetcher.post(
                server.url(path),
                "callback_url",
                content=b"{}",
                headers={},
                schemes=("http",),
                timeout=3.0,
            )
        )

    assert post("/endless") == 200
    assert post("/broken") == 202

"""The transports in a user's network, against real servers on loopback: a forward proxy (CONNECT tunnels
for https, absolute-form requests for http) named by the environment, a TLS server whose CA this test
creates (trusted through `ca_bundle`, through SSL_CERT_FILE, or not at all), gzip-encoded answers, and
answers over `max_response_bytes`. The lean client (the default) runs on both event loops; aiohttp and
httpx on asyncio's."""

import asyncio
import base64
import functools
import gzip
import ipaddress
import ssl
import tracemalloc
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from worker import runtime
from worker.config import ConfigError, ProviderConfig, load_config
from worker.errors import ProviderError
from worker.http import make_transport
from worker.providers import build_providers

CLIENTS = [("lean", "asyncio"), ("lean", "uvloop"), ("aiohttp", "asyncio"), ("httpx", "asyncio")]
NETWORK_VARIABLES = (
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)
PROVIDER_HOST = "provider.test"  # resolves nowhere: only the proxy (which sends it to 127.0.0.1) reaches it


@pytest.fixture(autouse=True)
def plain_network(monkeypatch):
    """No proxy and the system's CAs unless a test says otherwise (the machine's own settings left out)."""
    for name in NETWORK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA made here, and a server certificate it signed for provider.test, localhost and 127.0.0.1."""
    folder = tmp_path_factory.mktemp("pki")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llm-router test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(PROVIDER_HOST), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PROVIDER_HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return {"ca": str(ca_file), "cert": str(cert_file), "key": str(key_file)}


def server_tls(pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["cert"], pki["key"])
    return context


def answer(body=b'{"ok": true}', headers=b"", status=b"200 OK"):
    """A whole HTTP/1.1 answer with a Content-Length."""
    return b"HTTP/1.1 " + status + b"\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body


class Server:
    """A loopback HTTP/1.1 server (over TLS with `tls`): every request gets `reply`'s bytes; `close_after`
    closes the connection after them (an answer that ends with the connection)."""

    def __init__(self, reply=None, tls=None, close_after=False):
        self.reply = answer() if reply is None else reply
        self.tls = tls
        self.close_after = close_after
        self.requests: list[bytes] = []

    async def __aenter__(self):
        async def handle(reader, writer):
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.partition(b":")[2])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        0,  # a GET has no body
                    )
                    self.requests.append(head + await reader.readexactly(length))
                    writer.write(self.reply)
                    await writer.drain()
                    if self.close_after:
                        break
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()


class ForwardProxy:
    """A loopback forward proxy: CONNECT opens a tunnel, an absolute-form request is passed on as it is; the
    target host (whatever its name) is 127.0.0.1. `seen`: (method, target, Proxy-Authorization) of each
    request; `refuse`: answer CONNECT with 407; `tls`: clients reach the proxy itself over TLS."""

    def __init__(self, refuse=False, tls=None):
        self.refuse = refuse
        self.tls = tls
        self.seen: list[tuple[str, str, str | None]] = []

    async def __aenter__(self):
        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            writer.close()

        async def handle(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines[1:] if line)}
            self.seen.append((method, target, headers.get("proxy-authorization")))
            if method == "CONNECT":
                if self.refuse:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                    writer.close()
                    return
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    "127.0.0.1", int(target.split(":")[-1])
                )
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", urlsplit(target).port)
                upstream_writer.write(head)
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.tls)
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()


@functools.cache
def gzip_bomb() -> bytes:
    """Fifty kilobytes that decode to fifty megabytes."""
    return gzip.compress(b"\0" * 50_000_000, compresslevel=9)


def transport(client, **settings):
    return make_transport(
        ProviderConfig(kind="openai", http_client=client, timeout_s=5, max_connections=10, **settings)
    )


async def call(client, url, **settings):
    """One POST through a new transport of `client`; its answer (or its ProviderError, returned)."""
    http = transport(client, **settings)
    try:
        return await http.post(url, {"content-type": "application/json"}, b'{"q": 1}')
    except ProviderError as exc:
        return exc
    finally:
        await http.close()


@pytest.mark.parametrize(("client", "loop"), CLIENTS)
@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
def test_https_goes_through_the_proxy_the_environment_names_in_a_connect_tunnel(
    client, loop, variable, pki, monkeypatch
):
    async def scenario():
        async with Server(tls=server_tls(pki)) as server, ForwardProxy() as proxy:
            monkeypatch.setenv(variable, proxy.url.replace("http://", "http://bob:s%40cret@"))
            url = f"https://{PROVIDER_HOST}:{server.port}/v1/chat/completions"
            return await call(client, url, ca_bundle=pki["ca"]), proxy.seen, server.requests, server.port

    response, seen, requests, port = runtime.run(scenario(), loop)
    assert not isinstance(response, ProviderError), response
    assert (response.status, response.body) == (200, b'{"ok": true}')
    authorization = "Basic " + base64.b64encode(b"bob:s@cret").decode()
    assert seen == [("CONNECT", f"{PROVIDER_HOST}:{port}", authorization)]
    assert len(requests) == 1 and requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"host: {PROVIDER_HOST}:{port}\r\n".encode() in requests[0].lower()
    assert b"proxy-authorization" not in requests[0].lower(), "the credentials are the proxy's, not the server's"


def test_aiohttp_reaches_an_https_proxy_which_the_lean_client_refuses_at_start(pki, monkeypatch):
    async def scenario():
        async with Server(tls=server_tls(pki)) as server, ForwardProxy(tls=server_tls(pki)) as proxy:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            url = f"https://{PROVIDER_HOST}:{server.port}/v1/chat/completions"
            with pytest.raises(ConfigError, match="the lean HTTP client reaches proxies over http:// only"):
                transport("lean")
            return await call("aiohttp", url, ca_bundle=pki["ca"]), proxy.seen, server.port

    response, seen, port = runtime.run(scenario(), "asyncio")
    assert not isinstance(response, ProviderError), response
    assert response.status == 200 and seen == [("CONNECT", f"{PROVIDER_HOST}:{port}", None)]


@pytest.mark.parametrize(("client", "loop"), CLIENTS)
def test_no_proxy_hosts_go_direct(client, loop, pki, monkeypatch):
    async def scenario():
        async with Server(tls=server_tls(pki)) as server, ForwardProxy() as proxy:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            monkeypatch.setenv("NO_PROXY", "example.com, localhost")
            url = f"https://localhost:{server.port}/v1/chat/completions"
            return await call(client, url, ca_bundle=pki["ca"]), proxy.seen, server.requests

    response, seen, requests = runtime.run(scenario(), loop)
    assert not isinstance(response, ProviderError), response
    assert response.status == 200 and len(requests) == 1
    assert seen == [], "localhost is in NO_PROXY"


@pytest.mark.parametrize(("client", "loop"), CLIENTS)
def test_http_goes_to_the_http_proxy_in_absolute_form(client, loop, monkeypatch):
    async def scenario():
        async with Server() as server, ForwardProxy() as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # not for http URLs
            url = f"http://{PROVIDER_HOST}:{server.port}/v1/chat/completions?x=1"
            return await call(client, url), proxy.seen, server.requests, server.port

    response, seen, requests, port = runtime.run(scenario(), loop)
    assert not isinstance(response, ProviderError), response
    assert response.status == 200
    target = f"http://{PROVIDER_HOST}:{port}/v1/chat/completions?x=1"
    assert seen == [("POST", target, None)]
    assert requests[0].startswith(f"POST {target} HTTP/1.1\r\n".encode())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_proxy_that_refuses_the_tunnel_is_a_server_error_naming_it(loop, pki, monkeypatch):
    async def scenario():
        async with ForwardProxy(refuse=True) as proxy:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            return await call("lean", f"https://{PROVIDER_HOST}:443/v1/chat/completions"), proxy.url

    error, proxy_url = runtime.run(scenario(), loop)
    assert isinstance(error, ProviderError) and error.kind == "server"
    assert f"the proxy {proxy_url} answered CONNECT {PROVIDER_HOST}:443 with 407" in error.message


@pytest.mark.parametrize(("client", "loop"), CLIENTS)
@pytest.mark.parametrize("trust", ["ca_bundle", "SSL_CERT_FILE", "neither"])
def test_a_server_whose_ca_is_trusted_through_ca_bundle_or_ssl_cert_file_and_refused_otherwise(
    client, loop, trust, pki, monkeypatch
):
    async def scenario():
        async with Server(tls=server_tls(pki)) as server:
            if trust == "SSL_CERT_FILE":
                monkeypatch.setenv("SSL_CERT_FILE", pki["ca"])
            settings = {"ca_bundle": pki["ca"]} if trust == "ca_bundle" else {}
            return await call(client, f"https://localhost:{server.port}/v1/chat/completions", **settings)

    response = runtime.run(scenario(), loop)
    if trust == "neither":
        assert isinstance(response, ProviderError) and response.kind == "server"
        assert "CERTIFICATE_VERIFY_FAILED" in response.message
        assert "ca_bundle" in response.message and "SSL_CERT_FILE" in response.message
    else:
        assert not isinstance(response, ProviderError), response
        assert (response.status, response.body) == (200, b'{"ok": true}')


@pytest.mark.parametrize(("client", "loop"), CLIENTS)
def test_a_get_is_sent_without_a_body_and_a_post_follows_it(client, loop):
    async def scenario():
        async with Server(answer(b'{"status": "in_progress"}')) as server:
            http = transport(client)
            try:
                url = f"http://127.0.0.1:{server.port}/v1/batches/batch_1"
                got = await http.get(url, {"authorization": "Bearer k"})
                posted = await http.post(f"{url}/cancel", {"authorization": "Bearer k"}, b"")
            finally:
                await http.close()
            return got, posted, server.requests

    got, posted, requests = runtime.run(scenario(), loop)
    assert (got.status, got.body, posted.status) == (200, b'{"status": "in_progress"}', 200)
    get, post = (request.lower() for request in requests)
    assert get.startswith(b"get /v1/batches/batch_1 http/1.1\r\n") and b"authorization: bearer k\r\n" in get
    assert get.endswith(b"\r\n\r\n") and b"content-length: 0" not in get
    assert post.startswith(b"post /v1/batches/batch_1/cancel http/1.1\r\n")


@pytest.mark.parametrize(("client", "loop"), CLIENTS)
@pytest.mark.parametrize("framing", ["length", "chunked", "until_close"])
def test_a_gzip_answer_is_asked_for_and_decoded(client, loop, framing):
    payload = b'{"choices": [{"message": {"content": "' + b"Paris. " * 500 + b'"}}]}'
    encoded = gzip.compress(payload)
    if framing == "length":
        reply = answer(encoded, b"Content-Encoding: gzip\r\n")
    elif framing == "chunked":
        half = len(encoded) // 2
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (encoded[:half], encoded[half:]))
        reply = (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        )
    else:
        reply = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n\r\n" + encoded

    async def scenario():
        async with Server(reply, close_after=framing == "until_close") as server:
            return await call(client, f"http://127.0.0.1:{server.port}/v1/chat/completions"), server.requests

    response, requests = runtime.run(scenario(), loop)
    assert not isinstance(response, ProviderError), response
    assert response.body == payload
    accepted = next(line for line in requests[0].lower().split(b"\r\n") if line.startswith(b"accept-encoding:"))
    assert b"gzip" in accepted


@pytest.mark.parametrize(("client", "loop"), CLIENTS)
@pytest.mark.parametrize("framing", ["length", "chunked", "until_close", "gzip"])
def test_an_answer_over_max_response_bytes_is_refused(client, loop, framing):
    limit = 64 * 1024
    big = b"x" * (limit + 1)
    if framing == "length":
        reply = answer(big)
    elif framing == "chunked":
        chunk = b"%x\r\n%s\r\n" % (4096, b"x" * 4096)
        reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 17 + b"0\r\n\r\n"
    elif framing == "until_close":
        reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + big
    else:  # a gzip bomb
        reply = answer(gzip_bomb(), b"Content-Encoding: gzip\r\n")
        assert len(reply) < limit

    async def scenario():
        async with Server(reply, close_after=framing == "until_close") as server:
            url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
            tracemalloc.start()
            refused = await call(client, url, max_response_bytes=limit)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            server.reply = answer(b"x" * limit)  # at the limit: taken
            taken = await call(client, url, max_response_bytes=limit)
            return refused, peak, taken

    refused, peak, taken = runtime.run(scenario(), loop)
    assert isinstance(refused, ProviderError) and refused.kind == "server"
    if client == "lean":  # aiohttp and httpx decode a piece of the stream whole before it can be counted
        assert peak < 4 * 1024 * 1024, f"{peak} bytes held at the peak: the answer was taken whole"
    assert "max_response_bytes" in refused.message and str(limit) in refused.message
    assert not isinstance(taken, ProviderError), taken
    assert len(taken.body) == limit


def test_a_missing_ca_bundle_or_an_https_proxy_is_a_configuration_error_naming_the_provider(monkeypatch):
    config = load_config(env={"LLM_ROUTER__PROVIDERS__OPENAI__CA_BUNDLE": "/nonexistent/ca.pem"})
    with pytest.raises(ConfigError, match=r"providers\.openai: ca_bundle '/nonexistent/ca\.pem'"):
        build_providers(config, env={"OPENAI_API_KEY": "k"})
    monkeypatch.setenv("HTTPS_PROXY", "https://proxy.example:3128")
    with pytest.raises(ConfigError, match=r"providers\.openai: the proxy https://proxy\.example:3128: the lean HTTP"):
        build_providers(load_config(env={}), env={"OPENAI_API_KEY": "k"})

"""What a user's network asks of an HTTP client: the proxies the environment names, and the CAs to trust.

Proxies come from `http_proxy` / `https_proxy` / `no_proxy` (the lower-case name first, then the
upper-case one, as curl and Python's urllib read them), once, when a transport is made:
`https_proxy` for https URLs (reached through a CONNECT tunnel), `http_proxy` for http URLs (sent to
the proxy in absolute form), with the user and password of the proxy's URL sent as basic
Proxy-Authorization. `no_proxy` lists hosts that go direct: `*` for all, a name (which covers its
subdomains; a leading `.` or `*.` is the same), an IP address or network (`10.0.0.0/8`), each
optionally with `:port`.

TLS trusts the system's CAs, as OpenSSL finds them (`SSL_CERT_FILE` and `SSL_CERT_DIR` replace its
default file and directory), and the provider's `ca_bundle` besides.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from msgspec import Struct

from worker.config import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def ssl_context(ca_bundle: str = "") -> ssl.SSLContext:
    """A verifying TLS client context: the system's CAs (OpenSSL's default paths, which honour SSL_CERT_FILE
    and SSL_CERT_DIR), and `ca_bundle` (a PEM file, or a directory hashed by `openssl rehash`) besides."""
    context = ssl.create_default_context()
    if ca_bundle:
        try:
            if os.path.isdir(ca_bundle):
                context.load_verify_locations(capath=ca_bundle)
            else:
                context.load_verify_locations(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"ca_bundle {ca_bundle!r} cannot be loaded: {exc}") from None
    return context


def check_ca_bundle(ca_bundle: str) -> None:
    """ConfigError when `ca_bundle` names nothing: found at start, not at the first call."""
    if ca_bundle and not os.path.exists(ca_bundle):
        raise ConfigError(f"ca_bundle {ca_bundle!r}: no such file or directory")


class Proxy(Struct, frozen=True, kw_only=True):
    """A forward proxy."""

    scheme: str  # how the proxy itself is reached: "http" (plain) or "https" (TLS to the proxy)
    host: str
    port: int
    authorization: str = ""  # the Proxy-Authorization value, from the URL's user and password
    url: str  # for messages: without the credentials


class Proxies:
    """The environment's proxies and the hosts that bypass them; see the module's docstring."""

    def __init__(self, http: Proxy | None = None, https: Proxy | None = None, no_proxy: str = "") -> None:
        self.http = http
        self.https = https
        self._bypass_all = False
        self._names: list[tuple[str, int | None]] = []
        self._networks: list[tuple[IPNetwork, int | None]] = []
        for entry in re.split(r"[,\s]+", no_proxy.strip()):
            self._add_bypass(entry)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Proxies:
        """The proxies `env` (default: the process's environment) names; ConfigError for one that is not an
        http:// or https:// URL."""
        env = os.environ if env is None else env

        def variable(name: str) -> tuple[str, str]:
            for key in (name, name.upper()):
                if env.get(key, "").strip():
                    return key, env[key].strip()
            return name, ""

        proxies = {}
        for scheme in ("http", "https"):
            key, value = variable(f"{scheme}_proxy")
            proxies[scheme] = parse_proxy(value, key) if value else None
        return cls(proxies["http"], proxies["https"], variable("no_proxy")[1])

    def for_url(self, tls: bool, host: str, port: int) -> Proxy | None:
        """The proxy to reach host:port through (an https URL when `tls`), or None to connect directly."""
        proxy = self.https if tls else self.http
        if proxy is None or self._bypass_all:
            return None
        host = host.strip("[]").rstrip(".").lower()
        for name, only_port in self._names:
            if (host == name or host.endswith("." + name)) and only_port in (None, port):
                return None
        if self._networks:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                return proxy
            for network, only_port in self._networks:
                if address in network and only_port in (None, port):
                    return None
        return proxy

    def _add_bypass(self, entry: str) -> None:
        if not entry:
            return
        if entry == "*":
            self._bypass_all = True
            return
        host, port = entry, None
        if entry.startswith("["):  # [IPv6]:port
            host, _, rest = entry[1:].partition("]")
            port = rest[1:] or None
        elif entry.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
            host, _, port = entry.partition(":")
        if port is not None and not port.isdigit():
            return  # not a port: an entry no host can match
        only_port = int(port) if port is not None else None
        try:
            self._networks.append((ipaddress.ip_network(host, strict=False), only_port))
        except ValueError:
            name = host.removeprefix("*").lstrip(".").rstrip(".").lower()
            if name:
                self._names.append((name, only_port))


def parse_proxy(value: str, variable: str) -> Proxy:
    """The proxy an environment variable's value names (`host:port` alone means http://host:port)."""
    parts = urlsplit(value if "://" in value else f"http://{value}")
    shown = f"{parts.scheme}://{parts.hostname}"  # without the credentials
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{variable}: {shown} is a {parts.scheme}:// proxy; an http:// or https:// one is needed")
    if not parts.hostname:
        raise ConfigError(f"{variable}: its URL names no proxy host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"{variable}: {shown} has no valid port") from None
    authorization = ""
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Proxy(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port,
        authorization=authorization,
        url=f"{parts.scheme}://{host}:{port}",
    )

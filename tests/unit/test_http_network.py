"""The environment's proxies as the transports read them: which variable counts, the proxy's URL and
credentials, and the NO_PROXY rules (the transports' tests take them through a real proxy)."""

import pytest

from worker.config import ConfigError
from worker.http.network import Proxies, Proxy, parse_proxy


def test_the_lower_case_variable_wins_and_each_scheme_has_its_own():
    proxies = Proxies.from_env(
        {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2", "HTTP_PROXY": "plain.example:3128"}
    )
    assert proxies.for_url(True, "api.openai.com", 443) == Proxy(
        scheme="http", host="lower", port=1, url="http://lower:1"
    )
    assert proxies.for_url(False, "api.openai.com", 80) == Proxy(
        scheme="http", host="plain.example", port=3128, url="http://plain.example:3128"
    )
    assert Proxies.from_env({}).for_url(True, "api.openai.com", 443) is None


def test_a_proxy_url_gives_its_credentials_decoded_as_basic_authorization_and_hides_them():
    proxy = parse_proxy("http://alice:p%40ss%3Aword@proxy.corp:8080", "HTTPS_PROXY")
    assert (proxy.host, proxy.port, proxy.url) == ("proxy.corp", 8080, "http://proxy.corp:8080")
    assert proxy.authorization == "Basic YWxpY2U6cEBzczp3b3Jk"  # alice:p@ss:word
    assert parse_proxy("http://proxy.corp", "HTTPS_PROXY").port == 80
    tls = parse_proxy("https://[fd00::1]", "HTTPS_PROXY")
    assert (tls.scheme, tls.host, tls.port, tls.url) == ("https", "fd00::1", 443, "https://[fd00::1]:443")


@pytest.mark.parametrize("value", ["socks5://proxy.corp:1080", "http://:3128", "http://proxy.corp:port"])
def test_a_proxy_that_is_not_an_http_or_https_url_is_a_configuration_error(value):
    with pytest.raises(ConfigError, match="HTTPS_PROXY"):
        Proxies.from_env({"HTTPS_PROXY": value})


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "direct"),
    [
        ("*", "api.openai.com", 443, True),
        ("openai.com", "api.openai.com", 443, True),
        ("openai.com", "openai.com", 443, True),
        ("openai.com", "notopenai.com", 443, False),
        (".openai.com", "api.openai.com", 443, True),
        ("*.openai.com", "API.OpenAI.com", 443, True),
        ("localhost, 127.0.0.1", "127.0.0.1", 8000, True),
        ("localhost:8000", "localhost", 8000, True),
        ("localhost:8000", "localhost", 8001, False),
        ("10.0.0.0/8", "10.1.2.3", 443, True),
        ("10.0.0.0/8", "11.1.2.3", 443, False),
        ("10.0.0.0/8", "api.openai.com", 443, False),
        ("::1", "::1", 443, True),
        ("[::1]:8000", "::1", 8000, True),
        ("[::1]:8000", "::1", 8001, False),
        ("host:notaport, other.example", "host", 443, False),
        ("", "api.openai.com", 443, False),
    ],
)
def test_no_proxy_rules(no_proxy, host, port, direct):
    proxies = Proxies.from_env({"https_proxy": "http://proxy:3128", "no_proxy": no_proxy})
    assert (proxies.for_url(True, host, port) is None) == direct

"""Secured Kafka: an Apache Kafka broker of this module's own with a SASL_SSL listener (SCRAM-SHA-512 over TLS,
its certificate signed by a CA the test makes). Topics are created, jobs produced, the worker run and the results
read over that listener; a wrong password, and a CA that did not sign the broker's certificate, stop the worker
at start with exit code 2 and the reason, long before `kafka.connect_timeout_s`.

Apache Kafka only (marker apache_kafka, run by `make test-kafka`): the embedded Tansu has no SASL or TLS, so this
module never uses it. It starts its broker with scripts/kafka.sh beside the run's own (other ports, a temporary
directory; java and the Maven Central jars, which fail it with kafka.sh's message when missing), and stops it.
"""

import asyncio
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.helpers import REPO, Outputs, Replicas, Setup, collect, job_bytes, produce
from tests.reliability.helpers import kafka_sh

pytestmark = pytest.mark.apache_kafka

USER, PASSWORD = "router", "router-secret-1"
JOBS = 40
# Low, so that a worker waiting for the broker instead of stopping would show; the refusals come in about 1 s.
CONNECT_TIMEOUT_S = 10
# The bound for a wrong password: exit 2 in under this, with the reason.
EXIT_BOUND_S = 30


@dataclass(frozen=True)
class SecuredBroker:
    bootstrap: str  # the SASL_SSL listener's address
    ca: Path  # the CA that signed the broker's certificate
    stranger_ca: Path  # a CA that signed nothing the broker has


def openssl(*args: str | Path) -> None:
    """Run the openssl command line; a failure shows its output."""
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(map(str, args))} failed: {done.stderr[-2000:]}")


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: its certificate and its key."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def make_keystore(folder: Path, ca: tuple[Path, Path]) -> Path:
    """The broker's PEM keystore (its PKCS#8 key, then its certificate, signed by `ca`, for 127.0.0.1 and localhost)."""
    key, csr, cert, extensions = (folder / f"broker.{ext}" for ext in ("key", "csr", "pem", "ext"))
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-out", cert,
        "-days", "2", "-extfile", extensions,
    )  # fmt: skip
    keystore = folder / "broker-keystore.pem"
    keystore.write_text(key.read_text() + cert.read_text())
    return keystore


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """An Apache Kafka broker with a SASL_SSL listener and a SCRAM-SHA-512 user; stopped when the module ends."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command line is needed to make the test's CA (apt-get install openssl)", pytrace=False)
    tls = tmp_path_factory.mktemp("tls")
    ca = make_ca(tls, "test-ca")
    stranger_ca, _ = make_ca(tls, "stranger-ca")
    keystore = make_keystore(tls, ca)
    kafka_dir = tmp_path_factory.mktemp("secured-kafka")
    lines = kafka_sh(
        "start", "--dir", str(kafka_dir), "--sasl-ssl", str(keystore), "--scram-user", f"{USER}:{PASSWORD}"
    ).splitlines()
    try:
        address = next(line.split()[1] for line in lines if line.startswith("SASL_SSL "))
        yield SecuredBroker(bootstrap=address, ca=ca[0], stranger_ca=stranger_ca)
    finally:
        kafka_sh("stop", "--dir", str(kafka_dir))


@pytest.fixture
def credentials(monkeypatch):
    """The SCRAM user's name and password in the variables `kafka.sasl_*_env` name, for this process's clients
    (producing, collecting) and, through the environment, for the processes it starts."""
    monkeypatch.setenv("KAFKA_SASL_USERNAME", USER)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)


def secured_setup(broker: SecuredBroker, **overrides: object) -> Setup:
    """Topics and a group of the test's own on the SASL_SSL listener, trusting the broker's CA."""
    secured = {
        "LLM_ROUTER__KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "LLM_ROUTER__KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "LLM_ROUTER__KAFKA__SSL_CAFILE": broker.ca,
        "LLM_ROUTER__KAFKA__CONNECT_TIMEOUT_S": CONNECT_TIMEOUT_S,
    }
    return Setup(broker.bootstrap, **(secured | overrides))


def cli(setup: Setup, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=setup.process_env() | env,
        cwd=REPO,
    )


def test_jobs_flow_end_to_end_over_sasl_ssl_with_scram(secured, credentials, replicas):
    setup = secured_setup(secured)
    created = cli(setup, "topics", "create", "--partitions", "2")
    assert created.returncode == 0, created.stderr
    assert f"{setup.topics.jobs}\tcreated" in created.stdout.splitlines()
    ids = [f"s{i:03d}" for i in range(JOBS)]

    async def scenario() -> Outputs:
        replica = replicas.start(setup)
        await replica.wait_assigned()
        await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
        return await collect(setup, until=lambda o: o.result_ids >= set(ids), timeout_s=60)

    outputs = asyncio.run(scenario())
    assert outputs.result_ids == set(ids)
    assert {r.status for r in outputs.results} == {"ok"}
    assert {c.job_id for c in outputs.costs} == set(ids)


def stopped_at_start(replicas: Replicas, setup: Setup, **overrides: object) -> tuple[int, float, str]:
    """Start a worker: its exit code, the seconds from its start to its exit, and its output; fails if it is
    still running after EXIT_BOUND_S (a hang)."""
    started = time.monotonic()
    replica = replicas.start(setup, **overrides)
    try:
        code = replica.wait(EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"the worker still runs {EXIT_BOUND_S} s after its start: {replica.log_path.read_text()[-3000:]}"
        ) from None
    return code, time.monotonic() - started, replica.log_path.read_text()


def assert_refused(code: int, elapsed: float, output: str, reason: str) -> None:
    assert code == 2, output[-3000:]
    assert reason in output, output[-3000:]
    # Stopped by the reason, not by waiting out the connect timeout.
    assert "no Kafka broker answered" not in output
    assert elapsed < CONNECT_TIMEOUT_S, f"{elapsed:.1f} s: {output[-3000:]}"


def test_a_wrong_password_stops_the_worker_at_start_with_exit_2_and_the_reason(secured, credentials, replicas, report):
    setup = secured_setup(secured)
    code, elapsed, output = stopped_at_start(replicas, setup, KAFKA_SASL_PASSWORD="not-the-password")
    assert_refused(code, elapsed, output, "authentication failed")
    assert f"user '{USER}' with SCRAM-SHA-512" in output
    assert "not-the-password" not in output
    report(
        f"secured kafka: wrong password: the worker exits 2 in {elapsed:.1f} s (connect_timeout_s {CONNECT_TIMEOUT_S})"
    )
    # The command line's clients take the same settings and stop the same way.
    created = cli(setup, "topics", "create", KAFKA_SASL_PASSWORD="not-the-password")
    assert created.returncode == 2, created.stderr
    assert "authentication failed" in created.stderr


def test_a_ca_that_did_not_sign_the_broker_certificate_stops_the_worker_at_start_with_exit_2(
    secured, credentials, replicas, report
):
    setup = secured_setup(secured, LLM_ROUTER__KAFKA__SSL_CAFILE=secured.stranger_ca)
    code, elapsed, output = stopped_at_start(replicas, setup)
    assert_refused(code, elapsed, output, "certificate verify failed")
    assert str(secured.stranger_ca) in output
    report(f"secured kafka: unknown CA: the worker exits 2 in {elapsed:.1f} s (connect_timeout_s {CONNECT_TIMEOUT_S})")
    listed = cli(setup, "topics", "list")
    assert listed.returncode == 2, listed.stderr
    assert "certificate verify failed" in listed.stderr

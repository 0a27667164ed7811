"""Start, or find running, the real services the tests talk to. Missing ones fail, never skip."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager


class ServiceUnavailable(RuntimeError):
    pass


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(port: int, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_open(port):
            return
        time.sleep(0.3)
    raise ServiceUnavailable(f"{what} did not open 127.0.0.1:{port} within {seconds:.0f} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_rabbitmq_streams() -> int:
    """RabbitMQ with the stream plugin on 5552: start the broker and enable the plugin if needed."""
    if port_open(5552):
        return 5552
    if not shutil.which("rabbitmq-plugins"):
        raise ServiceUnavailable("RabbitMQ is not installed (rabbitmq-server, rabbitmq-plugins)")
    if not port_open(5672):
        subprocess.run(["rabbitmq-server", "-detached"], check=False, capture_output=True)
        wait_for_port(5672, 90, "rabbitmq-server")
    subprocess.run(
        ["rabbitmq-plugins", "enable", "rabbitmq_stream"], check=True, capture_output=True, timeout=120
    )
    wait_for_port(5552, 60, "the rabbitmq_stream plugin")
    return 5552


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server over HTTP on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        wait_for_port(port, 30, "moto S3 server")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()

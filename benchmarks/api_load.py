"""Model-list throughput and latency of the API with and without the Redis cache, in one run.

The API runs as a real uvicorn process (MariaDB, Redis, a real Kubernetes control plane in its own
processes holding 200 ModelArtifacts); an async client sends a fixed number of requests over 50 connections to
`GET /api/v1/projects/{p}/models`. The baseline is the same server with a cache that never hits.
Auth is the local admin on loopback (no token checks) in both runs. Goals: cached req/s >= 3x
uncached, cached p99 < 100 ms.

    python benchmarks/api_load.py [--requests 3000] [--connections 50] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from goals import Goals

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.services import ensure_mariadb, ensure_redis, free_port, wait_for_port  # noqa: E402
from visioninapp.backends.cache import Cache  # noqa: E402
from visioninapp.local.cluster.cluster import Cluster  # noqa: E402

PROJECT = "bench"


class NeverHits(Cache):
    """The baseline: every read goes to the Kubernetes API."""

    def get(self, key: str) -> bytes | None:
        return None

    def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        pass

    def delete_prefix(self, prefix: str) -> None:
        pass

    def incr(self, key: str, ttl_seconds: float) -> int:
        return 1


def make_app() -> object:
    """One server process: the API with the Redis cache, or with one that never hits (BENCH_CACHED)."""
    from visioninapp.api.app import create_app
    from visioninapp.api.container import ApiContainer
    from visioninapp.settings import Settings

    container = ApiContainer.build(Settings())
    if os.environ["BENCH_CACHED"] != "1":
        container.cache = NeverHits()
    return create_app(container)


def serve(port: int, cached: bool, workers: int) -> None:
    import uvicorn

    os.environ["BENCH_CACHED"] = "1" if cached else "0"
    uvicorn.run(
        "api_load:make_app",
        factory=True,
        app_dir=str(Path(__file__).parent),
        workers=workers,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )


async def load(url: str, requests: int, connections: int) -> tuple[list[float], float]:
    """`requests` GETs over `connections` keep-alive connections (aiohttp: a light client)."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as client:
        async with client.get(url) as response:  # warm up
            response.raise_for_status()
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                started = time.perf_counter()
                async with client.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{response.status}: {(await response.text())[:200]}")
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds of each variant.")
    parser.add_argument("--workers", type=int, default=2, help="API server processes (one per core).")
    parser.add_argument("--serve", choices=["cached", "uncached"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def add_project_row(database_url: str) -> None:
    """The project row (local admin sees every project)."""
    from visioninapp.api.db import Database, Project

    db = Database(database_url)
    db.migrate()
    with db.session() as session:
        session.add(Project(name=PROJECT, display_name=PROJECT, created_by="bench"))
    db.dispose()


def load_one_server(args: argparse.Namespace, env: dict[str, str], variant: str) -> tuple[list[float], float]:
    """Start the API as `variant` (cached or uncached), load it, stop it: (latencies, elapsed)."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            variant,
            "--port",
            str(port),
            "--workers",
            str(args.workers),
        ],
        env=env,
    )
    try:
        wait_for_port(port, 60, "the API")
        url = f"http://127.0.0.1:{port}/api/v1/projects/{PROJECT}/models"
        return asyncio.run(load(url, args.requests, args.connections))
    finally:
        server.terminate()
        server.wait(20)


def measure(args: argparse.Namespace, database: str) -> dict[str, list[tuple[list[float], float]]]:
    """Interleaved rounds of the uncached and the cached API over `args.models` ModelArtifacts."""
    results: dict[str, list[tuple[list[float], float]]] = {"uncached": [], "cached": []}
    with (
        tempfile.TemporaryDirectory() as tmp,
        Cluster(Path(tmp) / "cluster") as cluster,
    ):
        cluster.create_namespace(PROJECT)
        for i in range(args.models):
            cluster.create("visioninapp.io", "modelartifacts", PROJECT, model(i))
        env = {
            **os.environ,
            "VISIONINAPP_DATA_DIR": str(Path(tmp) / "data"),
            "VISIONINAPP_DATABASE_URL": f"mysql+pymysql://root@127.0.0.1:3306/{database}",
            "VISIONINAPP_REDIS_URL": "redis://127.0.0.1:6379/13",
            "VISIONINAPP_KUBECONFIG": str(cluster.kubeconfig),
            "VISIONINAPP_API_CACHE_TTL_SECONDS": "30",
            "VISIONINAPP_LOG_LEVEL": "WARNING",
        }
        add_project_row(env["VISIONINAPP_DATABASE_URL"])
        for _ in range(args.rounds):
            for variant in ("uncached", "cached"):
                results[variant].append(load_one_server(args, env, variant))
    return results


def report(results: dict[str, list[tuple[list[float], float]]]) -> None:
    summary = {}
    for variant, runs in results.items():
        rates = [len(lat) / elapsed for lat, elapsed in runs]
        latencies = [value for lat, _ in runs for value in lat]
        summary[variant] = (statistics.median(rates), percentile(latencies, 0.5), percentile(latencies, 0.99))
        rate, p50, p99 = summary[variant]
        print(f"{variant:9s} {rate:8.0f} req/s   p50 {p50:7.1f} ms   p99 {p99:7.1f} ms")
    ratio = summary["cached"][0] / summary["uncached"][0]
    cached_p99 = summary["cached"][2]
    print("goals:")
    goals = Goals("api_load")
    goals.at_least("cached / uncached req/s", ratio, 3.0, "x")
    goals.at_most("cached p99", cached_p99, 100.0, "ms", strict=True)
    goals.finish()


def main() -> None:
    args = parse_args()
    if args.serve:
        serve(args.port, args.serve == "cached", args.workers)
        return

    ensure_mariadb()
    ensure_redis()
    import sqlalchemy

    database = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine("mysql+pymysql://root@127.0.0.1:3306/")
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    results = measure(args, database)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"DROP DATABASE {database}")
    report(results)


def model(i: int) -> dict[str, object]:
    return {
        "apiVersion": "visioninapp.io/v1alpha1",
        "kind": "ModelArtifact",
        "metadata": {"name": f"helmets-v{i}"},
        "spec": {
            "model": "helmets",
            "version": f"v{i}",
            "formats": [
                {"format": "onnx", "uri": f"s3://models/helmets/v{i}.onnx", "sha256": "c" * 64, "size": 1}
            ],
            "classNames": ["helmet", "head"],
            "metrics": {"mAP50": 0.5, "mAP50_95": (i % 100) / 200},
        },
    }


if __name__ == "__main__":
    main()

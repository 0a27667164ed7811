"""TrainingJobs at scale: the operator against a minimal kopf handler on the same emulated cluster.

N TrainingJobs are applied at once; we measure the time until every Job exists, the CR→Job latency
(p50/p95), the operator process's CPU time per CR and its API requests per CR (watches excluded).
The baseline is benchmarks/baselines/minimal_operator.py, a kopf handler that only creates the Job, measured
in the same run on the same harness (runs alternate: baseline, operator, baseline, ...). The
harness runs without its Job controller, so only the operator's own path is timed.
Goals: p95 < 2 s, <= 4 requests per CR, wall time <= 1.5x the minimal handler's.

    python benchmarks/operator_scale.py [--count 1000] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from visioninapp.cluster.harness import Harness

HERE = Path(__file__).resolve().parent
GROUP = "visioninapp.io"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def training_job(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "visioninapp.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": f"run-{index:05d}"},
        "spec": {"model": {"architecture": "yolo11n"}, "dataset": {"uri": "s3://datasets/shapes/v1"}},
    }


def measure(command: list[str], count: int, work: Path) -> dict[str, float]:
    with Harness(work, run_controllers=False) as cluster:
        cluster.create_namespace("bench")
        created: dict[str, float] = {}
        jobs: dict[str, float] = {}

        def record(rtype: Any, event: str, obj: dict[str, Any]) -> None:
            if event != "ADDED":
                return
            if rtype.plural == "trainingjobs":
                created[obj["metadata"]["name"]] = time.monotonic()
            elif rtype.plural == "jobs":
                jobs[obj["metadata"]["name"].rsplit("-", 1)[0]] = time.monotonic()

        cluster.call(cluster.emulator.store.on_change, record)
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "VISIONINAPP_DATA_DIR": str(work / "data"),
            "VISIONINAPP_OPERATOR_METRICS_PORT": "0",
            "VISIONINAPP_OPERATOR_LIVENESS_PORT": "0",
        }
        with (work / "operator.log").open("wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            counts = cluster.emulator.request_counts
            cluster.wait_for(lambda: counts["WATCH trainingjobs"] > 0, 60, "the operator to watch")
            time.sleep(1)  # let the other watches settle
            cpu_before, requests_before = cpu_seconds(process.pid), _requests(cluster)
            start = time.monotonic()
            cluster.call(
                lambda: [
                    cluster.emulator.store.create(
                        cluster.emulator.store.type_for(GROUP, "trainingjobs"), "bench", training_job(i)
                    )
                    for i in range(count)
                ]
            )
            cluster.wait_for(lambda: len(jobs) >= count, 600, f"{count} Jobs")
            wall = time.monotonic() - start
            time.sleep(2)  # let status writes that follow the Job land before counting
            cpu = cpu_seconds(process.pid) - cpu_before
            requests = _requests(cluster) - requests_before
            frequent = {k: v for k, v in cluster.emulator.request_counts.items() if v >= count // 2}
            print(f"  {command[-1]}: frequent requests {frequent}")
        finally:
            process.terminate()
            process.wait(30)
        latencies = sorted(jobs[name] - created[name] for name in created)
        return {
            "wall": wall,
            "p50": statistics.median(latencies),
            "p95": latencies[int(0.95 * (len(latencies) - 1))],
            "cpu_ms_per_cr": 1000 * cpu / count,
            "requests_per_cr": requests / count,
        }


def _requests(cluster: Harness) -> int:
    return sum(n for key, n in cluster.emulator.request_counts.items() if not key.startswith("WATCH"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    candidates = {
        "minimal kopf handler": [
            sys.executable,
            "-m",
            "kopf",
            "run",
            "--standalone",
            "-A",
            "--quiet",
            str(HERE / "baselines" / "minimal_operator.py"),
        ],
        "visioninapp-operator": [sys.executable, "-m", "visioninapp.operator.main"],
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in candidates}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for name, command in candidates.items():
                work = Path(tmp) / f"{run}-{name.split()[0]}"
                results[name].append(measure(command, args.count, work))
                print(
                    f"run {run + 1} {name}: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in results[name][-1].items())
                )
    medians = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()
    }
    base, ours = medians["minimal kopf handler"], medians["visioninapp-operator"]
    print(f"\n{args.count} TrainingJobs, median of {args.runs} run(s)")
    print(f"{'':24}{'wall s':>9}{'p50 s':>9}{'p95 s':>9}{'CPU ms/CR':>11}{'req/CR':>9}")
    for name, m in medians.items():
        print(
            f"{name:24}{m['wall']:9.2f}{m['p50']:9.3f}{m['p95']:9.3f}{m['cpu_ms_per_cr']:11.2f}{m['requests_per_cr']:9.2f}"
        )
    ratio = ours["wall"] / base["wall"]
    print(
        f"\nwall-time ratio {ratio:.2f} (goal <= 1.5), p95 {ours['p95']:.2f} s (goal < 2), "
        f"{ours['requests_per_cr']:.2f} requests/CR (goal <= 4)"
    )


if __name__ == "__main__":
    main()

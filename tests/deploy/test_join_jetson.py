"""scripts/join-jetson.sh registers a Jetson with exactly the label and taint EdgeDeployments use."""

from __future__ import annotations

import subprocess
from pathlib import Path

from visioninapp.resources import EdgeDeployment

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "join-jetson.sh"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30)


def test_the_agent_gets_the_edge_label_taint_and_nvidia_runtime() -> None:
    result = run(
        "--server",
        "https://edge.example.com:6443",
        "--token",
        "secret",
        "--site",
        "plant-a",
        "--name",
        "jetson-01",
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    command = result.stdout
    defaults = EdgeDeployment.model_validate({"metadata": {"name": "d"}, "spec": {"modelRef": "m"}}).spec
    for key, value in defaults.node_selector.items():
        assert f"--node-label {key}={value}" in command
    toleration = defaults.tolerations[0]
    assert f"--node-taint {toleration.key}=true:{toleration.effect}" in command
    assert "--default-runtime nvidia" in command and "--node-label visioninapp.io/site=plant-a" in command
    assert "secret" not in command  # the join token is never printed


def test_missing_or_wrong_arguments_say_what_to_do() -> None:
    assert "--server and --token are required" in run("--token", "t").stderr
    assert "https://HOST:6443" in run("--server", "edge:6443", "--token", "t").stderr
    assert run("--help").returncode == 0 and "JetPack 6" in run("--help").stdout
    assert run("--bogus").returncode == 2

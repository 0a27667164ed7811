"""The `visioninapp` command line, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

INVALID = Path(__file__).parent / "invalid"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "visioninapp.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_validate_examples_exits_zero(repo: Path) -> None:
    result = run("validate", "-f", str(repo / "manifests" / "examples"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" valid") == len(list((repo / "manifests" / "examples").rglob("*.yaml")))


@pytest.mark.parametrize("path", sorted(INVALID.glob("*.yaml"))[:8], ids=lambda p: p.stem)
def test_validate_invalid_exits_one_naming_the_field(path: Path) -> None:
    field = path.read_text().splitlines()[0].removeprefix("# expect: ")
    result = run("validate", "-f", str(path))
    assert result.returncode == 1
    assert f": {field}: " in result.stderr
    assert result.stdout == ""


def test_validate_whole_corpus_reports_every_file() -> None:
    result = run("validate", "-f", str(INVALID))
    assert result.returncode == 1
    files = sorted(INVALID.glob("*.yaml"))
    assert f"{len(files)} of {len(files)} object(s) invalid" in result.stderr


def test_validate_with_old_checks_transition_rules(repo: Path, tmp_path: Path) -> None:
    old = repo / "manifests" / "examples" / "modelartifact-imported.yaml"
    new = tmp_path / "new.yaml"
    new.write_text(old.read_text().replace("imgsz: 640", "imgsz: 320"))
    result = run("validate", "-f", str(new), "--old", str(old))
    assert result.returncode == 1 and "immutable except spec.stage" in result.stderr
    new.write_text(old.read_text().replace("stage: staging", "stage: production"))
    assert run("validate", "-f", str(new), "--old", str(old)).returncode == 0


def test_unparseable_and_missing_files_fail_clearly(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    result = run("validate", "-f", str(broken))
    assert result.returncode == 1 and "cannot parse" in result.stderr
    result = run("validate", "-f", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1 and "no such file" in result.stderr


def test_crds_check_passes_on_the_repo(repo: Path) -> None:
    result = run("crds", "check", cwd=repo)
    assert result.returncode == 0, result.stderr


def test_crds_check_fails_on_a_stale_file(repo: Path, tmp_path: Path) -> None:
    assert run("crds", "generate", "-o", str(tmp_path)).returncode == 0
    (tmp_path / "trainingjobs.yaml").write_text("stale")
    result = run("crds", "check", "--dir", str(tmp_path))
    assert result.returncode == 1 and "trainingjobs" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["validate"],
        ["crds"],
        ["crds", "generate"],
        ["crds", "check"],
        ["datasets"],
        ["datasets", "synth"],
        ["version"],
        ["demo"],
        ["models"],
        ["models", "quantize"],
        ["local"],
        ["local", "up"],
        ["logs"],
    ],
)
def test_help_everywhere(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0 and "Usage" in result.stdout


def test_synth_dataset_is_reproducible(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert (
            run(
                "datasets", "synth", "-o", str(tmp_path / name), "--train", "6", "--val", "2", "--seed", "3"
            ).returncode
            == 0
        )
    labels_a = sorted((tmp_path / "a" / "labels" / "train").glob("*.txt"))
    assert len(labels_a) == 6
    for path in labels_a:
        assert path.read_text() == (tmp_path / "b" / "labels" / "train" / path.name).read_text()
    lines = [line.split() for p in labels_a for line in p.read_text().splitlines()]
    assert lines and all(0 <= int(c) < 4 and all(0 <= float(v) <= 1 for v in box) for c, *box in lines)


def test_logs_says_what_to_give_and_where_the_cluster_is(tmp_path: Path) -> None:
    bad = run("logs", "job/x", "--kubeconfig", str(tmp_path / "missing"))
    assert bad.returncode == 1 and "kubeconfig" in bad.stderr
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "current-context: c\n"
    )
    kind = run("logs", "job/x", "--kubeconfig", str(config))
    assert kind.returncode == 1 and "give tj/NAME, ed/NAME or pod/NAME" in kind.stderr
    down = run("logs", "tj/x", "--kubeconfig", str(config))
    assert down.returncode == 1 and "cannot reach the cluster" in down.stderr


def test_the_demo_never_empties_a_directory_it_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "model.onnx").write_bytes(b"weeks of training")
    result = run("demo", "--data-dir", str(precious), "--port", "0", "--kube-port", "0")
    assert result.returncode == 1 and "give the demo its own --data-dir" in result.stderr
    assert (precious / "model.onnx").read_bytes() == b"weeks of training"

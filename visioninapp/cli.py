"""`visioninapp`: the command-line interface. Errors go to stderr with a non-zero exit code."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

from visioninapp import __version__

if TYPE_CHECKING:
    from visioninapp.validation import FieldError

app = typer.Typer(
    help="VisionInApp: train, register, roll out and observe YOLO detectors on Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
)
crds_app = typer.Typer(
    help="The CustomResourceDefinitions generated from the typed models.", no_args_is_help=True
)
datasets_app = typer.Typer(help="Datasets in YOLO format.", no_args_is_help=True)
models_app = typer.Typer(help="Model versions (ModelArtifacts).", no_args_is_help=True)
app.add_typer(crds_app, name="crds")
app.add_typer(datasets_app, name="datasets")
local_app = typer.Typer(help="Local mode: the platform on this machine.", no_args_is_help=True)
cluster_app = typer.Typer(
    help="The real Kubernetes control plane that local mode and the tests run on.", no_args_is_help=True
)
app.add_typer(cluster_app, name="cluster")
app.add_typer(models_app, name="models")
app.add_typer(local_app, name="local")

REPO_CRDS = Path("crds")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@crds_app.command("generate")
def crds_generate(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory to write the CRD files to.")
    ] = REPO_CRDS,
) -> None:
    """Write one CRD per kind (TrainingJob, ModelArtifact, EdgeDeployment, RetrainPolicy) into --out."""
    from visioninapp.crds import write_crds

    for path in write_crds(out):
        typer.echo(f"wrote {path}")


@crds_app.command("check")
def crds_check(
    directory: Annotated[
        Path, typer.Option("--dir", "-d", help="Directory holding the CRD files.")
    ] = REPO_CRDS,
) -> None:
    """Exit 1 when the CRD files differ from what the models generate."""
    from visioninapp.crds import crd_yaml
    from visioninapp.resources import RESOURCES

    stale = [
        r.plural
        for r in RESOURCES
        if not (directory / f"{r.plural}.yaml").is_file()
        or (directory / f"{r.plural}.yaml").read_text() != crd_yaml(r)
    ]
    if stale:
        raise _fail(f"out of date: {', '.join(stale)}; run `visioninapp crds generate`")
    typer.echo("crds are up to date")


@app.command()
def validate(
    files: Annotated[
        list[Path], typer.Option("--filename", "-f", help="Manifest file or directory (repeatable).")
    ],
    old: Annotated[
        Path | None,
        typer.Option(
            "--old",
            help="The stored objects before the change (matched by kind and name): the update is checked "
            "with transition rules, and unchanged invalid values are allowed (ratcheting).",
        ),
    ] = None,
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="text, or json: a list with each object's source, object, result (valid, invalid or "
            "skipped) and errors (field, message).",
        ),
    ] = "text",
) -> None:
    """Check custom resources offline, as `kubectl create/apply/replace` (1.35) and its API server would.

    Nothing contacts a cluster. YAML is read as kubectl reads it (YAML 1.1: y/n/yes/no/on/off are
    booleans, dates stay strings, 10.0 is the integer 10), and kubectl's default --validate=strict is
    mirrored: unknown fields, in metadata, spec or status, are errors (fieldValidation=Strict), not
    dropped as with --validate=false. Then kinds, metadata (name, namespace, labels, annotations,
    finalizers, owner references), the CRD schema and its CEL rules are checked; errors name fields
    as the API server does. Built-in Kubernetes kinds (ConfigMap, ...) are skipped, not checked; a
    kind served by neither is an error.
    """
    import json

    if output not in ("text", "json"):
        raise _fail(f"--output must be text or json, not {output!r}")
    old_objects = _old_objects(old)
    results: list[dict[str, Any]] = []
    for path in files:
        if not path.exists():
            raise _fail(f"{path}: no such file or directory")
        for source, doc in _read_manifests(path):
            checked, errors = _check_document(source, doc, old_objects)
            results.append(checked)
            if output == "text":
                _echo_checked(checked, errors)
    if output == "json":
        typer.echo(json.dumps(results, indent=2))
    failed = sum(r["result"] == "invalid" for r in results)
    if not results:
        raise _fail("no manifests found")
    if failed:
        raise _fail(f"{failed} of {len(results)} object(s) invalid")


def _read_manifests(path: Path) -> list[tuple[str, Any]]:
    """(source file, document or the error reading it) of each manifest in a file or directory."""
    from visioninapp.validation import load_manifests, manifest_files

    documents: list[tuple[str, Any]] = []
    for file in manifest_files(path):
        try:
            documents.extend((str(file), doc) for doc in load_manifests(file.read_text()))
        except (OSError, ValueError, yaml.YAMLError) as error:
            documents.append((str(file), error))
    return documents


def _object_key(doc: Any) -> tuple[str, str]:
    """(kind, name) of a manifest, empty where missing: how --old objects are matched."""
    if not isinstance(doc, dict):
        return ("", "")
    metadata = doc.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    return (str(doc.get("kind") or ""), str(metadata.get("name") or ""))


def _old_objects(old: Path | None) -> dict[tuple[str, str], dict[str, Any]]:
    old_objects: dict[tuple[str, str], dict[str, Any]] = {}
    if old is None:
        return old_objects
    if not old.exists():
        raise _fail(f"{old}: no such file or directory")
    for _, doc in _read_manifests(old):
        if isinstance(doc, dict):
            old_objects[_object_key(doc)] = doc
    return old_objects


def _check_document(
    source: str, doc: Any, old_objects: dict[tuple[str, str], dict[str, Any]]
) -> tuple[dict[str, Any], list[FieldError]]:
    """One entry of `validate --output json` (source, object, result, errors: field and message), and
    the errors found."""
    from visioninapp.validation import FieldError, is_ours
    from visioninapp.validation import validate as validate_object

    if isinstance(doc, Exception):
        errors = [FieldError("(document)", "(document)", f"cannot parse: {doc}")]
        obj, result = None, "invalid"
    else:
        errors = validate_object(doc, old_objects.get(_object_key(doc)))
        kind, name = _object_key(doc)
        obj = f"{kind or '(no kind)'}/{name or '(unnamed)'}"
        result = "invalid" if errors else ("valid" if is_ours(doc) else "skipped")
    checked = {
        "source": source,
        "object": obj,
        "result": result,
        "errors": [{"field": e.path, "message": e.message} for e in errors],
    }
    return checked, errors


def _echo_checked(checked: dict[str, Any], errors: list[FieldError]) -> None:
    """`validate`'s text output for one object: errors to stderr, a verdict to stdout."""
    source, obj = checked["source"], checked["object"]
    if obj is None:
        typer.echo(f"{source}: {errors[0].message}", err=True)
    elif errors:
        for error in errors:
            typer.echo(f"{source}: {error}", err=True)
    elif checked["result"] == "valid":
        typer.echo(f"{source}: {obj} valid")
    else:
        typer.echo(f"{source}: {obj} skipped: a built-in Kubernetes kind, not checked")


@cluster_app.command("build")
def cluster_build() -> None:
    """Build kube-apiserver, kube-controller-manager, kube-scheduler, etcd and kwok from source with Go
    (once per machine, into ~/.cache/visioninapp; VISIONINAPP_CACHE_DIR moves it) and print their
    folder; a second run finds them and returns at once."""
    from visioninapp.local.cluster.build import BuildError, ensure_binaries

    try:
        typer.echo(ensure_binaries())
    except BuildError as error:
        raise _fail(str(error)) from None


@datasets_app.command("synth")
def datasets_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the dataset to.")],
    train: Annotated[int, typer.Option(help="Training images.", min=1)] = 64,
    val: Annotated[int, typer.Option(help="Validation images.", min=1)] = 16,
    imgsz: Annotated[int, typer.Option(help="Image size in pixels.", min=32)] = 128,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same dataset).")] = 0,
) -> None:
    """Generate a YOLO-format detection dataset of drawn shapes (no downloads)."""
    from rich.progress import Progress

    from visioninapp.local.synth import generate_dataset

    with Progress(transient=True) as progress:
        task = progress.add_task("drawing images", total=train + val)
        data_yaml = generate_dataset(
            out, train=train, val=val, imgsz=imgsz, seed=seed, on_image=lambda: progress.advance(task)
        )
    typer.echo(f"wrote {train} train and {val} val images: {data_yaml}")


# Options of the commands that start local mode
ApiPort = Annotated[int, typer.Option(help="Port of the API and console (0: any free port).")]
KubePort = Annotated[int, typer.Option(help="Port of the local Kubernetes API (0: any free port).")]
EdgeCluster = Annotated[
    bool,
    typer.Option(
        "--edge-cluster/--one-cluster",
        help="The production topology: the edge nodes in a second cluster with its own operator "
        "(role rollout), artifacts and promotions mirrored to it from the training cluster.",
    ),
]
EdgeNodes = Annotated[int, typer.Option("--edge-nodes", min=1, max=8, help="Simulated Jetsons.")]


def _require_local_mode() -> None:
    """Local mode runs every component: say which install it needs instead of a traceback."""
    import importlib.util

    modules = ("kopf", "fastapi", "ultralytics", "cryptography")
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise _fail(
            f"local mode needs every component ({', '.join(missing)} missing): pip install 'visioninapp[all]'"
        )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """`kill` or a service manager stops as cleanly as Ctrl-C; SIGINT too when a shell started us in
    the background with SIGINT ignored."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _onnx_map50(onnx: Path, images: list[Path]) -> float:
    """`demo --loop` measures both versions with the edge's evaluation (the CLI wires components)."""
    from visioninapp.edge.evaluate import evaluate
    from visioninapp.edge.inference import Detector

    return evaluate(Detector(onnx), images).map50


@app.command()
def demo(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="The demo's own directory (emptied at start).")
    ] = Path(".visioninapp/demo"),
    manifests: Annotated[
        Path | None,
        typer.Option("--manifests", help="Example manifests to apply (default: manifests/examples/local)."),
    ] = None,
    keep_running: Annotated[
        bool | None,
        typer.Option(
            "--keep-running/--no-keep-running",
            help="Leave the platform and console running until Ctrl-C (default: yes in a terminal, "
            "no under CI=true).",
        ),
    ] = None,
    port: ApiPort = 8000,
    kube_port: KubePort = 6443,
    loop: Annotated[
        bool,
        typer.Option(
            "--loop",
            help="Then close the loop: rotated shapes reach the edge, hard frames are reviewed through "
            "the API, a RetrainPolicy fine-tunes, gates and promotes v2, the canary rolls it out.",
        ),
    ] = False,
    edge_cluster: EdgeCluster = False,
    edge_nodes: EdgeNodes = 1,
) -> None:
    """The whole loop on this machine: local mode, synthetic data, CPU training, rollout, detection."""
    _require_local_mode()
    from visioninapp.local.demo import EXAMPLES, DemoError, run_demo
    from visioninapp.local.mode import LocalModeError

    if keep_running is None:
        keep_running = sys.stdin.isatty() and not _in_ci()
    _stop_on_signals()
    try:
        summary = run_demo(
            data_dir,
            manifests or EXAMPLES,
            keep_running=keep_running,
            api_port=port or None,
            kube_port=kube_port or None,
            loop=_onnx_map50 if loop else None,
            edge_cluster=edge_cluster,
            edge_nodes=edge_nodes,
        )
    except (DemoError, LocalModeError) as error:
        raise _fail(str(error)) from None
    if not summary["classesDetected"]:
        raise _fail("the trained model detected nothing on the sample images")


@local_app.command("up")
def local_up(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where local mode keeps its data (default $VISIONINAPP_DATA_DIR or ~/.visioninapp).",
        ),
    ] = None,
    port: ApiPort = 8000,
    kube_port: KubePort = 6443,
    edge_cluster: EdgeCluster = False,
    edge_nodes: EdgeNodes = 1,
) -> None:
    """Run the platform on this machine until Ctrl-C: a real Kubernetes control plane (built from
    source on first use, about 5 minutes on 2 cores) with two local nodes, the operator, the API and
    the console."""
    _require_local_mode()
    from visioninapp.local.mode import LocalModeError, LocalPlatform
    from visioninapp.settings import Settings

    directory = data_dir or Settings().data_dir
    _stop_on_signals()
    platform = LocalPlatform(
        directory,
        api_port=port or None,
        kube_port=kube_port or None,
        say=typer.echo,
        edge_cluster=edge_cluster,
        edge_nodes=edge_nodes,
    )
    try:
        platform.start()
        typer.echo("VisionInApp local mode is up:")
        for what, where in platform.describe():
            typer.echo(f"  {what:<16} {where}")
        typer.echo(
            "then: kubectl apply -f manifests/examples/local/ && kubectl get tj,ma,ed -w   (Ctrl-C stops)"
        )
        platform.wait()
    except LocalModeError as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt:
        typer.echo("stopping local mode", err=True)
    finally:
        platform.stop()


@app.command()
def logs(
    target: Annotated[
        str,
        typer.Argument(
            help="tj/NAME (trainer pod of the current attempt), ed/NAME "
            "(every edge pod, prefixed by node) or pod/NAME."
        ),
    ],
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Namespace (default: the kubeconfig's).")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    kubeconfig: Annotated[
        Path | None, typer.Option(help="Kubeconfig (default $KUBECONFIG, ~/.kube/config, else local mode's).")
    ] = None,
) -> None:
    """Print the output of a TrainingJob's trainer, an EdgeDeployment's runtimes or a pod."""
    import time

    from visioninapp.podlogs import LogError, PodLogs

    try:
        source = PodLogs.connect(kubeconfig, namespace)
        printed: dict[str, int] = {}
        while True:
            for pod, text, prefix in source.read(target):
                new = text[printed.get(pod, 0) :]
                printed[pod] = len(text)
                for line in new.splitlines():
                    typer.echo(f"{prefix}{line}")
            if not follow:
                break
            time.sleep(1)
    except LogError as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt:
        pass


@models_app.command("quantize")
def models_quantize(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            "-d",
            help="Local YOLO dataset (its data.yaml): train images calibrate, val images gate.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the INT8 model and the new CR.")],
    model: Annotated[Path | None, typer.Option("--model", "-m", help="FP32 ONNX file to quantize.")] = None,
    artifact: Annotated[
        Path | None,
        typer.Option(
            "--artifact",
            "-a",
            help="ModelArtifact YAML (e.g. `kubectl get ma NAME -o yaml`): its onnx format is "
            "fetched and verified, and a passing INT8 model becomes a new version next to it.",
        ),
    ] = None,
    max_drop: Annotated[float, typer.Option(help="Largest mAP50-95 loss accepted, in points.", min=0)] = 1.0,
    calibration_images: Annotated[int, typer.Option(help="Training images used to calibrate.", min=1)] = 64,
    method: Annotated[str, typer.Option(help="Calibration: minmax, percentile or entropy.")] = "minmax",
) -> None:
    """Make an INT8 ONNX model; keep it only if its mAP50-95 stays within --max-drop of the FP32 one."""
    from rich.console import Console

    from visioninapp.datasets import DatasetError, split_images
    from visioninapp.edge.quantize import quantize_with_gate

    if (model is None) == (artifact is None):
        raise _fail("give exactly one of --model FILE or --artifact MODELARTIFACT.yaml")
    source = _load_artifact(artifact) if artifact is not None else None
    fp32 = _fetch_onnx(source, out) if source is not None else model
    assert fp32 is not None  # exactly one of the two was given
    if not fp32.is_file():
        raise _fail(f"{fp32}: no such model file")
    try:
        calibration = split_images(data, "train")[:calibration_images]
        validation = split_images(data, "val")
    except DatasetError as error:
        raise _fail(str(error)) from None
    console = Console(stderr=True)
    with console.status("quantizing") as status:
        report = quantize_with_gate(
            fp32, out / "model-int8.onnx", calibration, validation, max_drop, method, progress=status.update
        )
    typer.echo(
        f"mAP50-95: FP32 {report.fp32.map50_95:.4f}, INT8 {report.int8.map50_95:.4f} "
        f"(drop {report.drop:.2f} points, limit {max_drop})"
    )
    typer.echo(f"mAP50:    FP32 {report.fp32.map50:.4f}, INT8 {report.int8.map50:.4f}")
    typer.echo(
        f"latency:  FP32 {report.fp32_ms:.2f} ms, INT8 {report.int8_ms:.2f} ms ({report.speedup:.2f}x)"
    )
    if not report.passed:
        report.int8_path.unlink(missing_ok=True)
        raise _fail(
            f"accuracy gate failed: mAP50-95 dropped {report.drop:.2f} points (> {max_drop}); "
            "no INT8 version was created. Try --method percentile or more --calibration-images."
        )
    typer.echo(f"wrote {report.int8_path}")
    if source is not None:
        manifest = _register_int8(source, report, out)
        typer.echo(f"wrote {manifest}: apply it with `kubectl apply -f {manifest}`")


@models_app.command("import")
def models_import(
    file: Annotated[Path, typer.Argument(help="Weights (.pt/.pth) or an ONNX model (.onnx).")],
    line: Annotated[str, typer.Option("--line", "-l", help="Model line the version belongs to.")],
    version: Annotated[
        str | None, typer.Option("--version", "-v", help="Version in the line (default: the file's name).")
    ] = None,
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="Namespace of the ModelArtifact.")] = (
        "default"
    ),
    to: Annotated[
        str | None,
        typer.Option(
            "--to", help="Store prefix for the files (default: <artifacts uri>/imports/<line>/<version>)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the ModelArtifact YAML.")] = Path(
        "."
    ),
    class_names: Annotated[
        str | None, typer.Option("--class-names", help="Comma-separated class names, when the file has none.")
    ] = None,
    imgsz: Annotated[
        int | None, typer.Option("--imgsz", help="Input size, when the file does not say.", min=32)
    ] = None,
    yolox: Annotated[
        bool,
        typer.Option(
            "--yolox", help="The .onnx is a YOLOX export made elsewhere (Megvii's has no metadata)."
        ),
    ] = False,
    decoded: Annotated[
        bool, typer.Option("--decoded/--raw-head", help="With --yolox: whether its graph decodes the boxes.")
    ] = True,
) -> None:
    """Register a model trained elsewhere as a ModelArtifact (to fine-tune from or to deploy)."""
    import tempfile

    from pydantic import ValidationError

    from visioninapp.backends.storage import StoredObject, join_uri
    from visioninapp.factory import ConfigurationError, artifact_store_for
    from visioninapp.settings import Settings
    from visioninapp.trainer.imports import (
        ModelImportError,
        build_artifact,
        export_onnx,
        mark_yolox_onnx,
        read_facts,
        upload,
    )

    if yolox and file.suffix != ".onnx":
        raise _fail("--yolox describes an .onnx file; YOLOX weights (.pth) are recognised as they are")
    names = [n.strip() for n in class_names.split(",") if n.strip()] if class_names else None
    version = version or re.sub(r"[^A-Za-z0-9._-]+", "-", file.stem).strip("-._")[:63] or "import"
    name = f"{line}-{version}".lower().replace("_", "-").replace(".", "-")
    settings = Settings()
    prefix = to or f"{settings.resolved_artifacts_uri.rstrip('/')}/imports/{line}/{version}"
    try:
        store = artifact_store_for(prefix, settings)
        facts = read_facts(file, names, imgsz)
        planned = {"onnx" if file.suffix == ".onnx" else "pt": file}
        if facts.kind == "ultralytics":
            planned["onnx"] = file.with_suffix(".onnx")
        placeholders = {
            f: StoredObject(join_uri(prefix, f"model{p.suffix}"), "0" * 64, 0) for f, p in planned.items()
        }
        build_artifact(name, namespace, line, version, facts, placeholders)  # refused before any upload
    except (ConfigurationError, ModelImportError) as error:
        raise _fail(str(error)) from None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise _fail(
            f"no valid ModelArtifact from --line {line!r} and version {version!r}: {problems}"
        ) from None
    with tempfile.TemporaryDirectory(prefix="import-") as work:
        files = {"onnx" if file.suffix == ".onnx" else "pt": file}
        try:
            if yolox:
                files["onnx"] = mark_yolox_onnx(file, facts, decoded, Path(work) / "model.onnx")
            if facts.kind == "ultralytics":
                typer.echo(f"exporting {file.name} to ONNX at {facts.imgsz} px", err=True)
                files["onnx"] = export_onnx(file, facts.imgsz)
        except ModelImportError as error:
            raise _fail(str(error)) from None
        stored = upload(store, files, prefix)
    artifact = build_artifact(name, namespace, line, version, facts, stored)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(artifact.wire(), sort_keys=False))
    kind = "yolox" if yolox else facts.kind
    typer.echo(
        f"{kind} model, {len(facts.class_names)} classes ({', '.join(facts.class_names[:5])}"
        f"{', ...' if len(facts.class_names) > 5 else ''}), {facts.imgsz} px; "
        f"{', '.join(f'{fmt} {obj.uri}' for fmt, obj in stored.items())}"
    )
    typer.echo(f"wrote {path}: apply it with `kubectl apply -f {path}`")


def _load_artifact(path: Path) -> dict[str, Any]:
    from visioninapp.validation import validate as validate_object

    try:
        obj = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise _fail(f"cannot read {path}: {error}") from None
    if not isinstance(obj, dict) or obj.get("kind") != "ModelArtifact":
        raise _fail(f"{path}: not a ModelArtifact")
    errors = validate_object(obj)
    if errors:
        raise _fail("; ".join(map(str, errors)))
    return obj


def _fetch_onnx(artifact: dict[str, Any], out: Path) -> Path:
    from visioninapp.factory import artifact_store_for
    from visioninapp.settings import Settings

    onnx = next((f for f in artifact["spec"]["formats"] if f["format"] == "onnx"), None)
    if onnx is None:
        raise _fail(f"ModelArtifact {artifact['metadata']['name']} has no onnx format to quantize")
    store = artifact_store_for(onnx["uri"], Settings())
    return store.get_file(onnx["uri"], out / "model-fp32.onnx", sha256=onnx["sha256"])


def _register_int8(artifact: dict[str, Any], report: Any, out: Path) -> Path:
    """Upload the INT8 file beside the FP32 one and write the new ModelArtifact (lineage included)."""
    from visioninapp.factory import artifact_store_for
    from visioninapp.resources import ModelArtifact
    from visioninapp.settings import Settings

    spec, name = artifact["spec"], artifact["metadata"]["name"]
    onnx_uri = next(f["uri"] for f in spec["formats"] if f["format"] == "onnx")
    int8_uri = onnx_uri.rsplit("/", 1)[0] + "/model-int8.onnx"
    stored = artifact_store_for(int8_uri, Settings()).put_file(report.int8_path, int8_uri)
    new = ModelArtifact.model_validate(
        {
            "metadata": {
                "name": f"{name[:248]}-int8",
                "namespace": artifact["metadata"].get("namespace"),
                "labels": {"visioninapp.io/quantized-from": name[:63]},
            },
            "spec": {
                "model": spec["model"],
                "version": f"{spec['version'][:58]}-int8",
                "formats": [
                    {"format": "onnx-int8", "uri": stored.uri, "sha256": stored.sha256, "size": stored.size}
                ],
                "classNames": spec["classNames"],
                "imgsz": spec.get("imgsz", 640),
                "metrics": {"mAP50": report.int8.map50, "mAP50_95": report.int8.map50_95},
                "source": {**spec.get("source", {}), "quantizedFrom": name},
            },
        }
    )
    path = out / f"{new.metadata.name}.yaml"
    path.write_text(yaml.safe_dump(new.wire(), sort_keys=False))
    return path


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

"""`visioninapp`: the command-line interface. Errors go to stderr with a non-zero exit code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from visioninapp import __version__

app = typer.Typer(
    help="VisionInApp: train, register, roll out and observe YOLO detectors on Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
)
crds_app = typer.Typer(
    help="The CustomResourceDefinitions generated from the typed models.", no_args_is_help=True
)
datasets_app = typer.Typer(help="Datasets in YOLO format.", no_args_is_help=True)
app.add_typer(crds_app, name="crds")
app.add_typer(datasets_app, name="datasets")

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
    """Write crds/trainingjobs.yaml, crds/modelartifacts.yaml and crds/edgedeployments.yaml."""
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


def _documents(path: Path) -> list[tuple[str, Any]]:
    files = (
        sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
        if path.is_dir()
        else [path]
    )
    documents: list[tuple[str, Any]] = []
    for file in files:
        try:
            loaded = [d for d in yaml.safe_load_all(file.read_text()) if d is not None]
        except (OSError, yaml.YAMLError) as error:
            documents.append((str(file), error))
            continue
        for doc in loaded:
            if isinstance(doc, dict) and doc.get("kind", "").endswith("List") and "items" in doc:
                documents.extend((str(file), item) for item in doc["items"])
            else:
                documents.append((str(file), doc))
    return documents


@app.command()
def validate(
    files: Annotated[
        list[Path], typer.Option("--filename", "-f", help="Manifest file or directory (repeatable).")
    ],
    old: Annotated[
        Path | None,
        typer.Option("--old", help="The object before the change, to check immutability (transition) rules."),
    ] = None,
) -> None:
    """Check custom resources offline: schema, unknown fields and CEL rules, as a cluster would."""
    from visioninapp.validation import validate as validate_object

    old_objects: dict[tuple[str, str], dict[str, Any]] = {}
    if old is not None:
        for _, doc in _documents(old):
            if isinstance(doc, dict):
                old_objects[(doc.get("kind", ""), (doc.get("metadata") or {}).get("name", ""))] = doc
    failed = checked = 0
    for path in files:
        if not path.exists():
            raise _fail(f"{path}: no such file or directory")
        for source, doc in _documents(path):
            checked += 1
            if isinstance(doc, Exception):
                failed += 1
                typer.echo(f"{source}: cannot parse: {doc}", err=True)
                continue
            key = (
                (doc.get("kind", ""), (doc.get("metadata") or {}).get("name", ""))
                if isinstance(doc, dict)
                else ("", "")
            )
            errors = validate_object(doc, old_objects.get(key))
            if errors:
                failed += 1
                for error in errors:
                    typer.echo(f"{source}: {error}", err=True)
            else:
                kind, name = key
                typer.echo(f"{source}: {kind}/{name} valid")
    if checked == 0:
        raise _fail("no manifests found")
    if failed:
        raise _fail(f"{failed} of {checked} object(s) invalid")


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

    from visioninapp.synth import generate_dataset

    with Progress(transient=True) as progress:
        task = progress.add_task("drawing images", total=train + val)
        data_yaml = generate_dataset(
            out, train=train, val=val, imgsz=imgsz, seed=seed, on_image=lambda: progress.advance(task)
        )
    typer.echo(f"wrote {train} train and {val} val images: {data_yaml}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

"""Datasets: immutable versions in the artifact store, recorded in SQL and indexed for search.

Every way to add a version (a zip, loose files, accepted feedback frames) ends in `publish_version`,
which validates and normalises the files (`visioninapp.api.ingest`) before anything is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from visioninapp.api.container import ApiContainer
from visioninapp.api.db import Dataset, DatasetVersion
from visioninapp.api.ingest import (
    DatasetError,
    Ingested,
    TooLarge,
    discard_version,
    ingest_directory,
    manifest_of,
    new_version_uri,
    sweep_versions,
    upload_version,
)
from visioninapp.api.paging import fetch_page, page_of
from visioninapp.api.schemas import DatasetVersionOut
from visioninapp.api.workspaces import ingest_workspace
from visioninapp.backends.storage import join_uri
from visioninapp.web.errors import ApiError, ErrorDetail

__all__ = [
    "NewVersion",
    "create_dataset",
    "dataset_out",
    "find_dataset",
    "get_dataset",
    "get_version",
    "list_datasets",
    "publish_version",
    "rejected",
    "version_out",
    "workspace",
]


def version_out(version: DatasetVersion) -> dict[str, Any]:
    return DatasetVersionOut(
        version=version.version,
        uri=version.uri,
        data_yaml=version.data_yaml,
        class_names=version.class_names,
        class_counts=version.class_counts,
        images=version.images,
        preprocessing=version.preprocessing,
        sha256=version.sha256,
        parent_version=version.parent_version,
        note=version.note,
        created_by=version.created_by,
        created_at=version.created_at,
        provenance=version.provenance,
    ).model_dump(mode="json", by_alias=True)


def dataset_out(dataset: Dataset) -> dict[str, Any]:
    return {
        "name": dataset.name,
        "description": dataset.description,
        "createdAt": dataset.created_at.isoformat(),
        "versions": [version_out(v) for v in dataset.versions],
    }


def find_dataset(session: Session, project: str, name: str) -> Dataset:
    dataset = session.scalars(
        select(Dataset).where(Dataset.project_name == project, Dataset.name == name)
    ).first()
    if dataset is None:
        raise ApiError(404, f"dataset {name!r} not found in {project!r}")
    return dataset


def list_datasets(container: ApiContainer, project: str, limit: int, offset: int) -> dict[str, Any]:
    query = select(Dataset).where(Dataset.project_name == project).order_by(Dataset.name)
    with container.db.session() as session:
        rows, total = fetch_page(session, query, limit, offset)
        return page_of([dataset_out(d) for d in rows], total, limit, offset)


def get_dataset(container: ApiContainer, project: str, name: str) -> dict[str, Any]:
    with container.db.session() as session:
        return dataset_out(find_dataset(session, project, name))


def get_version(container: ApiContainer, project: str, name: str, number: int) -> dict[str, Any]:
    with container.db.session() as session:
        dataset = find_dataset(session, project, name)
        version = session.scalars(
            select(DatasetVersion).where(
                DatasetVersion.dataset_id == dataset.id, DatasetVersion.version == number
            )
        ).first()
        if version is None:
            raise ApiError(404, f"{name} has no version {number}")
        return version_out(version)


def create_dataset(
    container: ApiContainer, project: str, name: str, description: str, creator: str
) -> dict[str, Any]:
    with container.db.session() as session:
        exists = session.scalars(
            select(Dataset.id).where(Dataset.project_name == project, Dataset.name == name)
        ).first()
        if exists is not None:
            raise ApiError(409, f"dataset {name!r} already exists in {project!r}")
        dataset = Dataset(project_name=project, name=name, description=description, created_by=creator)
        session.add(dataset)
        session.flush()
        out = dataset_out(dataset)
    container.search.index(
        "datasets",
        f"{project}/{name}",
        {"project": project, "name": name, "title": name, "description": description},
    )
    return out


def rejected(error: DatasetError) -> ApiError:
    """A dataset the ingest refused: 413 for sizes, else 422, with each problem as a detail."""
    problems = [ErrorDetail(field=None, message=part.strip()[:500]) for part in str(error).split(";")[:50]]
    return ApiError(413 if isinstance(error, TooLarge) else 422, f"dataset rejected: {error}", problems)


def workspace(container: ApiContainer) -> AbstractContextManager[Path]:
    """A private work folder for one upload (removed afterwards, or after a crash by the next one)."""
    return ingest_workspace(container.settings.data_dir / "ingest")


@dataclass(frozen=True)
class NewVersion:
    """Who adds a version to which dataset, and why; `parent` None: the version before it."""

    project: str
    dataset: str
    creator: str
    note: str
    parent: int | None = None


def publish_version(
    container: ApiContainer,
    new: NewVersion,
    source: Path,
    work: Path,
    finish: Callable[[Path], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Validate and normalise `source`, upload it as the next version (manifest last), record it.

    `finish` sees the normalised version's folder before it is uploaded (to add a file such as the
    feedback frames' provenance.json); what it returns is recorded as the version's provenance."""
    try:
        ingested = ingest_directory(source, work / "normalised")
    except DatasetError as error:
        raise rejected(error) from None
    provenance = finish(ingested.root) if finish is not None else None
    files, digest = manifest_of(ingested.root)
    with container.db.session() as session:
        dataset = find_dataset(session, new.project, new.dataset)
        latest = dataset.versions[-1] if dataset.versions else None
        if latest is not None and latest.sha256 == digest:
            raise ApiError(409, f"identical to version {latest.version} of {new.dataset}; nothing to add")
        number = (latest.version if latest else 0) + 1
        recorded = {v.uri for v in dataset.versions}
    dataset_uri = join_uri(container.settings.resolved_artifacts_uri, "datasets", new.project, new.dataset)
    store = container.store_for(dataset_uri)
    sweep_versions(store, dataset_uri, recorded)  # leftovers of uploads that died midway
    uri = new_version_uri(dataset_uri, number)
    upload_version(ingested.root, files, digest, store, uri)
    try:
        out = _record_version(container, new, number, uri, ingested, digest, provenance)
    except BaseException as error:  # the row is the version: without it, the files must go
        discard_version(store, uri)
        if isinstance(error, IntegrityError):
            raise ApiError(
                409,
                f"another upload created version {number} of {new.dataset} at the same time; upload again",
            ) from None
        raise
    container.search.index(
        "datasets",
        f"{new.project}/{new.dataset}/v{number}",
        {
            "project": new.project,
            "name": new.dataset,
            "title": f"{new.dataset} v{number}",
            "classes": ingested.class_names,
            "note": new.note,
            "uri": uri,
        },
    )
    return out


def _record_version(
    container: ApiContainer,
    new: NewVersion,
    number: int,
    uri: str,
    ingested: Ingested,
    digest: str,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    with container.db.session() as session:
        dataset = find_dataset(session, new.project, new.dataset)
        version = DatasetVersion(
            dataset_id=dataset.id,
            version=number,
            uri=uri,
            class_names=ingested.class_names,
            class_counts=ingested.class_counts,
            images=ingested.images,
            preprocessing=ingested.preprocessing,
            sha256=digest,
            parent_version=new.parent if new.parent is not None else (number - 1 or None),
            note=new.note,
            created_by=new.creator,
            provenance=provenance,
        )
        session.add(version)
        session.flush()
        return version_out(version)

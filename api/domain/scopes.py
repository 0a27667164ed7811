"""Where a project's runs may read and write in the artifact store.

Layout of the platform's store (VISIONINAPP_ARTIFACTS_URI): `datasets/<project>/<dataset>/v<N>`
(uploaded through the API), `<project>/...` (run outputs: the operator writes a run to
`<output base>/<namespace>/<run>/`), `feedback/` and `logs/` (platform-wide). A project member may
train on the project's datasets and write under the project's own prefix only; platform admins
may name any URI (shared datasets such as local mode's `datasets/shapes/v1`, other buckets).
"""

from __future__ import annotations

import re

from visioninapp.api.container import ApiContainer
from visioninapp.resources.trainingjob import DatasetRef
from visioninapp.web.errors import ApiError, ErrorDetail

__all__ = ["below", "check_dataset_ref", "check_output_uri", "plain_relative_path", "store_base"]

_SAFE_PATH = re.compile(r"[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*/?")


def store_base(container: ApiContainer) -> str:
    return container.settings.resolved_artifacts_uri.rstrip("/")


def plain_relative_path(path: str) -> bool:
    """A path inside a folder: relative, plain segments, never `..`."""
    return bool(_SAFE_PATH.fullmatch(path)) and not any(part in (".", "..") for part in path.split("/"))


def below(uri: str, prefix: str, *, inclusive: bool = False) -> bool:
    """Whether `uri` lies under the folder `prefix` (segment-wise: `p` never matches `p2`), with
    plain segments only: no `.`, `..`, empty segments, percent escapes or backslashes."""
    prefix = prefix.rstrip("/")
    if inclusive and uri.rstrip("/") == prefix:
        return True
    return uri.startswith(prefix + "/") and plain_relative_path(uri[len(prefix) + 1 :])


def check_output_uri(container: ApiContainer, project: str, uri: str | None, field: str) -> None:
    """An output URI a project member may set: empty (the platform's default, in the project's
    prefix) or under `<artifacts>/<project>/`."""
    allowed = f"{store_base(container)}/{project}"
    if uri is None or below(uri, allowed, inclusive=True):
        return
    message = (
        f"{field}: {uri!r} is outside project {project!r}; leave it empty (the default, "
        f"{allowed}/...) or name a folder under {allowed}/; only platform admins may write elsewhere"
    )
    raise ApiError(403, message, [ErrorDetail(field=field, message=message)])


def check_dataset_ref(container: ApiContainer, ref: DatasetRef, project: str, field: str) -> None:
    """A dataset of `project` (see `check_references`), else 403 (422 for a data YAML path outside it)."""
    uri = ref.uri
    relative = f"datasets/{project}"
    absolute = f"{store_base(container)}/{relative}"
    if not (below(uri, relative) or below(uri, absolute)):
        message = (
            f"{field}.uri: {uri!r} is not a dataset of project {project!r}; use one of its "
            f"dataset versions, {relative}/<dataset>/v<N> (or {absolute}/<dataset>/v<N>), as "
            f"GET /api/v1/projects/{project}/datasets lists them; only platform admins may name "
            "other URIs"
        )
        raise ApiError(403, message, [ErrorDetail(field=f"{field}.uri", message=message)])
    if not plain_relative_path(ref.data_yaml):
        message = (
            f"{field}.dataYaml: {ref.data_yaml!r} must be a path inside the dataset "
            "folder (relative, no `..`), e.g. `data.yaml`"
        )
        raise ApiError(422, message, [ErrorDetail(field=f"{field}.dataYaml", message=message)])

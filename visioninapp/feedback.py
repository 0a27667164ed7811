"""Where edge feedback frames live in the artifact store, in one place for the edge and the API.

A frame is `<feedback uri>/<namespace>/<deployment>/<node>/<number>.{jpg,json}`: the namespace (the
project) comes first, so that two projects with a deployment of the same name never share a
prefix, and the API's import of a project lists that project's prefix only. A node's own prefix
is the only one its credentials may write (see operator/edge_identity.py).
"""

from __future__ import annotations

import re

from visioninapp.backends.storage import join_uri

__all__ = ["FeedbackFrameRef", "feedback_frame", "feedback_prefix"]

# Kubernetes names: a namespace and an EdgeDeployment are DNS labels / subdomains, a node a subdomain.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_STEM = re.compile(r"^[0-9a-f]{1,32}-[0-9]{1,20}$")  # <spool id>-<number>


def _checked(kind: str, value: str) -> str:
    if not _NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{kind} {value!r} is not a Kubernetes name: it cannot be part of a feedback prefix")
    return value


def feedback_prefix(
    base_uri: str, namespace: str, deployment: str | None = None, node: str | None = None
) -> str:
    """`<base>/<namespace>/` (a project's frames), `…/<deployment>/` or `…/<deployment>/<node>/`.

    Always ends with `/`, so that a listing of project `a` never matches project `ab`.
    """
    parts = [_checked("namespace", namespace)]
    if deployment is not None:
        parts.append(_checked("deployment", deployment))
    if node is not None:
        if deployment is None:
            raise ValueError("a node's feedback prefix needs its deployment")
        parts.append(_checked("node", node))
    return join_uri(base_uri, *parts) + "/"


class FeedbackFrameRef(tuple[str, str, str]):
    """(deployment, node, stem) of a frame's JSON record."""

    __slots__ = ()

    @property
    def deployment(self) -> str:
        return self[0]

    @property
    def node(self) -> str:
        return self[1]

    @property
    def stem(self) -> str:
        return self[2]


def feedback_frame(base_uri: str, namespace: str, uri: str) -> FeedbackFrameRef | None:
    """The deployment, node and number of a frame record `uri` listed under the project's prefix, or
    None for anything else (another project's object, a nested or foreign key, a non-record)."""
    prefix = feedback_prefix(base_uri, namespace)
    if not uri.startswith(prefix) or not uri.endswith(".json"):
        return None
    parts = uri[len(prefix) :].split("/")
    if len(parts) != 3:
        return None
    deployment, node, name = parts
    stem = name[: -len(".json")]
    if not (_NAME.fullmatch(deployment) and _NAME.fullmatch(node) and _STEM.fullmatch(stem)):
        return None
    return FeedbackFrameRef((deployment, node, stem))

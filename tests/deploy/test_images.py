"""The Dockerfiles, read as text (no Docker daemon in CI): multi-stage, pinned bases, non-root, and
every path they copy exists. `make images` builds them where Docker runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
ENTRYPOINTS = {
    "operator": "visioninapp-operator",
    "api": "visioninapp-api",
    "trainer": "visioninapp-trainer",
    "edge": "visioninapp-edge",
    "edge-l4t": "visioninapp-edge",
}


def test_every_component_has_an_image() -> None:
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES} == set(ENTRYPOINTS)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_pinned_and_non_root(path: Path) -> None:
    text = path.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    bases = [args.get(b.strip("${}"), b) for b in re.findall(r"^FROM (\S+)", text, re.M)]
    assert len(bases) >= 2, "multi-stage: build tools stay out of the final image"
    for base in bases:
        if base in re.findall(r"FROM \S+ AS (\w+)", text):  # an earlier stage
            continue
        name, _, tag = base.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d", tag), f"unpinned base image {base}"
    final = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER 10001:10001$", final, re.M), "the final stage runs as a non-root user"
    entrypoint = ENTRYPOINTS[path.name.removesuffix(".Dockerfile")]
    assert f'ENTRYPOINT ["{entrypoint}"]' in final
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in source.split():
            assert (REPO / item).exists() or (REPO / "frontend" / item).exists(), f"COPY {item}: no such path"


def test_chart_values_use_the_images_the_dockerfiles_build() -> None:
    import yaml

    values = yaml.safe_load((REPO / "charts" / "visioninapp" / "values.yaml").read_text())
    assert values["image"]["registry"] == "ghcr.io/visioninapp"
    makefile = (REPO / "Makefile").read_text()
    assert "IMAGE_REGISTRY ?= ghcr.io/visioninapp" in makefile
    assert "for image in operator api trainer edge" in makefile

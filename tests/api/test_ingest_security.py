"""Dataset upload attacks (security issue, items 1, 3, 6, 7, 8, 10, 11): each is refused with a 4xx in
the API's error model, and nothing is left behind: no object under the project's datasets prefix
(other than published versions), no work folder under `<data_dir>/ingest`."""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import ApiEnv
from visioninapp.api import ingest
from visioninapp.datasets import fetch_dataset
from visioninapp.local.synth import CLASS_NAMES, generate_dataset

pytestmark = pytest.mark.services

DATA_YAML = "train: images/train\nval: images/val\nnames: [circle, square, triangle, cross]\n"


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    root = tmp_path / "synth"
    generate_dataset(root, train=4, val=2, imgsz=64, seed=5)
    return root


def entries_of(root: Path, prefix: str = "dataset/") -> dict[str, bytes]:
    return {
        prefix + p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def zipped(entries: dict[str, bytes], infos: dict[str, zipfile.ZipInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in entries.items():
            bundle.writestr((infos or {}).get(name) or name, data)
    return buffer.getvalue()


def patch_entries(data: bytes, *, method: int | None = None, flags: int | None = None) -> bytes:
    """Rewrite every entry's compression method and/or flag bits, in local and central headers."""
    raw = bytearray(data)
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = 0
        while (at := raw.find(signature, start)) >= 0:
            if flags is not None:
                struct.pack_into(
                    "<H", raw, at + flag_at, struct.unpack_from("<H", raw, at + flag_at)[0] | flags
                )
            if method is not None:
                struct.pack_into("<H", raw, at + method_at, method)
            start = at + 4
    return bytes(raw)


class Uploads:
    def __init__(self, api: ApiEnv) -> None:
        self.api = api
        self.project = api.new_project({"alice": "member"})
        self.headers = api.as_user("alice")
        created = api.client.post(
            f"/api/v1/projects/{self.project}/datasets", json={"name": "shapes"}, headers=self.headers
        )
        assert created.status_code == 201, created.text

    def zip(self, data: bytes) -> Any:
        return self.api.client.post(
            f"/api/v1/projects/{self.project}/datasets/shapes/versions",
            files={"archive": ("shapes.zip", data, "application/zip")},
            headers=self.headers,
        )

    def files(self, images: list[tuple[str, bytes]], labels: list[tuple[str, bytes]], names: str) -> Any:
        files = [("images", (n, b, "image/jpeg")) for n, b in images]
        files += [("labels", (n, b, "text/plain")) for n, b in labels]
        return self.api.client.post(
            f"/api/v1/projects/{self.project}/datasets/shapes/versions/files",
            files=files,
            data={"classNames": names, "valFraction": "0.5"},
            headers=self.headers,
        )

    @property
    def prefix(self) -> str:
        return f"{self.api.settings.resolved_artifacts_uri}/datasets/{self.project}/"

    def stored(self) -> list[str]:
        """Every object under the project's datasets prefix."""
        return [o.uri for o in self.api.container.store_for(self.prefix).list(self.prefix)]

    def versions(self) -> list[dict[str, Any]]:
        return self.api.client.get(
            f"/api/v1/projects/{self.project}/datasets/shapes", headers=self.headers
        ).json()["versions"]

    def assert_refused(self, response: Any, status: int, words: str) -> None:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["status"] == status and words in error["message"], error
        self.assert_clean()

    def assert_clean(self, published: int = 0) -> None:
        stored = self.stored()
        versions = self.versions()
        assert len(versions) == published
        for uri in stored:  # only the published versions' files, nothing else
            assert any(uri.startswith(v["uri"] + "/") for v in versions), uri
        work = self.api.settings.data_dir / "ingest"
        assert not work.exists() or list(work.iterdir()) == [], list(work.iterdir())


@pytest.fixture
def uploads(api: ApiEnv) -> Uploads:
    return Uploads(api)


# Item 1: paths in data.yaml leave the dataset -------------------------------------------------------


def test_data_yaml_cannot_point_at_another_projects_files(
    api: ApiEnv, uploads: Uploads, dataset_dir: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"  # another project's dataset on the API's disk (file:// store)
    generate_dataset(victim, train=3, val=2, imgsz=64, seed=7)
    (victim / "images" / "train" / "secret.jpg").write_bytes(
        (victim / "images/train/train_00000.jpg").read_bytes()
    )
    own = entries_of(dataset_dir)
    attacks = {
        "absolute path": f"train: {victim}/images/train\nval: images/val\nnames: [a, b, c, d]\n",
        "../ path": f"train: {'../' * 12}{victim}/images/train\nval: images/val\nnames: [a, b, c, d]\n",
        "list.txt of outside paths": "train: list.txt\nval: images/val\nnames: [a, b, c, d]\n",
        "list.txt with ../": "train: up.txt\nval: images/val\nnames: [a, b, c, d]\n",
    }
    extra = {
        "dataset/list.txt": f"{victim}/images/train/secret.jpg\n".encode(),
        "dataset/up.txt": b"../../../../../../../../../../etc/hostname\n",
    }
    for what, data_yaml in attacks.items():
        response = uploads.zip(zipped({**own, **extra, "dataset/data.yaml": data_yaml.encode()}))
        uploads.assert_refused(response, 422, "leaves the dataset folder")
        assert "dataset rejected" in response.json()["error"]["message"], what


# Item 3: a pixel bomb inside the zip --------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (a few hundred bytes; decoding it would take GBs)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_huge_image_in_a_zip_is_refused_before_decoding(uploads: Uploads, dataset_dir: Path) -> None:
    entries = entries_of(dataset_dir)
    entries["dataset/images/train/huge.png"] = png_header_only(20000, 20000)
    entries["dataset/labels/train/huge.txt"] = b"0 0.5 0.5 0.1 0.1\n"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    response = uploads.zip(zipped(entries))
    uploads.assert_refused(response, 413, "image too large")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, f"peak RSS grew by {grown_mib:.0f} MiB"


# Item 7: zip bombs ---------------------------------------------------------------------------------


def bomb(entries: dict[str, bytes], name: str, size: int) -> bytes:
    buffer = io.BytesIO()
    zeros = bytes(1024 * 1024)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as bundle:
        for entry, data in entries.items():
            bundle.writestr(entry, data)
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with bundle.open(info, "w", force_zip64=True) as out:
            for _ in range(size // len(zeros)):
                out.write(zeros)
    return buffer.getvalue()


def test_zip_bomb_is_refused_by_bytes_written(
    api: ApiEnv, uploads: Uploads, dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.settings, "api_max_upload_mb", 2)  # the cap: 4 x 2 MiB unpacked
    data = bomb(entries_of(dataset_dir), "dataset/images/train/bomb.png", 1024**3)
    assert len(data) < 2 * 1024 * 1024  # the upload itself is within the limit
    peak: dict[str, int] = {}
    real = ingest.extract_archive

    def measured(archive: Path, target: Path, max_bytes: int) -> Path:
        try:
            return real(archive, target, max_bytes)
        finally:
            peak["disk"] = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
            peak["max"] = max_bytes

    monkeypatch.setattr("visioninapp.api.domain.uploads.extract_archive", measured)
    uploads.assert_refused(uploads.zip(data), 413, "unpacks to")
    assert peak["max"] == 4 * 2 * 1024 * 1024 and peak["disk"] <= peak["max"], peak

    # Declared sizes that lie (central directory says 1 KiB; the stream holds 1 GiB): still bounded.
    monkeypatch.setattr(api.settings, "api_max_upload_mb", 8)
    lying = bytearray(bomb(entries_of(dataset_dir), "dataset/images/train/bomb.png", 256 * 1024**2))
    at = lying.rfind(b"PK\x01\x02")
    struct.pack_into("<I", lying, at + 24, 1024)  # uncompressed size in the central directory
    extra_at = at + 46 + struct.unpack_from("<H", lying, at + 28)[0]
    if struct.unpack_from("<H", lying, extra_at)[0] == 1:  # zip64 extra field: sizes there too
        struct.pack_into("<Q", lying, extra_at + 4, 1024)
    response = uploads.zip(bytes(lying))
    assert response.status_code in (413, 422), response.text
    assert peak["disk"] <= peak["max"], peak
    uploads.assert_clean()

    # With the default limit (512 MB, so 2 GiB unpacked at most), the archive's own size bounds it:
    # the 2 MB zip of 1 GiB+ stops at 8x its size + 64 MiB.
    monkeypatch.setattr(api.settings, "api_max_upload_mb", 512)
    uploads.assert_refused(uploads.zip(data), 413, "unpacks to")
    assert peak["max"] == 8 * len(data) + 64 * 1024**2 and peak["disk"] <= peak["max"], peak


# Item 6: a crashed upload never becomes part of a version -------------------------------------------

CRASH = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from visioninapp.api import ingest, workspaces
    from visioninapp.factory import artifact_store_for
    from visioninapp.settings import Settings

    settings = Settings.model_validate_json(sys.argv[1])
    dataset_uri, archive, kill_at = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    store = artifact_store_for(dataset_uri, settings)
    real, count = store.put_file, [0]

    def put_file(path, uri):
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # the API process dies mid-upload
        return real(path, uri)

    store.put_file = put_file
    with workspaces.ingest_workspace(settings.data_dir / "ingest") as work:
        root = ingest.extract_archive(archive, work / "source", 1024**3)
        done = ingest.ingest_directory(root, work / "normalised")
        files, digest = ingest.manifest_of(done.root)
        ingest.upload_version(done.root, files, digest, store, ingest.new_version_uri(dataset_uri, 1))
    """
)


def test_upload_killed_midway_leaves_nothing_in_the_next_version(
    api: ApiEnv, uploads: Uploads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "big"
    generate_dataset(big, train=30, val=10, imgsz=64, seed=11)
    archive = tmp_path / "big.zip"
    archive.write_bytes(zipped(entries_of(big)))
    dataset_uri = uploads.prefix + "shapes"
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH, api.settings.model_dump_json(), dataset_uri, str(archive), "25"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    leftovers = uploads.stored()
    assert len(leftovers) == 24 and not any(u.endswith("manifest.json") for u in leftovers)
    work = api.settings.data_dir / "ingest"
    assert len([p for p in work.iterdir() if p.is_dir()]) == 1  # the dead upload's work folder
    assert uploads.versions() == []  # the half upload is invisible

    small = tmp_path / "small"
    generate_dataset(small, train=4, val=2, imgsz=64, seed=12)
    monkeypatch.setattr(ingest, "STALE_AFTER_S", 0.0)  # the crash was "long ago"
    response = uploads.zip(zipped(entries_of(small)))
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["version"] == 1 and version["images"] == {"train": 4, "val": 2}
    store = api.container.store_for(version["uri"])
    manifest = json.loads(store.get_bytes(version["uri"] + "/manifest.json"))
    listed = sorted(o.uri[len(version["uri"]) + 1 :] for o in store.list(version["uri"]))
    assert listed == sorted([f["path"] for f in manifest["files"]] + ["manifest.json"])
    assert len(manifest["files"]) == 6 * 2 + 1
    uploads.assert_clean(published=1)  # the crash's objects and work folder are gone

    # Even with stray files under the published prefix, the trainer gets exactly the manifest's files.
    store.put_bytes(b"stray", version["uri"] + "/images/train/stray.jpg")
    fetched = fetch_dataset(store, version["uri"], "data.yaml", tmp_path / "trainer")
    got = sorted(p.relative_to(fetched).as_posix() for p in fetched.rglob("*") if p.is_file())
    assert got == sorted(f["path"] for f in manifest["files"])


def test_failed_upload_removes_its_objects(
    uploads: Uploads, dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visioninapp.backends.s3 import S3ArtifactStore

    real, count = S3ArtifactStore.put_file, [0]

    def failing(self: Any, path: Path, uri: str) -> Any:
        count[0] += 1
        if count[0] == 5:
            raise ConnectionError("store went away")
        return real(self, path, uri)

    monkeypatch.setattr(S3ArtifactStore, "put_file", failing)
    with pytest.raises(ConnectionError):
        uploads.zip(zipped(entries_of(dataset_dir)))
    uploads.assert_clean()


# Item 8: YAML alias bomb -----------------------------------------------------------------------------


def test_yaml_alias_bomb_is_refused(uploads: Uploads, dataset_dir: Path) -> None:
    levels = "".join(f"l{i + 1}: &l{i + 1} [*l{i}, *l{i}, *l{i}, *l{i}, *l{i}, *l{i}]\n" for i in range(8))
    data_yaml = "l0: &l0 xxxxxxxxxx\n" + levels + "train: images/train\nval: images/val\nnames: [*l8]\n"
    assert len(data_yaml) < 500
    entries = {**entries_of(dataset_dir), "dataset/data.yaml": data_yaml.encode()}
    uploads.assert_refused(uploads.zip(zipped(entries)), 422, "YAML aliases")


# Item 10: inputs that used to give 500 ----------------------------------------------------------------


def test_feedback_ids_beyond_int64_are_422(api: ApiEnv, uploads: Uploads) -> None:
    huge = 2**64
    image = api.client.get(
        f"/api/v1/projects/{uploads.project}/feedback/{huge}/image", headers=uploads.headers
    )
    assert image.status_code == 422 and image.json()["error"]["code"] == "invalid", image.text
    accept = api.client.post(
        f"/api/v1/projects/{uploads.project}/feedback/accept",
        json={"ids": [1, huge], "dataset": "shapes"},
        headers=uploads.headers,
    )
    assert accept.status_code == 422 and "feedback ids" in accept.json()["error"]["message"], accept.text


def test_broken_archives_are_422(uploads: Uploads, dataset_dir: Path) -> None:
    entries = entries_of(dataset_dir)
    plain = zipped(entries)
    link = zipfile.ZipInfo("dataset/images/extra")
    link.external_attr = (0o120777 << 16) | 0x20  # a symlinked folder (zip -y)
    cases = [
        (patch_entries(plain, flags=0x1), "encrypted"),
        (patch_entries(plain, method=99), "unsupported compression"),
        (
            zipped({**entries, "dataset/images/extra": b"/etc"}, {"dataset/images/extra": link}),
            "symbolic link",
        ),
        (
            zipped({**entries, "dataset/images/train/a.jpg": b"x", "dataset/images/train/a.jpg/b.jpg": b"y"}),
            "both a file and a folder",
        ),
        (
            zipped({**entries, "dataset/labels/train/train_00000.txt": b"0 0.5 0.5 0.1 0.1 \xff\xfe\n"}),
            "not UTF-8",
        ),
        (
            zipped(
                {
                    **entries,
                    "dataset/data.yaml": b"train: images/train\nval: images/val\nnames: [\xe9t\xe9]\n",
                }
            ),
            "not UTF-8",
        ),
    ]
    for data, words in cases:
        uploads.assert_refused(uploads.zip(data), 422, words)


def raw_multipart(parts: list[tuple[str, bytes, bytes]]) -> tuple[bytes, str]:
    """A multipart body written by hand: clients percent-encode a NUL in a file name, attackers don't."""
    boundary = b"b0undaryb0undary"
    body = b""
    for field, filename, data in parts:
        body += b"--" + boundary + b"\r\n"
        body += b'Content-Disposition: form-data; name="' + field.encode() + b'"'
        body += (b'; filename="' + filename + b'"' if filename else b"") + b"\r\n\r\n" + data + b"\r\n"
    return body + b"--" + boundary + b"--\r\n", "multipart/form-data; boundary=" + boundary.decode()


def test_control_characters_in_uploaded_file_names_are_422(
    api: ApiEnv, uploads: Uploads, dataset_dir: Path
) -> None:
    image = (dataset_dir / "images" / "train" / "train_00000.jpg").read_bytes()
    other = (dataset_dir / "images" / "train" / "train_00001.jpg").read_bytes()
    for name in (b"a\x00b.jpg", b"evil\x1b.jpg"):
        body, content_type = raw_multipart(
            [
                ("images", name, image),
                ("images", b"b.jpg", other),
                ("labels", b"b.txt", b""),
                ("classNames", b"", ",".join(CLASS_NAMES).encode()),
            ]
        )
        response = api.client.post(
            f"/api/v1/projects/{uploads.project}/datasets/shapes/versions/files",
            content=body,
            headers={**uploads.headers, "Content-Type": content_type},
        )
        uploads.assert_refused(response, 422, "control characters")


# Item 11: dataset hygiene --------------------------------------------------------------------------------


def test_duplicates_cannot_empty_a_split(uploads: Uploads, dataset_dir: Path) -> None:
    entries = entries_of(dataset_dir)
    for name in list(entries):
        if name.startswith("dataset/images/val/"):
            entries[name] = entries["dataset/images/train/train_00000.jpg"]
    uploads.assert_refused(uploads.zip(zipped(entries)), 422, "val split is empty")


def test_control_characters_in_class_names_are_422(uploads: Uploads, dataset_dir: Path) -> None:
    image = (dataset_dir / "images" / "train" / "train_00000.jpg").read_bytes()
    other = (dataset_dir / "images" / "train" / "train_00001.jpg").read_bytes()
    response = uploads.files([("a.jpg", image), ("b.jpg", other)], [("a.txt", b"")], "ok,bad\x1b[31mred")
    uploads.assert_refused(response, 422, "control characters")
    entries = {
        **entries_of(dataset_dir),
        "dataset/data.yaml": b'train: images/train\nval: images/val\nnames: ["a\\u202eb"]\n',
    }
    uploads.assert_refused(uploads.zip(zipped(entries)), 422, "control characters")


def test_only_dataset_entries_are_unpacked(tmp_path: Path, dataset_dir: Path) -> None:
    entries = {**entries_of(dataset_dir), "dataset/tool.exe": b"MZ" * 1000, "dataset/.git/config": b"x"}
    archive = tmp_path / "a.zip"
    archive.write_bytes(zipped(entries))
    root = ingest.extract_archive(archive, tmp_path / "out", 10 * 1024**2)
    got = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()
    )
    assert got == sorted(n for n in entries if n.endswith((".jpg", ".txt", "data.yaml")))
    assert root.resolve() == (tmp_path / "out" / "dataset").resolve()

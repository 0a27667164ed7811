"""Decompression bombs and oversized bodies against the real edge and API server processes.

Each bomb is a genuine file of its format (PNG, JPEG, WebP, TIFF, BMP) that declares 16000x16000
pixels in a payload of 52 bytes to 3 MB: decoded, any of them takes ~770 MiB (BGR) and more on the
way (1.5 GB peak measured for each when decoded first). The same generators at 64x64 make files
that decode to the expected pixels, so they are real images, not headers with garbage behind.
Refused, they must cost the server nothing: 413 in the one error body, peak RSS of the server process
under 300 MiB above idle (Linux `VmHWM`, reset before each request), nothing written to disk.

The servers run as processes of their own (`python -m visioninapp.edge.server`; the API's
`create_app` with its real preview route, with fakes only for the cluster and the login) so that
their memory is measured alone. This file is also the API's entry point: `python <this file> api ...`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_edge_units import _model as tiny_model  # zeros everywhere: loads, detects nothing

MIB = 2**20
BOMB_SIDE = 16000  # 256 M pixels: over our limit (8192x8192) and over Pillow's own (2 x 89 M)
RSS_BUDGET_MIB = 300
CHUNKED_TOTAL = 300 * MIB
CHUNK = MIB

# --- bombs: genuine files of each format, declaring `w` x `h` with a tiny payload -------------


def png_bomb(w: int, h: int) -> bytes:
    """8-bit grey, every row filter 0 and zeros: deflate squeezes 256 MB of pixels into ~250 KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate = zlib.compressobj(9)
    row = bytes(w + 1)
    idat = b"".join(deflate.compress(row) for _ in range(h)) + deflate.flush()
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# The standard luminance Huffman tables (JPEG, ITU T.81 annex K.3).
_DC_BITS = bytes([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
_DC_VALUES = bytes(range(12))
_AC_BITS = bytes([0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D])
_AC_VALUES = bytes.fromhex(
    "01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728"
    "292a3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a83848586878889"
    "8a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2"
    "e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9fa"
)


def jpeg_bomb(w: int, h: int) -> bytes:
    """Baseline grey JPEG, every 8x8 block flat: DC difference 0 ('00') then end of block ('1010')."""

    def segment(marker: int, data: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(data) + 2) + data

    blocks = ((w + 7) // 8) * ((h + 7) // 8)
    scan = b"\x28\xa2\x8a" * (blocks // 4)  # four blocks of 6 bits each: 3 bytes, never 0xFF
    if blocks % 4:
        bits = "001010" * (blocks % 4)
        bits += "1" * (-len(bits) % 8)
        scan += int(bits, 2).to_bytes(len(bits) // 8, "big")
    return (
        b"\xff\xd8"
        + segment(0xDB, b"\x00" + bytes([1] * 64))
        + segment(0xC0, struct.pack(">BHHB", 8, h, w, 1) + bytes([1, 0x11, 0]))
        + segment(0xC4, b"\x00" + _DC_BITS + _DC_VALUES + b"\x10" + _AC_BITS + _AC_VALUES)
        + segment(0xDA, bytes([1, 1, 0x00, 0, 63, 0]))
        + scan
        + b"\xff\xd9"
    )


def webp_bomb(w: int, h: int) -> bytes:
    """Lossless WebP (VP8L) with five single-symbol prefix codes: every pixel costs zero bits."""
    bits: list[int] = []

    def put(value: int, count: int) -> None:
        bits.extend((value >> i) & 1 for i in range(count))

    put(0x2F, 8)
    put(w - 1, 14)
    put(h - 1, 14)
    put(0, 1)  # alpha unused
    put(0, 3)  # version 0
    put(0, 1)  # no transform
    put(0, 1)  # no colour cache
    put(0, 1)  # no meta prefix codes
    for _ in range(5):  # green, red, blue, alpha, distance: simple code, one 1-bit symbol, symbol 0
        put(1, 1)
        put(0, 1)
        put(0, 1)
        put(0, 1)
    bits.extend([0] * (-len(bits) % 8))
    payload = bytes(sum(bit << i for i, bit in enumerate(bits[j : j + 8])) for j in range(0, len(bits), 8))
    payload += bytes(32 - len(payload))  # OpenCV sniffs 32 bytes; trailing bytes are ignored
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def tiff_bomb(w: int, h: int) -> bytes:
    """8-bit grey TIFF, one Deflate-compressed strip of zeros."""
    deflate = zlib.compressobj(9)
    row = bytes(w)
    strip = b"".join(deflate.compress(row) for _ in range(h)) + deflate.flush()
    short, long_ = 3, 4
    entries = [
        (256, long_, w),  # ImageWidth
        (257, long_, h),  # ImageLength
        (258, short, 8),  # BitsPerSample
        (259, short, 8),  # Compression: Deflate
        (262, short, 1),  # PhotometricInterpretation: BlackIsZero
        (273, long_, 8 + 2 + 12 * 9 + 4),  # StripOffsets: right after the IFD
        (277, short, 1),  # SamplesPerPixel
        (278, long_, h),  # RowsPerStrip
        (279, long_, len(strip)),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        ifd += struct.pack(
            "<HHIHH" if kind == short else "<HHII", tag, kind, 1, value, *([0] * (kind == short))
        )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + strip


def bmp_bomb(w: int, h: int) -> bytes:
    """8-bit palette BMP, RLE8: runs of 255 black pixels, end of line, end of bitmap."""
    row = b""
    left = w
    while left:
        run = min(255, left)
        row += bytes([run, 0])
        left -= run
    pixels = (row + b"\x00\x00") * h
    pixels = pixels[:-2] + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


BOMBS: dict[str, Callable[[int, int], bytes]] = {
    "png": png_bomb,
    "jpeg": jpeg_bomb,
    "webp": webp_bomb,
    "tiff": tiff_bomb,
    "bmp": bmp_bomb,
}
PILLOW_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "tiff": "TIFF", "bmp": "BMP"}


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {kind: make(BOMB_SIDE, BOMB_SIDE) for kind, make in BOMBS.items()}


# --- a tiny model and the server processes ------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def small_png() -> bytes:
    import cv2
    import numpy as np

    return bytes(cv2.imencode(".png", np.full((48, 64, 3), 90, np.uint8))[1])


def _status(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    root: Path  # its working directory, data directory and TMPDIR all live here
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def reset_peak(self) -> int:
        """Reset the peak RSS (VmHWM) to the current RSS; returns the current RSS in bytes."""
        with contextlib.suppress(OSError):  # an old kernel: the peak since start, an upper bound
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        return _status(self.process.pid)["VmRSS"]

    def peak(self) -> int:
        return _status(self.process.pid)["VmHWM"]

    def disk(self) -> set[str]:
        return _files(self.root)


def _start(name: str, command: list[str], root: Path, env: dict[str, str], ready_path: str) -> Server:
    import requests

    from tests.services import free_port

    port = free_port()
    tmpdir = root / "tmp"
    tmpdir.mkdir(parents=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VISIONINAPP_")}
    clean.update(env, TMPDIR=str(tmpdir), PYTHONDONTWRITEBYTECODE="1")
    log = root.parent / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)], cwd=root, env=clean, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(name, f"http://127.0.0.1:{port}", process, root, log)
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, f"{name} exited: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{name} not ready in time: {log.read_text()[-3000:]}"
        try:
            if requests.get(server.url + ready_path, timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.2)


def _stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(10)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The edge runtime as deployed by an EdgeDeployment: its model set by the environment."""
    base = tmp_path_factory.mktemp("edge")
    model = tiny_model(base / "model.onnx")
    root = base / "root"
    root.mkdir()
    env = {
        "VISIONINAPP_DATA_DIR": str(root / "data"),
        "VISIONINAPP_EDGE_MODEL_URI": model.as_uri(),
        "VISIONINAPP_EDGE_MODEL_SHA256": sha256(model),
        "VISIONINAPP_EDGE_MODEL_VERSION": "tiny-v1",
        "VISIONINAPP_EDGE_SUMMARY_INTERVAL_SECONDS": "86400",
        "VISIONINAPP_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "visioninapp.edge.server", "--host", "127.0.0.1"]
    server = _start("edge", command, root, env, "/readyz")
    try:
        yield server
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The API's app (create_app: middleware, error handlers, the preview route, PreviewModels)."""
    base = tmp_path_factory.mktemp("api")
    model = tiny_model(base / "model.onnx")
    root = base / "root"
    root.mkdir()
    command = [sys.executable, str(Path(__file__).resolve()), "api", str(root / "data"), str(model)]
    repo = str(Path(__file__).resolve().parents[2])
    # uploads up to 64 MiB: the chunked body below passes that limit long before it ends
    env = {"PYTHONPATH": repo, "VISIONINAPP_LOG_LEVEL": "WARNING", "VISIONINAPP_API_MAX_UPLOAD_MB": "64"}
    server = _start("api", command, root, env, "/healthz")
    try:
        yield server
    finally:
        _stop(server)


def _detect(server: Server, data: bytes, **kwargs: Any) -> Any:
    import requests

    if server.name == "edge":
        return requests.post(f"{server.url}/v1/detect", data=data, timeout=120, **kwargs)
    files = {"image": ("upload.bin", data, "application/octet-stream")}
    return requests.post(f"{server.url}/api/v1/projects/p1/models/m1/detect", files=files, timeout=120)


def assert_error(response: Any, status: int, *words: str) -> dict[str, Any]:
    """The one error body: {"error": {status, code, message, details, requestId}}."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"status", "code", "message", "details", "requestId"} <= set(error), error
    assert error["status"] == status and error["requestId"], error
    for word in words:
        assert word in error["message"], error
    return error


# --- the bombs themselves ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", BOMBS)
def test_bomb_generators_make_genuine_images(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2
    import numpy as np
    from PIL import Image

    from visioninapp.images import decode_image, image_header

    small = BOMBS[kind](64, 48)
    assert image_header(small) == (PILLOW_NAMES[kind], 64, 48)
    pixels = decode_image(small)  # the whole file decodes, by the same decoder the servers use
    assert pixels.shape == (48, 64, 3) and pixels.dtype == np.uint8
    assert cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_GRAYSCALE).shape == (48, 64)
    # The big one is the same file with other numbers: its header parses, and declares 16000x16000.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    import io

    with Image.open(io.BytesIO(BOMBS[kind](BOMB_SIDE, BOMB_SIDE))) as image:
        assert (image.format, image.size) == (PILLOW_NAMES[kind], (BOMB_SIDE, BOMB_SIDE))


@pytest.mark.parametrize("kind", BOMBS)
def test_shared_decoder_refuses_bombs_from_the_header(kind: str, bombs: dict[str, bytes]) -> None:
    from visioninapp.images import ImageError, decode_image, image_header

    for data in (bombs[kind], BOMBS[kind](9000, 9000)):  # over Pillow's limit, and over ours only
        with pytest.raises(ImageError, match="too large") as refused:
            image_header(data)
        assert refused.value.too_large and refused.value.status == 413
        with pytest.raises(ImageError, match="too large"):
            decode_image(data)


@pytest.mark.parametrize("target", ["edge", "api"])
def test_image_bombs_get_413_and_cost_no_memory(
    target: str, bombs: dict[str, bytes], request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(target)
    warm = _detect(server, small_png())  # loads the model and warms the decoders: idle is after this
    assert warm.status_code == 200, warm.text
    before = server.disk()
    peaks: dict[str, float] = {}
    responses = {}
    for kind, data in bombs.items():
        idle = server.reset_peak()
        started = time.perf_counter()
        responses[kind] = _detect(server, data)
        seconds = time.perf_counter() - started
        peaks[kind] = (server.peak() - idle) / MIB
        status = responses[kind].status_code
        print(f"{target} {kind}: {len(data):,} bytes, {status}, peak +{peaks[kind]:.1f} MiB, {seconds:.2f} s")
    assert max(peaks.values()) < RSS_BUDGET_MIB, peaks
    for response in responses.values():
        assert_error(response, 413, "too large")
    assert server.disk() == before, "a refused image left something on disk (its TMPDIR included)"
    assert _detect(server, small_png()).status_code == 200  # and the server still serves


# --- bodies -------------------------------------------------------------------------------------


def _chunked_post(port: int, path: str, head: bytes, total: int, content_type: str) -> tuple[bytes, int]:
    """POST `total` bytes chunked, made lazily; stop sending once the server answers.

    Returns the raw response and how many body bytes were sent by then."""
    block = bytes(CHUNK)
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        sent = 0
        try:
            for piece in [head] if head else []:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sent += len(piece)
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                sent += len(block)
            if sent >= total:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server closed the connection after answering: read the answer
            pass
        response = b""
        while b"\r\n\r\n" not in response or len(response) < _expected_length(response):
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    return response, sent


def _expected_length(raw: bytes) -> int:
    head, _, _ = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(raw) + 1


def _parse(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize(
    ("which", "multipart"),
    [("edge", False), ("edge", True), ("api", True)],
    ids=["edge-raw", "edge-multipart", "api-multipart"],
)
def test_a_300_mb_chunked_body_is_refused_while_read(
    which: str, multipart: bool, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(which)
    assert _detect(server, small_png()).status_code == 200
    before = server.disk()
    idle = server.reset_peak()
    head, content_type = b"", "application/octet-stream"
    if multipart:
        boundary, field = "bomb-boundary", "file" if which == "edge" else "image"
        content_type = f"multipart/form-data; boundary={boundary}"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
    path = "/v1/detect" if which == "edge" else "/api/v1/projects/p1/models/m1/detect"
    raw, sent = _chunked_post(server.port, path, head, CHUNKED_TOTAL, content_type)
    status, body = _parse(raw)
    peak = (server.peak() - idle) / MIB
    kind = "multipart" if multipart else "raw"
    print(f"{which} chunked {kind}: answered after {sent / MIB:.0f} MiB, peak +{peak:.1f} MiB")
    assert status == 413 and body["error"]["code"] == "too_large" and body["error"]["requestId"], body
    assert "too large" in body["error"]["message"]
    assert sent < CHUNKED_TOTAL, "the server read the whole body before answering"
    assert peak < RSS_BUDGET_MIB
    assert server.disk() == before, "the refused body left something on disk (its TMPDIR included)"


def test_edge_refuses_a_declared_oversized_body_before_reading_it(edge: Server) -> None:
    with socket.create_connection(("127.0.0.1", edge.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {CHUNKED_TOTAL}\r\n\r\n".encode()
        )  # and not one byte of the body
        raw = b""
        while b"\r\n\r\n" not in raw or len(raw) < _expected_length(raw):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    status, body = _parse(raw)
    assert (
        status == 413 and body["error"]["code"] == "too_large" and "314,572,800" in body["error"]["message"]
    )


# --- the edge's other answers ------------------------------------------------------------------


def test_edge_errors_use_the_one_error_body(edge: Server) -> None:
    import requests

    error = assert_error(requests.post(f"{edge.url}/v1/detect?conf=5", data=small_png(), timeout=30), 422)
    assert error["code"] == "invalid" and [d["field"] for d in error["details"]] == ["conf"]
    assert_error(requests.post(f"{edge.url}/v1/detect", data=b"not an image", timeout=30), 415, "JPEG")
    assert_error(requests.post(f"{edge.url}/v1/detect", data=b"", timeout=30), 400, "empty")
    assert_error(requests.put(f"{edge.url}/v1/admin/model", json={"uri": "x"}, timeout=30), 422)
    assert_error(requests.get(f"{edge.url}/v1/nothing", timeout=30), 404)
    multipart = requests.post(f"{edge.url}/v1/detect", files={"other": ("a", b"x")}, timeout=30)
    assert_error(multipart, 400, "`file`")
    response = requests.get(f"{edge.url}/v1/nothing", headers={"X-Request-ID": "trace-1"}, timeout=30)
    assert response.json()["error"]["requestId"] == "trace-1" == response.headers["x-request-id"]


def test_edge_refuses_an_admin_swap_while_its_deployment_governs_the_model(
    edge: Server, tmp_path: Path
) -> None:
    import requests

    other = tiny_model(tmp_path / "other.onnx", classes=3)
    before = edge.disk()
    body = {"uri": other.as_uri(), "sha256": sha256(other), "version": "by-hand"}
    error = assert_error(requests.put(f"{edge.url}/v1/admin/model", json=body, timeout=60), 409)
    assert "VISIONINAPP_EDGE_MODEL_URI" in error["message"] and "EdgeDeployment" in error["message"]
    info = requests.get(f"{edge.url}/v1/model", timeout=10).json()
    assert info["serving"]["version"] == "tiny-v1" and info["desired"]["version"] == "tiny-v1"
    assert info["ready"] is True
    assert edge.disk() == before, "the refused model was fetched anyway"


# --- the API's process --------------------------------------------------------------------------


def _serve_api(data_dir: Path, model: Path, port: int) -> None:
    """The API app over fakes for the cluster (one ModelArtifact) and the login (a viewer)."""
    import threading
    import typing

    import uvicorn

    from visioninapp.api.app import create_app
    from visioninapp.api.container import ApiContainer
    from visioninapp.api.preview import PreviewModels
    from visioninapp.api.security import Access, ProjectReader, current_user
    from visioninapp.factory import artifact_store_for
    from visioninapp.settings import Settings

    artifact = {
        "metadata": {"name": "m1", "namespace": "p1"},
        "spec": {
            "formats": [{"format": "onnx", "uri": model.as_uri(), "sha256": sha256(model)}],
            "classNames": ["a", "b"],
        },
    }

    class Training:
        def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
            assert (kind, namespace, name) == ("ModelArtifact", "p1", "m1")
            return artifact

    class Clusters:
        training = Training()

    settings = Settings(data_dir=data_dir)
    container = ApiContainer(
        settings=settings,
        db=None,  # type: ignore[arg-type]
        cache=None,  # type: ignore[arg-type]
        search=None,  # type: ignore[arg-type]
        auth=None,  # type: ignore[arg-type]
        clusters=Clusters(),  # type: ignore[arg-type]
        bus=None,  # type: ignore[arg-type]
        notifier=None,  # type: ignore[arg-type]
        preview=PreviewModels(data_dir / "preview-models"),
        stop=threading.Event(),
    )
    container.store_for = lambda uri: artifact_store_for(uri, settings)  # type: ignore[method-assign]
    app = create_app(container)
    reader = typing.get_args(ProjectReader)[1].dependency

    def viewer(project: str) -> Access:
        return Access(user=None, project=project, role="viewer")  # type: ignore[arg-type]

    app.dependency_overrides[reader] = viewer
    app.dependency_overrides[current_user] = lambda: None  # routes that ask who, before what role
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":  # python test_image_bombs.py api DATA_DIR MODEL --port PORT
    assert sys.argv[1] == "api" and sys.argv[4] == "--port", sys.argv
    _serve_api(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[5]))

"""The console's static files, served for a fast cold load: index.html with the console's
configuration and the vendor manifest inlined (no extra round trip for either) and every module
preloaded at once; vendor files under content-hashed names, cached as immutable and sent gzipped
from their precompressed copies (`frontend/vendor.mjs` makes both)."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["ConsoleFiles", "index_html"]

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"  # our own modules: revalidated by ETag on each load, never stale
# `vendor/<name>.<12 hex>.<ext>`: the name changes with the content
HASHED = re.compile(r"^vendor/[\w.-]+\.[0-9a-f]{12}\.(js|css)$")
VENDOR_REFERENCE = re.compile(r"vendor/([\w-]+\.(?:js|css))")


def _bundle(root: Path, manifest: dict[str, str]) -> str | None:
    """The bundled console, unless a module changed since it was built (then the modules are served:
    an edit shows without re-running vendor.mjs)."""
    bundle = manifest.get("console.js")
    if bundle is None or not (root / bundle).is_file():
        return None
    built = (root / bundle).stat().st_mtime
    return None if any(p.stat().st_mtime > built for p in (root / "js").rglob("*.js")) else bundle


def index_html(root: Path, config: dict[str, Any]) -> str:
    """index.html with `vendor/<name>` references replaced by their hashed files, the configuration
    (plus the manifest) inlined, the console as one bundle (else a modulepreload link per module),
    and Firebase's SDK preloaded when sign-in is configured (never otherwise)."""
    manifest_path = root / "vendor" / "manifest.json"
    manifest: dict[str, str] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    text = (root / "index.html").read_text()
    text = VENDOR_REFERENCE.sub(lambda m: manifest.get(m.group(1), m.group(0)), text)
    inline = json.dumps({**config, "vendor": manifest}).replace("</", "<\\/")
    text = text.replace(
        '<script id="console-config" type="application/json"></script>',
        f'<script id="console-config" type="application/json">{inline}</script>',
    )
    bundle = _bundle(root, manifest)
    if bundle:
        text = text.replace('src="js/main.js"', f'src="{html.escape(bundle)}"')
        links = []
    else:
        links = [
            f'<link rel="modulepreload" href="{html.escape(p.relative_to(root).as_posix())}">'
            for p in sorted((root / "js").rglob("*.js"))
        ]
    if config.get("firebase") and "firebase.js" in manifest:
        links.append(f'<link rel="preload" as="script" href="{html.escape(manifest["firebase.js"])}">')
    return text.replace("</head>", "".join(f"  {link}\n" for link in links) + "</head>", 1)


class ConsoleFiles(StaticFiles):
    """StaticFiles with the console's index and caching rules."""

    def __init__(self, directory: Path, config: Callable[[], dict[str, Any]]) -> None:
        super().__init__(directory=directory, html=True)
        self.root = directory
        self.config = config

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path in ("", ".", "index.html"):
            return HTMLResponse(index_html(self.root, self.config()), headers={"Cache-Control": REVALIDATE})
        if HASHED.match(path):
            accepts = Headers(scope=scope).get("accept-encoding", "")
            packed = self.root / f"{path}.gz"
            if "gzip" in accepts and packed.is_file():
                media = "text/css" if path.endswith(".css") else "text/javascript"
                return FileResponse(
                    packed,
                    media_type=media,
                    headers={
                        "Content-Encoding": "gzip",
                        "Cache-Control": IMMUTABLE,
                        "Vary": "Accept-Encoding",
                    },
                )
            response = await super().get_response(path, scope)
            response.headers["Cache-Control"] = IMMUTABLE
            return response
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", REVALIDATE)
        return response

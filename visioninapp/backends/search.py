"""Search index over runs, models, log lines and other entities.

Elasticsearch in production; SQLite FTS5 here as the embedded default (one file, no server).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SearchHit", "SearchIndex", "SqliteSearchIndex", "text_of"]


@dataclass(frozen=True)
class SearchHit:
    collection: str
    id: str
    score: float
    document: dict[str, Any]
    highlight: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class SearchIndex(ABC):
    """Documents grouped in collections (`runs`, `models`, `logs`, ...), found by free text."""

    @abstractmethod
    def index(self, collection: str, doc_id: str, document: dict[str, Any]) -> None:
        """Insert or replace a document."""

    def index_many(self, collection: str, documents: Iterable[tuple[str, dict[str, Any]]]) -> int:
        """Insert or replace many documents; returns how many."""
        count = 0
        for doc_id, document in documents:
            self.index(collection, doc_id, document)
            count += 1
        return count

    @abstractmethod
    def delete(self, collection: str, doc_id: str) -> None:
        """Remove a document; no error if absent."""

    @abstractmethod
    def search(
        self, query: str, collections: list[str] | None = None, project: str | None = None, limit: int = 20
    ) -> list[SearchHit]:
        """Best matches first; `project` restricts to documents whose `project` field equals it."""


NOT_SEARCHED = frozenset({"time"})  # sorted by, never typed: and its ISO text would show in highlights


def text_of(document: dict[str, Any]) -> str:
    """The searchable text of a document, as a highlight may show it: numbers as people read them."""
    parts: list[str] = []
    for key, value in document.items():
        if key in NOT_SEARCHED:
            continue
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, (list, tuple)):
            parts.extend(str(v) for v in value)
        elif isinstance(value, float):
            parts.append(f"{value:.3f}")
        elif isinstance(value, int):
            parts.append(str(value))
    return " ".join(parts)


def _fts_query(query: str) -> str:
    # Quote every term: users type free text, FTS5 syntax errors must not reach them.
    terms = [t.replace('"', '""') for t in query.split() if t.strip()]
    return " ".join(f'"{t}"*' for t in terms)


class SqliteSearchIndex(SearchIndex):
    """SQLite FTS5 full-text search (BM25 ranking, snippets)."""

    def __init__(self, path: Path | str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS documents USING fts5("
            "collection UNINDEXED, doc_id UNINDEXED, project UNINDEXED, body, document UNINDEXED)"
        )
        self._db.commit()

    def index(self, collection: str, doc_id: str, document: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM documents WHERE collection = ? AND doc_id = ?", (collection, doc_id)
            )
            self._db.execute(
                "INSERT INTO documents VALUES (?, ?, ?, ?, ?)",
                (collection, doc_id, document.get("project"), text_of(document), json.dumps(document)),
            )
            self._db.commit()

    def delete(self, collection: str, doc_id: str) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM documents WHERE collection = ? AND doc_id = ?", (collection, doc_id)
            )
            self._db.commit()

    def search(
        self, query: str, collections: list[str] | None = None, project: str | None = None, limit: int = 20
    ) -> list[SearchHit]:
        match = _fts_query(query)
        if not match:
            return []
        sql = (
            "SELECT collection, doc_id, bm25(documents), document, "
            "snippet(documents, 3, '<em>', '</em>', '…', 12) FROM documents WHERE documents MATCH ?"
        )
        params: list[Any] = [match]
        if collections:
            sql += f" AND collection IN ({','.join('?' * len(collections))})"
            params.extend(collections)
        if project is not None:
            sql += " AND project = ?"
            params.append(project)
        sql += " ORDER BY bm25(documents) LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [SearchHit(c, i, -score, json.loads(doc), snippet) for c, i, score, doc, snippet in rows]

    def close(self) -> None:
        self._db.close()

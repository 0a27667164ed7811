"""Elasticsearch 8/9 as the `SearchIndex` backend.

One index per collection behind an alias (`<prefix>-<collection>` → `<prefix>-<collection>-000001`),
all created from one index template with explicit mappings: a rebuild writes a fresh index and
swaps the alias in one atomic call, so searches never see a half-built index. Only the common API
is used (index, bulk, search with highlights, aliases), which the test server implements too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from elasticsearch import Elasticsearch, NotFoundError, helpers

from visioninapp.backends.search import SearchHit, SearchIndex, text_of

__all__ = ["COLLECTIONS", "ElasticsearchIndex"]

# Every document is stored whole in _source; only these fields are indexed (dynamic: false), so
# a new field in a document never changes a mapping behind our back.
_MAPPINGS: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "collection": {"type": "keyword"},
        "project": {"type": "keyword"},
        "name": {"type": "keyword"},
        "title": {"type": "text"},
        "search_text": {"type": "text"},
        "time": {"type": "date"},
        "phase": {"type": "keyword"},
        "level": {"type": "keyword"},
        "epoch": {"type": "integer"},
        "map50": {"type": "float"},
    },
}
COLLECTIONS = ("projects", "datasets", "runs", "epochs", "logs", "models", "deployments", "feedback")


class ElasticsearchIndex(SearchIndex):
    def __init__(self, url: str, prefix: str = "visioninapp", refresh: bool = False) -> None:
        self._es = Elasticsearch(url, request_timeout=30, retry_on_timeout=True, max_retries=3)
        self._prefix = prefix
        self._refresh = refresh  # tests and local mode read their own writes at once
        self._ready: set[str] = set()

    def alias(self, collection: str) -> str:
        if collection not in COLLECTIONS:
            raise ValueError(f"unknown search collection {collection!r}; one of {', '.join(COLLECTIONS)}")
        return f"{self._prefix}-{collection}"

    def ensure_ready(self) -> None:
        """Create the index template and, per collection, a first index behind its alias."""
        self._es.indices.put_index_template(
            name=self._prefix,
            index_patterns=[f"{self._prefix}-*"],
            template={"settings": {"number_of_shards": 1}, "mappings": _MAPPINGS},
        )
        for collection in COLLECTIONS:
            self._ensure_alias(collection)

    def _ensure_alias(self, collection: str) -> str:
        alias = self.alias(collection)
        if alias not in self._ready:
            if not self._es.indices.exists_alias(name=alias):
                index = f"{alias}-000001"
                if not self._es.indices.exists(index=index):
                    self._es.indices.create(index=index, mappings=_MAPPINGS)
                self._es.indices.put_alias(index=index, name=alias)
            self._ready.add(alias)
        return alias

    @staticmethod
    def _source(collection: str, document: dict[str, Any]) -> dict[str, Any]:
        return {**document, "collection": collection, "search_text": text_of(document)}

    def index(self, collection: str, doc_id: str, document: dict[str, Any]) -> None:
        self._es.index(
            index=self._ensure_alias(collection),
            id=doc_id,
            document=self._source(collection, document),
            refresh="wait_for" if self._refresh else None,
        )

    def index_many(self, collection: str, documents: Iterable[tuple[str, dict[str, Any]]]) -> int:
        alias = self._ensure_alias(collection)
        actions = [
            {"_op_type": "index", "_index": alias, "_id": doc_id, "_source": self._source(collection, doc)}
            for doc_id, doc in documents
        ]
        if not actions:
            return 0
        indexed, _ = helpers.bulk(self._es, actions, refresh="wait_for" if self._refresh else False)
        return int(indexed)

    def delete(self, collection: str, doc_id: str) -> None:
        with contextlib.suppress(NotFoundError):
            self._es.delete(
                index=self._ensure_alias(collection), id=doc_id, refresh="wait_for" if self._refresh else None
            )

    def search(
        self, query: str, collections: list[str] | None = None, project: str | None = None, limit: int = 20
    ) -> list[SearchHit]:
        if not query.strip():
            return []
        aliases = [self._ensure_alias(c) for c in (collections or COLLECTIONS)]
        filters: list[dict[str, Any]] = []
        if project is not None:
            filters.append({"term": {"project": project}})
        response = self._es.search(
            index=",".join(aliases),
            query={
                "bool": {
                    "must": [
                        {
                            "multi_match": {
                                "query": query,
                                "fields": ["title^3", "search_text"],
                                "operator": "and",
                            }
                        }
                    ],
                    "filter": filters,
                }
            },
            highlight={"fields": {"search_text": {}, "title": {}}},
            size=limit,
        )
        hits = []
        for hit in response["hits"]["hits"]:
            source = dict(hit["_source"])
            collection = source.pop("collection", "")
            source.pop("search_text", None)
            fragments = [f for field in hit.get("highlight", {}).values() for f in field]
            hits.append(
                SearchHit(
                    collection, hit["_id"], float(hit.get("_score") or 0.0), source, " … ".join(fragments)
                )
            )
        return hits

    def count(self, collection: str) -> int:
        """Documents in a collection, after a refresh (every write so far is counted)."""
        alias = self._ensure_alias(collection)
        self._es.indices.refresh(index=alias)
        return int(self._es.count(index=alias)["count"])

    def rebuild(self, collection: str, documents: Iterable[tuple[str, dict[str, Any]]]) -> str:
        """Write every document into a fresh index, then swap the alias to it atomically."""
        alias = self._ensure_alias(collection)
        current = sorted(self._es.indices.get_alias(name=alias).keys())
        number = max(int(name.rsplit("-", 1)[1]) for name in current) + 1
        fresh = f"{alias}-{number:06d}"
        self._es.indices.create(index=fresh, mappings=_MAPPINGS)
        actions = [
            {"_op_type": "index", "_index": fresh, "_id": doc_id, "_source": self._source(collection, doc)}
            for doc_id, doc in documents
        ]
        if actions:
            helpers.bulk(self._es, actions, refresh="wait_for")
        self._es.indices.update_aliases(
            actions=[{"remove": {"index": name, "alias": alias}} for name in current]
            + [{"add": {"index": fresh, "alias": alias}}]
        )
        for name in current:
            self._es.indices.delete(index=name)
        return fresh

    def ping(self) -> bool:
        return bool(self._es.ping())

    def close(self) -> None:
        self._es.close()

"""The API's dependency container: every backend a request or a background thread uses, built once
from settings (embedded defaults where unconfigured) and handed to the routes by FastAPI."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from visioninapp.api.consumers import StreamConsumer, make_consumers, run_consumers
from visioninapp.api.db import Database
from visioninapp.api.kube import Clusters
from visioninapp.api.notify import Notifier
from visioninapp.api.preview import PreviewModels
from visioninapp.backends.auth import Authenticator
from visioninapp.backends.cache import Cache
from visioninapp.backends.events import EventBus
from visioninapp.backends.search import SearchIndex
from visioninapp.backends.storage import ArtifactStore
from visioninapp.factory import (
    artifact_store_for,
    build_authenticator,
    build_cache,
    build_event_bus,
    build_search_index,
)
from visioninapp.settings import Settings

__all__ = ["ApiContainer"]

log = logging.getLogger(__name__)


@dataclass
class ApiContainer:
    settings: Settings
    db: Database
    cache: Cache
    search: SearchIndex
    auth: Authenticator
    clusters: Clusters
    bus: EventBus
    notifier: Notifier
    preview: PreviewModels
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, search_refresh: bool = False) -> ApiContainer:
        db = Database(settings.resolved_database_url)
        db.migrate()
        return cls(
            settings=settings,
            db=db,
            cache=build_cache(settings),
            search=build_search_index(settings, refresh=search_refresh),
            auth=build_authenticator(settings),
            clusters=Clusters(settings),
            bus=build_event_bus(settings),
            notifier=Notifier(settings.webhook_url),
            preview=PreviewModels(settings.data_dir / "preview-models"),
        )

    def store_for(self, uri: str) -> ArtifactStore:
        return artifact_store_for(uri, self.settings)

    def consumers(self) -> list[StreamConsumer]:
        return make_consumers(self.settings, self.db, self.bus, self.search)

    def start_background(self, consumers: bool = True, sync_interval: float = 2.0) -> None:
        """Stream consumers and the cluster sync (run history, notifications) in daemon threads."""
        from visioninapp.api.sync import ClusterSync  # sync needs the container's type: a cycle

        if consumers:
            self.threads += run_consumers(self.consumers(), self.stop)
        syncer = ClusterSync(self)
        thread = threading.Thread(
            target=syncer.run, args=(self.stop, sync_interval), name="cluster-sync", daemon=True
        )
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        for closeable in (self.bus, self.search, self.cache, self.auth):
            close = getattr(closeable, "close", None)  # not every backend holds a connection
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing %s failed", type(closeable).__name__)
        self.clusters.close()
        self.db.dispose()

"""Build the shared backends from settings, in one place (embedded defaults when unconfigured)."""

from __future__ import annotations

from urllib.parse import urlparse

from visioninapp.backends.auth import Authenticator, LocalAdminAuthenticator
from visioninapp.backends.cache import Cache, MemoryCache
from visioninapp.backends.events import EventBus, LocalEventLog
from visioninapp.backends.search import SearchIndex, SqliteSearchIndex
from visioninapp.backends.storage import ArtifactStore, LocalArtifactStore
from visioninapp.settings import Settings

__all__ = [
    "ConfigurationError",
    "artifact_store_for",
    "build_authenticator",
    "build_cache",
    "build_event_bus",
    "build_search_index",
]


class ConfigurationError(RuntimeError):
    """Settings ask for something this installation cannot provide."""


def artifact_store_for(uri: str, settings: Settings) -> ArtifactStore:
    """The store that serves `uri`, chosen by its scheme (`s3://` or `file://`)."""
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return LocalArtifactStore()
    if scheme == "s3":
        try:
            from visioninapp.backends.s3 import S3ArtifactStore
        except ImportError as error:
            raise ConfigurationError(
                f"{uri} needs the S3 backend: pip install 'visioninapp[s3]' ({error})"
            ) from None
        return S3ArtifactStore(endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
    raise ConfigurationError(f"unsupported storage URI {uri!r}: use s3://bucket/key or file:///path")


def build_event_bus(settings: Settings) -> EventBus:
    if not settings.rabbitmq_host:
        return LocalEventLog(settings.data_dir / "events")
    try:
        from visioninapp.backends.rabbitmq import RabbitStreamBus
    except ImportError as error:
        raise ConfigurationError(
            f"VISIONINAPP_RABBITMQ_HOST is set but rstream is missing: pip install 'visioninapp[streams]' "
            f"({error})"
        ) from None
    return RabbitStreamBus(
        host=settings.rabbitmq_host,
        port=settings.rabbitmq_stream_port,
        user=settings.rabbitmq_user,
        password=settings.rabbitmq_password,
        vhost=settings.rabbitmq_vhost,
    )


def build_search_index(settings: Settings, refresh: bool = False) -> SearchIndex:
    """Elasticsearch when configured, else SQLite FTS5; `refresh` makes writes visible at once."""
    if settings.elasticsearch_url:
        from visioninapp.backends.elastic import ElasticsearchIndex

        index = ElasticsearchIndex(settings.elasticsearch_url, settings.search_index_prefix, refresh=refresh)
        index.ensure_ready()
        return index
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteSearchIndex(settings.data_dir / "search.db")


def build_cache(settings: Settings) -> Cache:
    if settings.redis_url:
        from visioninapp.backends.redis_cache import RedisCache

        return RedisCache(settings.redis_url)
    return MemoryCache()


def build_authenticator(settings: Settings) -> Authenticator:
    if settings.firebase_project_id:
        try:
            from visioninapp.backends.firebase import FirebaseAuthenticator
        except ImportError as error:
            raise ConfigurationError(
                f"VISIONINAPP_FIREBASE_PROJECT_ID is set but firebase-admin is missing: "
                f"pip install 'visioninapp[api]' ({error})"
            ) from None
        return FirebaseAuthenticator(
            settings.firebase_project_id, settings.api_admins, settings.firebase_certs_url
        )
    return LocalAdminAuthenticator()

"""Authentication: who is calling. Firebase ID tokens in production; a local admin on loopback."""

from __future__ import annotations

import ipaddress
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

__all__ = ["AuthError", "Authenticator", "LocalAdminAuthenticator", "Principal"]

log = logging.getLogger(__name__)


class AuthError(PermissionError):
    """The caller could not be authenticated; the message says why."""


@dataclass(frozen=True)
class Principal:
    uid: str
    email: str | None = None
    is_platform_admin: bool = False

    @property
    def identities(self) -> list[str]:
        """What a membership may name: the uid, and the email when the token has one."""
        return [self.uid, self.email] if self.email else [self.uid]

    @property
    def label(self) -> str:
        """Who did something, as recorded on objects and rows: the email, else the uid."""
        return self.email or self.uid


class Authenticator(ABC):
    @abstractmethod
    def authenticate(self, token: str | None, client_host: str | None) -> Principal:
        """Return the caller or raise AuthError."""


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LocalAdminAuthenticator(Authenticator):
    """Everyone on this machine is the single local admin; everyone else is refused.

    Only for local mode: the warning is logged at start so it is never on by accident.
    """

    def __init__(self) -> None:
        log.warning(
            "AUTH DISABLED: local mode, every request from loopback is the local admin; "
            "set VISIONINAPP_FIREBASE_PROJECT_ID to require Firebase ID tokens"
        )

    def authenticate(self, token: str | None, client_host: str | None) -> Principal:
        if not is_loopback(client_host):
            raise AuthError(
                f"local admin access is only allowed from loopback, not from {client_host}; "
                "configure Firebase auth to serve other hosts"
            )
        return Principal(uid="local-admin", email="admin@localhost", is_platform_admin=True)

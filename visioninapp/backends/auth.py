"""Authentication: who is calling. Firebase ID tokens in production; a local admin on loopback."""

from __future__ import annotations

import ipaddress
import logging
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AuthError", "Authenticator", "LocalAdminAuthenticator", "Principal"]

log = logging.getLogger(__name__)


class AuthError(PermissionError):
    """The caller could not be authenticated; the message says why."""


@dataclass(frozen=True)
class Principal:
    """The caller. `email` is what the token claims; it names the caller only once verified.

    Anyone can sign up to Firebase with someone else's address (email/password sign-up does not
    prove ownership), so an unverified email grants nothing: no membership that names it, no
    platform admin listed by it, and it is not recorded as who did something.
    """

    uid: str
    email: str | None = None
    is_platform_admin: bool = False
    email_verified: bool = False

    @property
    def verified_email(self) -> str | None:
        return self.email if self.email and self.email_verified else None

    @property
    def identities(self) -> list[str]:
        """What a membership may name: the uid, and the email when the token has a verified one."""
        email = self.verified_email
        return [self.uid, email] if email else [self.uid]

    @property
    def label(self) -> str:
        """Who did something, as recorded on objects and rows: the verified email, else the uid."""
        return self.verified_email or self.uid

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], admins: Collection[str] = ()) -> Principal:
        """The caller of a verified ID token: uid, email, and platform admin by the `admin: true`
        custom claim, by uid, or by email when `email_verified` is true (and only then)."""
        uid = str(claims["uid"])
        email = claims.get("email") if isinstance(claims.get("email"), str) else None
        verified = email is not None and claims.get("email_verified") is True
        is_admin = claims.get("admin") is True or uid in admins or (verified and email in admins)
        return cls(uid=uid, email=email, is_platform_admin=is_admin, email_verified=verified)


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
        return Principal(
            uid="local-admin", email="admin@localhost", is_platform_admin=True, email_verified=True
        )

"""Firebase Auth as the `Authenticator`: ID tokens verified with firebase-admin.

With `FIREBASE_AUTH_EMULATOR_HOST` set (tests, development) firebase-admin accepts the emulator's
unsigned tokens; expiry is checked here in every mode, since firebase-admin skips it there.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import firebase_admin
import google.auth.credentials
from firebase_admin import auth, credentials

from visioninapp.backends.auth import Authenticator, AuthError, Principal

__all__ = ["FirebaseAuthenticator"]

CLOCK_SKEW_SECONDS = 5


class _VerifyOnly(credentials.Base):  # type: ignore[misc]
    """Verifying ID tokens needs only Google's public certificates: no service account, no ADC."""

    def get_credential(self) -> google.auth.credentials.Credentials:
        return google.auth.credentials.AnonymousCredentials()  # type: ignore[no-untyped-call]


class FirebaseAuthenticator(Authenticator):
    def __init__(
        self, project_id: str, admins: list[str] | None = None, certs_url: str | None = None
    ) -> None:
        # An app of our own (named), so an embedding process's default app is left alone.
        self._app = firebase_admin.initialize_app(
            _VerifyOnly(), options={"projectId": project_id}, name=f"visioninapp-{uuid.uuid4().hex[:8]}"
        )
        self._admins = set(admins or [])
        if certs_url:
            # Only for tests of signature checks: firebase-admin has no public option for this URL.
            auth._get_client(self._app)._token_verifier.id_token_verifier.cert_url = certs_url

    def authenticate(self, token: str | None, client_host: str | None) -> Principal:
        if not token:
            raise AuthError("missing bearer token: send `Authorization: Bearer <Firebase ID token>`")
        try:
            claims: dict[str, Any] = auth.verify_id_token(
                token, app=self._app, clock_skew_seconds=CLOCK_SKEW_SECONDS
            )
        except auth.ExpiredIdTokenError:
            raise AuthError("the ID token has expired: sign in again to get a fresh one") from None
        except auth.CertificateFetchError as error:
            raise AuthError(f"cannot fetch Firebase signing certificates: {error}") from None
        except (auth.InvalidIdTokenError, ValueError) as error:
            raise AuthError(f"invalid ID token: {error}") from None
        if float(claims.get("exp", 0)) < time.time() - CLOCK_SKEW_SECONDS:
            raise AuthError("the ID token has expired: sign in again to get a fresh one")
        return Principal.from_claims(claims, self._admins)

    def close(self) -> None:
        firebase_admin.delete_app(self._app)

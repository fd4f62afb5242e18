"""Signed tokens for links and return paths (itsdangerous), with key rotation.

Keys: CONSENTRY_SECRET_KEYS (first signs, all verify), else one generated per database and kept
in its `meta` table. Unsubscribe tokens never expire; confirmation tokens carry a timestamp.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import sqlalchemy as sa
from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

from consentry.settings import Settings
from consentry.store import meta


def secret_keys(conn: sa.Connection, settings: Settings) -> list[str]:
    """Verification order for itsdangerous: oldest first, the signing key last."""
    keys = list(settings.secret_keys) or [meta.get_or_create(conn, meta.SECRET_KEYS)]
    return list(reversed(keys))


class Signer:
    def __init__(self, keys: list[str]) -> None:
        self._unsubscribe = URLSafeSerializer(keys, salt="consentry.unsubscribe")
        self._preferences = URLSafeSerializer(keys, salt="consentry.preferences")
        self._confirmation = URLSafeTimedSerializer(keys, salt="consentry.confirmation")
        self._keys = keys

    @classmethod
    def for_database(cls, conn: sa.Connection, settings: Settings) -> Signer:
        return cls(secret_keys(conn, settings))

    def unsubscribe_token(self, profile_id: int, delivery_id: int | None,
                          service_slug: str | None, channel: str) -> str:
        return self._unsubscribe.dumps([profile_id, delivery_id, service_slug, channel])

    def read_unsubscribe_token(self, token: str) -> tuple[int, int | None, str | None, str]:
        try:
            profile_id, delivery_id, service, channel = self._unsubscribe.loads(token)
        except (BadSignature, ValueError, TypeError):
            raise InvalidToken("this link is not valid") from None
        return int(profile_id), delivery_id, service, str(channel)

    # VERP return paths ("b-...") and List-Unsubscribe mailto addresses ("u-...") name the
    # delivery and the recipient in their local part. Lowercase hex only, because some MTAs
    # change the case of the local part they answer to; at most 64 characters.
    def address_tag(self, kind: str, delivery_id: int, target_id: int) -> str:
        mac = self._tag_mac(self._keys[-1], kind, delivery_id, target_id)
        return f"{kind}-{delivery_id}-{target_id}-{mac}"

    def read_address_tag(self, tag: str) -> tuple[str, int, int]:
        match = re.fullmatch(r"([bu])-(\d{1,19})-(\d{1,19})-([0-9a-f]{20})",
                             tag.strip().lower())
        if match:
            kind, delivery_id, target_id = match.group(1), int(match.group(2)), int(
                match.group(3))
            for key in self._keys:
                if hmac.compare_digest(self._tag_mac(key, kind, delivery_id, target_id),
                                       match.group(4)):
                    return kind, delivery_id, target_id
        raise InvalidToken("not an address of ours")

    def preferences_token(self, profile_id: int) -> str:
        return self._preferences.dumps(profile_id)

    def read_preferences_token(self, token: str) -> int:
        try:
            return int(self._preferences.loads(token))
        except (BadSignature, ValueError, TypeError):
            raise InvalidToken("this link is not valid") from None

    # Double opt-in confirmation links carry their time of issue and expire.
    def confirmation_token(self, profile_id: int, service_slug: str) -> str:
        return self._confirmation.dumps([profile_id, service_slug])

    def read_confirmation_token(self, token: str, max_age_seconds: float) -> tuple[int, str]:
        """(profile id, service slug); ExpiredToken (which still names them) when the link
        is older than `max_age_seconds`, InvalidToken when it is not ours or was changed."""
        try:
            profile_id, slug = self._confirmation.loads(token, max_age=max_age_seconds)
        except SignatureExpired as exc:
            try:
                profile_id, slug = self._confirmation.load_payload(exc.payload)
            except (BadSignature, ValueError, TypeError):
                raise InvalidToken("this link is not valid") from None
            raise ExpiredToken(int(profile_id), str(slug)) from None
        except (BadSignature, ValueError, TypeError):
            raise InvalidToken("this link is not valid") from None
        return int(profile_id), str(slug)

    @staticmethod
    def _tag_mac(key: str, kind: str, delivery_id: int, target_id: int) -> str:
        msg = f"tag:{kind}:{delivery_id}:{target_id}".encode()
        return hmac.new(key.encode(), msg, hashlib.sha256).hexdigest()[:20]


class InvalidToken(Exception):
    pass


class ExpiredToken(InvalidToken):
    """A genuine link past its validity; it still says whose and what it was."""

    def __init__(self, profile_id: int, service_slug: str) -> None:
        super().__init__("this link has expired")
        self.profile_id = profile_id
        self.service_slug = service_slug

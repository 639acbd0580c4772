"""Tokens at rest: Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) under
``DMWORKER_SECRET_KEY``.

The setting holds one or more keys, comma-separated: the first encrypts, every one decrypts
(:class:`cryptography.fernet.MultiFernet`), so a key is rotated without downtime — put the new key
first, keep the old one after it, run ``dmworker accounts rotate-key`` (re-encrypts every stored
token under the first key), then drop the old key.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .settings import ConfigError, Settings


class SecretKeyMissingError(ConfigError):
    """``DMWORKER_SECRET_KEY`` is unset: no token can be stored in or read from the registry."""


class TokenDecryptError(ValueError):
    """A stored token does not decrypt under any configured key (a key was dropped too early)."""


class TokenCipher:
    """Encrypts and decrypts access tokens with the configured keys.

    Raises:
        SecretKeyMissingError: at construction, when no key is configured.
    """

    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise SecretKeyMissingError(
                "DMWORKER_SECRET_KEY is unset: the account registry stores tokens encrypted and needs "
                "a key (make one with `dmworker accounts new-key`)"
            )
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenCipher:
        return cls(settings.secret_keys)

    def encrypt(self, token: str) -> str:
        """The ciphertext of ``token`` (URL-safe text, different on every call)."""
        return self._fernet.encrypt(token.encode("utf-8")).decode("ascii")

    def decrypt(self, blob: str) -> str:
        """The token inside ``blob``.

        Raises:
            TokenDecryptError: when no configured key opens it (the message carries no ciphertext).
        """
        try:
            return self._fernet.decrypt(blob.encode("ascii")).decode("utf-8")
        except (InvalidToken, ValueError, UnicodeError):
            raise TokenDecryptError("a stored token does not decrypt under DMWORKER_SECRET_KEY") from None

    def rotate(self, blob: str) -> str:
        """``blob`` re-encrypted under the first key.

        Raises:
            TokenDecryptError: when no configured key opens it.
        """
        try:
            return self._fernet.rotate(blob.encode("ascii")).decode("ascii")
        except (InvalidToken, ValueError):
            raise TokenDecryptError("a stored token does not decrypt under DMWORKER_SECRET_KEY") from None


def new_key() -> str:
    """A fresh Fernet key for ``DMWORKER_SECRET_KEY``."""
    return Fernet.generate_key().decode("ascii")

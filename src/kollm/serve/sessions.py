"""The console's login sessions and form tokens, signed with a secret the replicas share.

The login cookie holds `KID.EXPIRY.SIGNATURE`: KID is an HMAC of the key (the key is never in
the cookie), EXPIRY a Unix time, and the signature an HMAC of both. Any replica with the same
secret and keys verifies it, so no session table is needed; a key removed from the key file
ends its sessions at the next start. CSRF tokens are HMACs with the same secret.

The secret, first found: KOLLM_SECRET, the file KOLLM_SECRET_FILE or `serve.secret_file`
names, an HMAC of the sorted keys (replicas with the same keys agree), else random for this
process, with a warning (replicas then refuse each other's forms and logins).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

from kollm.serve.keys import KeyFileError, check_private

log = logging.getLogger(__name__)

SESSION_S = 12 * 3600.0  # default lifetime of a console login


def configured_secret(
    secret_file: Path | str | None = None, env: Mapping[str, str] = os.environ
) -> bytes | None:
    """KOLLM_SECRET, else the file KOLLM_SECRET_FILE or `secret_file` names (private, like a
    key file), else None."""
    if env.get("KOLLM_SECRET"):
        return env["KOLLM_SECRET"].encode()
    path = env.get("KOLLM_SECRET_FILE") or secret_file
    if not path:
        return None
    check_private(Path(path), "secret file")
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise KeyFileError(f"{path}: cannot read the secret file ({err.strerror})") from err
    if not text:
        raise KeyFileError(f"{path}: the secret file is empty")
    return text.encode()


def shared_secret(configured: bytes | None, keys: list[str]) -> bytes:
    """The configured secret, else one derived from the keys, else a random one (warned)."""
    if configured:
        return configured
    if keys:
        material = "\n".join(sorted(set(keys))).encode()
        return hmac.new(b"kollm console secret", material, hashlib.sha256).digest()
    log.warning(
        "no KOLLM_SECRET, serve.secret_file or keys: the console's tokens are this process's"
        " own, so replicas refuse each other's"
    )
    return secrets.token_bytes(32)


class Sessions:
    """Signs and checks login tokens and form tokens for `keys` with `secret`."""

    def __init__(self, secret: bytes, keys: list[str], ttl_s: float = SESSION_S) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self._by_kid = {self._kid(k): k for k in keys}

    def sign(self, purpose: str, value: str) -> str:
        """An HMAC of `value` for one `purpose` (a token of one purpose passes for no other)."""
        message = f"{purpose}\0{value}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _kid(self, key: str) -> str:
        return self.sign("kid", key)[:32]

    def issue(self, key: str, now: float | None = None) -> str:
        """A login token for `key`, valid for `ttl_s`."""
        expiry = int((now if now is not None else time.time()) + self.ttl_s)
        body = f"{self._kid(key)}.{expiry}"
        return f"{body}.{self.sign('session', body)}"

    def key_of(self, token: str, now: float | None = None) -> str:
        """The key a login token stands for; "" when it is forged, expired or its key gone."""
        kid, _, rest = token.partition(".")
        expiry, _, signature = rest.partition(".")
        body = f"{kid}.{expiry}"
        if not hmac.compare_digest(signature.encode(), self.sign("session", body).encode()):
            return ""
        if not expiry.isdigit() or int(expiry) < (now if now is not None else time.time()):
            return ""
        return self._by_kid.get(kid, "")

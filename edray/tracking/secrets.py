"""Keep credentials out of MLflow.

Everything edray logs (params, tags, the spec and best-config artifacts) passes through
:func:`redact`: a tracking store is shared and read by many, and a spec may carry a
token (an S3 key, a database URL with a password). Values are masked, not dropped, so
that a reader still sees that the key was set.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MASK", "is_secret_key", "redact", "redact_text"]

MASK = "***"

# Whole words of a key (split at non-letters and camelCase) that name a secret.
_SECRET_WORDS = frozenset({
    "key", "keys", "token", "tokens", "secret", "secrets", "password", "passwords", "passwd", "pwd", "passphrase",
    "credential", "credentials", "auth", "authorization", "apikey", "accesskey", "secretkey", "privatekey",
    "sessiontoken", "accesstoken", "authtoken", "bearer", "cookie",
})
# Parts that name a secret even inside a longer word (``DBPASSWORD``, ``mysecretvalue``).
_SECRET_PARTS = ("password", "passwd", "secret", "credential", "apikey", "token")
# ``scheme://user:password@host``: the password of a URL (a database or server URI).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(?P<pw>[^@\s/]+)(?P<at>@)")
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\b|[^A-Za-z]|$)|[A-Z]?[a-z]+|[A-Z]+")


def is_secret_key(key: object) -> bool:
    """True for keys such as ``api_key``, ``AWS_SECRET_ACCESS_KEY``, ``apiKey``, ``db_password``.

    Only the last component of a dotted path counts (``tracking.uri`` is not a secret,
    ``storage.password`` is). ``keyword`` or ``monkey`` are not secrets: ``key`` must be
    a whole word.
    """
    if not isinstance(key, str) or not key:
        return False
    last = key.rsplit(".", 1)[-1]
    last = re.sub(r"\[\d+\]$", "", last)
    lower = last.lower()
    if any(part in lower for part in _SECRET_PARTS):
        return True
    words = [w.lower() for w in _WORD.findall(last)]
    return any(w in _SECRET_WORDS for w in words)


def redact_text(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` masked."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['at']}", text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, dict):
        return redact(value)
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact(mapping: dict) -> dict:
    """A copy of ``mapping`` with secrets masked, recursively.

    A value whose key looks like a secret (see :func:`is_secret_key`) becomes ``"***"``
    (an empty or ``None`` value stays as it is: it shows the secret was not set). A
    password inside a URL value is masked wherever the URL appears. The input is not
    modified.
    """
    out: dict = {}
    for key, value in mapping.items():
        if is_secret_key(key) and value not in (None, ""):
            out[key] = MASK
        else:
            out[key] = _redact_value(value)
    return out

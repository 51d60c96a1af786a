"""No credentials in a cluster file: it is copied to every node, and into git.

Shared by the launcher and the KubeRay checks: keys that name a secret, literal secret
values in commands and environments, AWS access key ids and private keys anywhere,
comments included.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from edray.clusters.problems import Part, error_at, walk
from edray.errors import EdrayError

__all__ = ["check_secrets", "check_secrets_in_text"]

_SECRET_NAMES = {
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
    "mlflow_tracking_password", "mlflow_tracking_token",
}
_SECRET_FIX = "delete it (rotate it if it was real); nodes get credentials from their instance role / service account"
_ACCESS_KEY_RE = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
_PRIVATE_KEY_RE = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_SECRET_WORDS = "(" + "|".join(sorted(_SECRET_NAMES)) + ")"
_SECRET_ASSIGN_RE = re.compile(
    rf"(?i)(?:\b{_SECRET_WORDS}\s*[=:]\s*|\bconfigure\s+set\s+{_SECRET_WORDS}\s+)[\"']?([^\s\"'$;|&)]+)"
)


def check_secrets(doc: Any, src: str, prefix: tuple[Part, ...] = ()) -> None:
    """Credentials never belong in a cluster file: it is copied to every node and into git."""
    for parts, key, value in walk(doc, prefix):
        if isinstance(key, str) and _norm(key) in _SECRET_NAMES and value not in (None, ""):
            raise error_at(src, parts, f"{key} in a cluster file", _SECRET_FIX)
        if isinstance(key, str) and key == "gcp_credentials" and value:
            raise error_at(src, parts, "inline GCP credentials in a cluster file",
                           "delete them; attach a service account to the VMs (serviceAccounts) or use gcloud's ADC")
        if isinstance(value, dict) and _norm(str(value.get("name", ""))) in _SECRET_NAMES and value.get("value"):
            raise error_at(src, (*parts, "value"), f"{value['name']} given as a literal value",
                           "use valueFrom.secretKeyRef, or better a cloud role (IRSA / Workload Identity)")
        if isinstance(value, str):
            _check_secret_text(value, src, parts)


def _check_secret_text(text: str, src: str, parts: Sequence[Part]) -> None:
    if _ACCESS_KEY_RE.search(text):
        raise error_at(src, parts, "an AWS access key id (AKIA…/ASIA…) in a cluster file", _SECRET_FIX)
    if _PRIVATE_KEY_RE.search(text):
        raise error_at(src, parts, "a private key in a cluster file",
                       "delete it; name a key file instead (auth.ssh_private_key: ~/.ssh/KEY.pem)")
    match = _SECRET_ASSIGN_RE.search(text)
    if match:
        raise error_at(src, parts, f"{match.group(1) or match.group(2)} set to a literal value", _SECRET_FIX)


def check_secrets_in_text(text: str, src: str) -> None:
    """Comments are not parsed but still leak: scan the raw lines too."""
    for number, line in enumerate(text.splitlines(), start=1):
        if _ACCESS_KEY_RE.search(line) or _PRIVATE_KEY_RE.search(line):
            raise EdrayError(f"{src}: line {number}", "an AWS access key id or private key in the file", _SECRET_FIX)


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")



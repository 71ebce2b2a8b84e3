"""The key file: one key a line, with an optional role and name (`KEY [viewer|admin] [NAME]`,
whitespace between them; `#` starts a comment). A viewer calls the API and views the console;
an admin also promotes, rolls back, reviews and loads adapters. The name is what the audit log
records; a key without one is recorded by a hash of it, never the key itself."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("viewer", "admin")


class KeyFileError(ValueError):
    """A key file line that cannot be read, named by file and line."""


@dataclass
class Keys:
    api_keys: list[str] = field(default_factory=list)
    admin_keys: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)


def read_key_file(path: Path) -> Keys:
    keys = Keys()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise KeyFileError(f"{path}: cannot read the key file ({err.strerror})") from err
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        key, role = fields[0], fields[1] if len(fields) > 1 else "viewer"
        if role not in ROLES:
            raise KeyFileError(f"{path}:{number}: role {role!r} is not one of {', '.join(ROLES)}")
        if key in keys.api_keys:
            raise KeyFileError(f"{path}:{number}: the key appears twice")
        keys.api_keys.append(key)
        if role == "admin":
            keys.admin_keys.append(key)
        if len(fields) > 2:
            keys.names[key] = " ".join(fields[2:])
    return keys


def key_name(key: str, names: dict[str, str] | None = None) -> str:
    """The name the audit log records for `key`: its name in the key file, else a hash."""
    if names and key in names:
        return names[key]
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8] if key else "anonymous"

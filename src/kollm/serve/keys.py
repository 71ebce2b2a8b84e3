"""The key file: one key a line, with an optional role and name (`KEY [viewer|admin] [NAME]`,
whitespace between them; `#` starts a comment). A viewer calls the API and views the console;
an admin also promotes, rolls back, reviews and loads adapters. The name is what the audit log
records; a key without one is recorded by a hash of it, never the key itself.

A key file others can read is refused (`chmod 600` fixes it); one group-readable file is
accepted: a file another user (root) made readable to one of this process's groups, as a
Kubernetes Secret volume under the pod's fsGroup is (mode 0440, root:FSGROUP)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
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


def check_private(path: Path, what: str = "key file") -> None:
    """KeyFileError unless only its owner (or, for a file another user provisioned, one of
    this process's groups) may read `path`."""
    try:
        st = Path(path).stat()
    except OSError as err:
        raise KeyFileError(f"{path}: cannot read the {what} ({err.strerror})") from err
    loose = stat.S_IMODE(st.st_mode) & 0o077
    ours = st.st_gid in {os.getgid(), *os.getgroups()}
    provisioned = st.st_uid != os.getuid() and loose == 0o040 and ours
    if loose and not provisioned:
        raise KeyFileError(
            f"{path}: others can read the {what} (mode {stat.S_IMODE(st.st_mode):04o});"
            f" make it the owner's alone: chmod 600 {path}"
        )


def read_key_file(path: Path) -> Keys:
    keys = Keys()
    check_private(path)
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


def gather_keys(
    api_key: str | None = None,
    api_key_file: Path | str | None = None,
    admin_key: str | None = None,
    env: Mapping[str, str] = os.environ,
) -> Keys:
    """The keys of a server: the given key, key file and admin key, and the environment's
    KOLLM_API_KEY, KOLLM_API_KEY_FILE and KOLLM_ADMIN_KEY (a unit's Secret)."""
    files = [Path(p) for p in (api_key_file, env.get("KOLLM_API_KEY_FILE")) if p]
    keys = Keys()
    for path in dict.fromkeys(files):  # the same file named twice is read once
        read = read_key_file(path)
        keys.api_keys += [k for k in read.api_keys if k not in keys.api_keys]
        keys.admin_keys += [k for k in read.admin_keys if k not in keys.admin_keys]
        keys.names.update(read.names)
    api = [k for k in (api_key, env.get("KOLLM_API_KEY")) if k]
    admin = [k for k in (admin_key, env.get("KOLLM_ADMIN_KEY")) if k]
    keys.api_keys = api + keys.api_keys
    keys.admin_keys = admin + keys.admin_keys
    return keys

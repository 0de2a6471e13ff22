"""The result cache's Redis credentials: a random password for the gateway and the ACL file
that Redis loads (`redis-server --aclfile`), written by `splitgpt redis-secret DIR`.

compose's model-init runs it into a volume that Redis and the gateway mount; on Kubernetes
its two files become the Secret `splitgpt-redis` (k8s/security/redis-secret.yaml). The ACL
file holds only the password's SHA-256, so the Redis container never sees the password, and
it turns the default user off: a client without the password can run no command at all.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
from pathlib import Path

# The gateway's user: its own key space (api.cache.KEY_PREFIX), a read and a write, nothing
# else (no KEYS, FLUSHALL, CONFIG, scripting or pub/sub).
CACHE_USER = "splitgpt"
CACHE_RULES = ("~splitgpt:*", "resetchannels", "-@all", "+@connection", "+get", "+set")

PASSWORD_FILE = "password"
ACL_FILE = "users.acl"


def acl_text(password: str) -> str:
    """Redis ACL file lines: the default user off, CACHE_USER on with the password's hash."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return f"user default off\nuser {CACHE_USER} on #{digest} {' '.join(CACHE_RULES)}\n"


def _write(path: Path, text: str, mode: int) -> None:
    # Written beside and renamed: a Redis or gateway starting meanwhile reads the old file
    # or the new one, never half of one.
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(partial, mode)  # the umask may have narrowed it
    partial.replace(path)


def write_secret(directory: Path) -> tuple[Path, Path]:
    """The password file (0600, kept when it exists: rerunning keeps a running stack's
    password) and the ACL file made from it (0644: Redis runs as another user)."""
    directory.mkdir(parents=True, exist_ok=True)
    password_path, acl_path = directory / PASSWORD_FILE, directory / ACL_FILE
    if password_path.exists():
        password = password_path.read_text().strip()
        if not password:
            raise SystemExit(f"{password_path} is empty: remove it to make a new password")
    else:
        password = secrets.token_urlsafe(32)
        _write(password_path, password + "\n", 0o600)
    _write(acl_path, acl_text(password), 0o644)
    return password_path, acl_path


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(
        prog="splitgpt redis-secret",
        description="Write the result cache's Redis password (DIR/password, made once and then kept) and the "
        "ACL file Redis loads (DIR/users.acl: the default user off, the gateway's user with the password's hash).",
    )
    p.add_argument("directory", type=Path)
    args = p.parse_args(argv)
    password_path, acl_path = write_secret(args.directory)
    print(f"Redis credentials: {password_path} (the gateway's SPLITGPT_API_REDIS_PASSWORD_FILE, user "
          f"{CACHE_USER!r}) and {acl_path} (redis-server --aclfile)")  # fmt: skip

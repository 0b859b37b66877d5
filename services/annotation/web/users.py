"""The people who label: names, roles and sign-in tokens, kept as one JSON object (`users.json`) in the annotation
bucket and changed only by compare-and-swap, so two admins (or two replicas) adding users at once both land.

A token is 32 random bytes (`secrets.token_urlsafe`), shown once to whoever adds the user and never stored: the
object keeps its sha256 (a token that random needs no slow hash; a dictionary of guesses cannot reach it), and a
presented token is compared against every stored digest in constant time. Roles nest: admin implies reviewer,
which implies annotator. Nothing here logs a token.

    users = UserStore(client, "vigil-annotation")
    token = users.add("ana", "annotator")     # print it once; only its digest is kept
    users.verify(token)                       # User(name="ana", role="annotator", roles=frozenset({"annotator"}))
    users.remove("ana")

A service keeps one UserStore and reads the object again at most every `reload_s` (on the next `verify` after
that), so a user added or removed by the CLI is seen by every replica within that time."""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from minio import Minio

from libs.common.logs import get_logger
from libs.common.objectstore import RefConflict, compare_and_swap_ref, read_ref

log = get_logger(__name__)

USERS_KEY = "users.json"
ROLES = ("annotator", "reviewer", "admin")
# What each role grants, the roles below it included.
GRANTS: dict[str, frozenset[str]] = {role: frozenset(ROLES[: i + 1]) for i, role in enumerate(ROLES)}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
CAS_ATTEMPTS = 20


class UnknownUser(KeyError):
    pass


class UserExists(ValueError):
    pass


@dataclass(frozen=True)
class User:
    name: str
    role: str
    roles: frozenset[str]

    def can(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class UserRecord:
    """A user as listed: everything but the token digest."""
    name: str
    role: str
    created_at: str
    created_by: str


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"a user name is 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or "
                         f"digit: {name!r}")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    return role


class UserStore:
    def __init__(self, client: Minio, bucket: str, key: str = USERS_KEY, reload_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.reload_s = reload_s
        self._clock = clock
        self._lock = threading.Lock()
        self._users: dict[str, dict] = {}
        self._loaded_at: float | None = None

    # --- reading ---

    def _read(self) -> tuple[dict[str, dict], str | None]:
        found = read_ref(self.client, self.bucket, self.key)
        if found is None:
            return {}, None
        content, etag = found
        document = json.loads(content)
        users = document.get("users", {}) if isinstance(document, dict) else {}
        return {name: entry for name, entry in users.items() if isinstance(entry, dict)}, etag

    def reload(self) -> None:
        """Reads the object now."""
        users, _ = self._read()
        with self._lock:
            self._users, self._loaded_at = users, self._clock()

    def _current(self) -> dict[str, dict]:
        """The users as last read, read again when older than reload_s. A failed read keeps the previous copy
        (an object store that is briefly away must not sign everybody out)."""
        with self._lock:
            fresh = self._loaded_at is not None and self._clock() - self._loaded_at < self.reload_s
            users = self._users
        if fresh:
            return users
        try:
            self.reload()
        except Exception as exc:  # noqa: BLE001 (any S3 or JSON failure: keep serving what was known)
            if self._loaded_at is None:
                raise
            log.warning("users could not be read again; keeping the previous copy", error=str(exc))
            with self._lock:
                self._loaded_at = self._clock()
        with self._lock:
            return self._users

    def list(self) -> list[UserRecord]:
        users, _ = self._read()
        return [UserRecord(name=name, role=entry.get("role", ""), created_at=entry.get("created_at", ""),
                           created_by=entry.get("created_by", ""))
                for name, entry in sorted(users.items())]

    def user(self, name: str) -> User | None:
        """The user named, as last read (without checking any token)."""
        entry = self._current().get(name)
        if entry is None or entry.get("role") not in GRANTS:
            return None
        return User(name=name, role=entry["role"], roles=GRANTS[entry["role"]])

    def verify(self, token: str, name: str | None = None) -> User | None:
        """The user whose token this is (and who is called `name`, when given), or None. Every stored digest is
        compared, in constant time, whichever matches."""
        if not token or not isinstance(token, str):
            return None
        presented = token_digest(token).encode()
        found: tuple[str, dict] | None = None
        for user_name, entry in self._current().items():
            if hmac.compare_digest(presented, str(entry.get("token_sha256", "")).encode()):
                found = (user_name, entry)
        if found is None or (name is not None and not hmac.compare_digest(found[0].encode(), name.encode())):
            return None
        user_name, entry = found
        if entry.get("role") not in GRANTS:
            return None
        return User(name=user_name, role=entry["role"], roles=GRANTS[entry["role"]])

    def holds(self, name: str, digest: str) -> bool:
        """Whether `name` still signs in with the token whose digest is `digest` (a session stays valid only as
        long as its user is neither removed nor given a new token)."""
        entry = self._current().get(name)
        return entry is not None and hmac.compare_digest(str(entry.get("token_sha256", "")).encode(),
                                                         digest.encode())

    # --- changing ---

    def _update(self, change: Callable[[dict[str, dict]], None]) -> None:
        """Applies `change` to the users as stored, and writes them back only if nobody wrote in between
        (else reads again and re-applies)."""
        for _ in range(CAS_ATTEMPTS):
            users, etag = self._read()
            change(users)
            content = json.dumps({"version": 1, "users": users}, indent=1, sort_keys=True).encode()
            try:
                compare_and_swap_ref(self.client, self.bucket, self.key, content, etag)
            except RefConflict:
                time.sleep(secrets.randbelow(50) / 1000)
                continue
            with self._lock:
                self._users, self._loaded_at = users, self._clock()
            return
        raise RuntimeError(f"s3://{self.bucket}/{self.key} kept changing: gave up after {CAS_ATTEMPTS} attempts")

    def add(self, name: str, role: str, replace: bool = False, by: str = "") -> str:
        """Adds `name` with `role` and returns their new token (shown once: only its digest is stored). An
        existing name raises UserExists unless `replace`, which gives them the role and a new token (the old
        one stops working)."""
        check_name(name)
        check_role(role)
        token = secrets.token_urlsafe(32)
        entry = {"role": role, "token_sha256": token_digest(token),
                 "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "created_by": by}

        def change(users: dict[str, dict]) -> None:
            if name in users and not replace:
                raise UserExists(f"user {name!r} exists (replace it to issue a new token)")
            users[name] = entry

        self._update(change)
        log.info("annotation user added", user=name, role=role, replaced=replace)
        return token

    def remove(self, name: str) -> None:
        """Removes `name`: their token stops working (and their sessions end) within reload_s everywhere."""
        def change(users: dict[str, dict]) -> None:
            if name not in users:
                raise UnknownUser(name)
            del users[name]

        self._update(change)
        log.info("annotation user removed", user=name)

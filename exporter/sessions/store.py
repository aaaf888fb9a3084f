"""The state store: one SQLite file (the standard library's sqlite3) in WAL mode.

It holds each device's ledger state (open session, derived counters, last values seen) and every
session recorded. The exporter writes it from one worker thread, in one transaction per flush
(at least every second): the file is always the state after some poll, so a `kill -9` loses at
most the last second, which the next poll redoes from the device's own counters. Sessions are
keyed by (device, start), so writing one again updates it: none is duplicated.

The schema is versioned (`schema_version`); `MIGRATIONS[n]` takes a file from version n to
n + 1, so a newer exporter opens an older file. A file that is not a database, is damaged, is
from a newer exporter or cannot be written is a `StoreError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ledger import Session

DEFAULT_DIR = "/var/lib/lektrico-exporter"
FILE_NAME = "state.db"
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE devices (device TEXT PRIMARY KEY, state TEXT NOT NULL)",
        "CREATE TABLE sessions ("
        " device TEXT NOT NULL, start REAL NOT NULL, end REAL, open INTEGER NOT NULL,"
        " data TEXT NOT NULL, PRIMARY KEY (device, start))",
        "CREATE INDEX sessions_by_time ON sessions (start, end)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The state database cannot be used; the text is one line naming the file."""


def default_path(environ: dict[str, str] | None = None) -> str:
    """Where the store goes without `state.path`: systemd's $STATE_DIRECTORY, else
    /var/lib/lektrico-exporter when it exists and is writable, else $XDG_STATE_HOME (or
    ~/.local/state)/lektrico-exporter."""
    env = os.environ if environ is None else environ
    if env.get("STATE_DIRECTORY"):
        return str(Path(env["STATE_DIRECTORY"].split(":")[0]) / FILE_NAME)
    if os.access(DEFAULT_DIR, os.W_OK | os.X_OK):
        return str(Path(DEFAULT_DIR) / FILE_NAME)
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "lektrico-exporter" / FILE_NAME)


def temporary_path() -> str:
    """A store for `--demo`, gone with the temporary directory."""
    return str(Path(tempfile.mkdtemp(prefix="lektrico-demo-")) / FILE_NAME)


@dataclass(frozen=True)
class Batch:
    """One flush, written in one transaction: device states (JSON text) and session rows
    (device, start, end, open, JSON text; `session_row`)."""

    states: Sequence[tuple[str, str]]
    sessions: Sequence[tuple[str, float, float | None, int, str]]


def session_row(s: Session) -> tuple[str, float, float | None, int, str]:
    return (s.device, s.start, s.end, int(s.open), json.dumps(s.as_dict()))


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _fail(self, what: str, exc: object) -> StoreError:
        return StoreError(f"state database {self.path}: {what}: {exc}")

    def open(self) -> None:
        """Open (creating it and its directory if need be), migrate and prove it writable."""
        path = Path(self.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._fail("cannot create its directory", exc.strerror or exc) from None
        try:
            db = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._fail("cannot open", exc) from None
        try:
            self._prepare(db)
        except sqlite3.DatabaseError as exc:
            db.close()
            text = str(exc)
            if "readonly" in text or "unable to open" in text or "disk I/O" in text:
                raise self._fail("not writable", exc) from None
            raise self._fail(
                "damaged or not a database; move it away to start afresh", exc
            ) from None
        self._db = db

    def open_readonly(self) -> None:
        """Open for reading only (the sessions command): no schema change, no write."""
        file = Path(self.path)
        if not file.exists():
            raise StoreError(f"state database {self.path}: not found (has the exporter run?)")
        try:
            db = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
            row = db.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.Error as exc:
            raise self._fail("damaged or not a database", exc) from None
        if row is None or row[0] != SCHEMA_VERSION:
            db.close()
            found = row[0] if row else "none"
            raise StoreError(
                f"state database {self.path}: schema version {found}, this exporter reads "
                f"{SCHEMA_VERSION} (start the exporter once to migrate it)"
            )
        self._db = db

    def _prepare(self, db: sqlite3.Connection) -> None:
        check = db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check: {check[0] if check else 'no answer'}")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise sqlite3.DatabaseError("unable to open the WAL journal (readonly directory?)")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at each checkpoint, never torn
        db.execute("BEGIN IMMEDIATE")  # a write lock: fails at once on a read-only file
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {version} is newer than this exporter's {SCHEMA_VERSION}"
                )
            for steps in MIGRATIONS[version:]:
                for statement in steps:
                    db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('opened', datetime('now'))")
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"state database {self.path}: not open")
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def states(self) -> list[tuple[str, dict[str, Any]]]:
        rows = self.db.execute("SELECT device, state FROM devices ORDER BY device").fetchall()
        return [(device, json.loads(state)) for device, state in rows]

    def write(self, batch: Batch) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO devices VALUES (?, ?)", batch.states)
            db.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?)", batch.sessions)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def sessions(
        self,
        devices: Iterable[str] = (),
        since: float | None = None,
        until: float | None = None,
    ) -> list[Session]:
        """Sessions overlapping [since, until), oldest first; open ones overlap until now."""
        query = "SELECT data FROM sessions WHERE 1=1"
        args: list[Any] = []
        names = list(devices)
        if names:
            query += f" AND device IN ({','.join('?' * len(names))})"
            args += names
        if since is not None:
            query += " AND (open = 1 OR end >= ?)"
            args.append(since)
        if until is not None:
            query += " AND start < ?"
            args.append(until)
        query += " ORDER BY start, device"
        return [Session.from_dict(json.loads(row[0])) for row in self.db.execute(query, args)]


def check(path: str) -> None:
    """For --check-config: StoreError if the store at `path` could not be used, changing
    nothing (a check run as another user must not leave a file the service cannot write)."""
    file = Path(path)
    store = Store(path)
    if not file.exists():
        parent = file.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            raise store._fail("not writable", f"cannot create it in {parent}")
        return
    for what in (file, file.parent):
        if not os.access(what, os.W_OK):
            raise store._fail("not writable", f"{what} is read-only for this user")
    try:
        db = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise store._fail("cannot open", exc) from None
    try:
        check = db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check: {check[0] if check else 'no answer'}")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        if row is not None and row[0] > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {row[0]} is newer than this exporter's {SCHEMA_VERSION}"
            )
    except sqlite3.DatabaseError as exc:
        raise store._fail("damaged or not a database; move it away to start afresh", exc) from None
    finally:
        db.close()

"""The state store: schema and migrations, round trips, and a database that cannot be used."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.sessions.ledger import Session
from exporter.sessions.store import (
    SCHEMA_VERSION,
    Batch,
    Store,
    StoreError,
    default_path,
    session_row,
)
from harness.processes import free_port
from harness.servers import unavailable

ROOT = Path(__file__).resolve().parents[1]


def session(device: str = "garage", start: float = 1_790_000_000.0, **kw: object) -> Session:
    return Session(device=device, model="1p7k", labels={"site": "home"}, start=start, **kw)  # type: ignore[arg-type]


def test_states_and_sessions_survive_a_reopen(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "state.db"))
    store.open()
    store.write(Batch([("garage", '{"a": 1}')], [session_row(session(energy_wh=5.0))]))
    store.write(Batch([], [session_row(session(energy_wh=7.0, open=False, end=1_790_000_600.0))]))
    store.close()
    again = Store(str(tmp_path / "state.db"))
    again.open()

    assert again.states() == [("garage", {"a": 1})]
    [got] = again.sessions()
    assert (got.energy_wh, got.open, got.labels) == (7.0, False, {"site": "home"})
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert again.db.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_sessions_are_filtered_by_device_and_time(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "state.db"))
    store.open()
    store.write(
        Batch(
            [],
            [
                session_row(session("a", 1000.0, end=2000.0, open=False)),
                session_row(session("b", 3000.0, end=4000.0, open=False)),
                session_row(session("a", 5000.0)),
            ],
        )
    )

    assert [(s.device, s.start) for s in store.sessions(devices=["a"])] == [
        ("a", 1000.0),
        ("a", 5000.0),
    ]
    assert [s.start for s in store.sessions(since=2500.0)] == [3000.0, 5000.0]
    assert [s.start for s in store.sessions(until=2500.0)] == [1000.0]


def test_a_file_from_a_newer_exporter_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(str(path)).open()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")

    with pytest.raises(StoreError, match="newer than this exporter"):
        Store(str(path)).open()


def test_default_path_prefers_systemds_state_directory() -> None:
    assert default_path({"STATE_DIRECTORY": "/var/lib/x"}) == "/var/lib/x/state.db"
    got = default_path({"XDG_STATE_HOME": "/tmp/xdg"})
    assert got in ("/var/lib/lektrico-exporter/state.db", "/tmp/xdg/lektrico-exporter/state.db")


# ---- a database that cannot be used: one line, exit status 1 (2 from --check-config) -------


def exporter(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEKTRICO_NO_UVLOOP": "1"}
    return subprocess.run(
        [sys.executable, "-m", "exporter", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def config_for(tmp_path: Path, db: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"listen: 127.0.0.1:{free_port()}\nstate: {{path: '{db}'}}\n")
    return path


@pytest.fixture
def corrupt(tmp_path: Path) -> Path:
    db = tmp_path / "state.db"
    db.write_bytes(b"this is not an SQLite database, it was overwritten" * 100)
    return db


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    db = tmp_path / "locked" / "state.db"
    Store(str(db)).open()
    for extra in db.parent.glob("state.db-*"):
        extra.unlink()
    if os.geteuid() == 0:  # root writes through permissions: make the file immutable instead
        done = subprocess.run(["chattr", "+i", str(db)], capture_output=True, check=False)
        if done.returncode != 0:
            unavailable("cannot make a file unwritable for root here (chattr)")
    else:
        db.chmod(0o444)
        db.parent.chmod(0o555)
    yield db
    with contextlib.suppress(OSError):
        subprocess.run(["chattr", "-i", str(db)], capture_output=True, check=False)
        db.parent.chmod(0o755)


@pytest.mark.parametrize("broken", ["corrupt", "unwritable"])
def test_a_database_that_cannot_be_used_stops_the_exporter_with_one_line(
    broken: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db: Path = request.getfixturevalue(broken)
    config = config_for(tmp_path, db)

    done = exporter(config)

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(db) in lines[0]
    assert ("not writable" if broken == "unwritable" else "damaged or not a database") in lines[0]


@pytest.mark.parametrize("broken", ["corrupt", "unwritable"])
def test_check_config_catches_a_database_that_cannot_be_used(
    broken: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db: Path = request.getfixturevalue(broken)
    config = config_for(tmp_path, db)

    done = exporter(config, "--check-config")

    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert str(db) in done.stderr


def test_check_config_passes_with_a_good_or_a_new_database_and_changes_nothing(
    tmp_path: Path,
) -> None:
    good = tmp_path / "good" / "state.db"
    Store(str(good)).open()
    before = good.read_bytes()

    fresh = exporter(config_for(tmp_path, tmp_path / "new" / "state.db"), "--check-config")
    existing = exporter(config_for(tmp_path, good), "--check-config")

    assert fresh.returncode == 0, fresh.stderr
    assert existing.returncode == 0, existing.stderr
    assert not (tmp_path / "new").exists()
    assert good.read_bytes() == before

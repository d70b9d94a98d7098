"""Where the privacy budget ledger lives: one append-only table, SQLite or PostgreSQL.

Why a table of its own: the ledger used to be MLflow tags, and anyone who can write to
MLflow can delete a tag, which reset the dataset's budget. Here rows are only appended:

- SQLite, the embedded default (one file per user): triggers ABORT every UPDATE and
  DELETE. They stop tools and mistakes, not someone who can write the file itself (who
  can drop triggers); a shared ledger belongs in PostgreSQL.
- PostgreSQL, on a cluster: runs connect as a role that has SELECT and INSERT on the table
  and USAGE on its sequence, nothing else, so UPDATE, DELETE and TRUNCATE fail with a
  permission error; the same refusing triggers stop the table's owner too. The database
  admin creates the table, the triggers and the role once with
  :func:`install_postgres_ledger` (``python -m dpsynth.privacy.ledger_store
  install-postgres --admin-uri ...``). A run refuses to use a role that could rewrite it.

A charge is one transaction that reads the dataset's rows, checks the budget and appends
the charge only if it fits: SQLite takes the database's write lock first (``BEGIN
IMMEDIATE``), PostgreSQL a transaction-scoped advisory lock on the dataset id
(``pg_advisory_xact_lock``, which needs no table privilege). Two runs that start together
are checked one after the other, so no charge ever has to be withdrawn; none ever is.

Rows, by ``kind``:

- ``charge``: a run's :class:`~dpsynth.privacy.ledger.LedgerEntry` (JSON), whether the run
  is private, when.
- ``run``: links a charge to the MLflow run created after it (run id, tracking store).
  MLflow names the run only once the charge is made and rows are never updated, so the
  link is a second row.
- ``nonprivate``: the dataset was declared non-private (see :mod:`dpsynth.privacy.ledger`).
- ``limit``: the dataset's lifetime (epsilon, delta), JSON: recorded with its first charge,
  or set by the data owner (``dpsynth budget set``, :meth:`LedgerStore.set_limit`). The
  latest holds. A limit is an appended row like every other, never an UPDATE, so the
  runs' PostgreSQL role needs nothing beyond INSERT and SELECT.
- ``identity``: a training split's content digest (``entry``) and the ledger id it was
  first charged under (``dataset_id``): :mod:`dpsynth.privacy.identity`. Inside the
  private boundary; never shown.

Where: ``privacy.ledger_uri``, else ``$DPSYNTH_LEDGER_URI``, else the per-user SQLite file
``ledger.sqlite`` in the dpsynth home, beside the embedded MLflow store: ``$DPSYNTH_HOME``,
else ``$XDG_DATA_HOME/dpsynth``, else ``~/.local/share/dpsynth``. Never under ``--out``: a
budget that a new output directory resets is no budget (``--out`` keeps a copy of the
run's charge, ``privacy_ledger.json``).

The MLflow tags stay as a mirror of the ledger; :func:`mirror_problems` says where the
mirror disagrees with the store, which is the truth.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import math
import os
import sqlite3
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from dpsynth.privacy.ledger import (
    BudgetCheck,
    BudgetExceededError,
    LedgerEntry,
    NonPrivateMark,
    RecordedLimit,
    check_budget,
)
from dpsynth.privacy.validation import validate_epsilon_delta
from dpsynth.stores import TrackingUnavailableError, dpsynth_home

LEDGER_URI_ENV = "DPSYNTH_LEDGER_URI"
TABLE = "dpsynth_ledger"
#: The PostgreSQL role the runs connect as (INSERT and SELECT only).
DEFAULT_ROLE = "dpsynth_ledger"
#: How long a charge waits for other runs' charges on the same ledger (seconds).
LOCK_TIMEOUT_S = 300
PG_CONNECT_TIMEOUT_S = 30
_PG_TRIGGERS = (f"{TABLE}_no_update_delete", f"{TABLE}_no_truncate")
#: What a row may be (see the module docstring).
KINDS = ("charge", "run", "nonprivate", "limit", "identity")
_KINDS_SQL = ", ".join(f"'{k}'" for k in KINDS)


class LedgerUnavailableError(TrackingUnavailableError):
    """The ledger store cannot be opened, read or written before any data is read.

    A :class:`TrackingUnavailableError` so that every caller that refuses to start without
    its tracking store refuses alike without its ledger: the budget cannot be checked.
    """


class LedgerMirrorWarning(UserWarning):
    """The MLflow mirror of the ledger disagrees with the ledger store."""


# ----------------------------------------------------------------------------- where
def default_ledger_uri() -> str:
    """``$DPSYNTH_LEDGER_URI``, else the per-user SQLite file ``ledger.sqlite`` in the
    dpsynth home (:func:`dpsynth.stores.dpsynth_home`: ``$DPSYNTH_HOME``, else
    ``$XDG_DATA_HOME/dpsynth``, else ``~/.local/share/dpsynth``)."""
    if os.environ.get(LEDGER_URI_ENV):
        return os.environ[LEDGER_URI_ENV]
    return f"sqlite:///{dpsynth_home() / 'ledger.sqlite'}"


def resolve_ledger_uri(configured: str | None) -> str:
    """``privacy.ledger_uri`` if set, else :func:`default_ledger_uri`."""
    return configured or default_ledger_uri()


def ledger_uri_problem(uri: str, *, allow_password: bool = True) -> str | None:
    """What is wrong with ``uri`` as a ledger URI, or None.

    ``allow_password=False`` for a URI in a config file: the config is written to --out
    and logged to MLflow, so a password there would leak (PGPASSWORD, ~/.pgpass or
    $DPSYNTH_LEDGER_URI carry it instead).
    """
    parts = urlsplit(uri)
    if parts.scheme == "sqlite":
        if not uri.startswith("sqlite:////"):
            # A relative path would be another ledger in every working directory.
            return f"{uri!r}: a SQLite ledger needs an absolute path (sqlite:////abs/path)"
        return None
    if parts.scheme in ("postgresql", "postgres"):
        if not allow_password and (parts.password is not None
                                   or "password" in parse_qs(parts.query)):
            return ("a ledger URI in the configuration must not hold a password (the "
                    "configuration is logged): use PGPASSWORD, ~/.pgpass or "
                    f"${LEDGER_URI_ENV}")
        return None
    return (f"{public_uri(uri)!r}: expected sqlite:////ABSOLUTE/PATH or "
            "postgresql://ROLE@HOST:PORT/DATABASE")


def public_uri(uri: str) -> str:
    """``uri`` without its password: for messages, ledger rows and logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}@{host}"))


# ------------------------------------------------------------------------- records
@dataclass(frozen=True)
class LedgerHistory:
    """All that the ledger holds on one dataset, in the order it was appended."""

    dataset_id: str
    #: Every charge, with its charge id and, once linked, its MLflow run id.
    charges: tuple[LedgerEntry, ...] = ()
    #: charge id -> the tracking store (password-free URI) its MLflow run is in.
    tracking_uris: dict[str, str] = field(default_factory=dict)
    nonprivate: NonPrivateMark | None = None
    #: The lifetime limit recorded last (None: none recorded yet).
    limit: RecordedLimit | None = None


class LedgerOwnerError(ValueError):
    """An owner action on the ledger that cannot be done (e.g. un-marking a dataset)."""


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return str(value)


def _history(dataset_id: str, rows: Sequence[Sequence[Any]], where: str) -> LedgerHistory:
    """Rows ``(seq, kind, charge_id, run_id, entry, tracking_uri, recorded_at)``."""
    links: dict[str, tuple[str, str]] = {}
    for _, kind, charge_id, run_id, _, tracking_uri, _ in rows:
        if kind == "run":
            links.setdefault(charge_id, (run_id, tracking_uri or ""))
    charges: list[LedgerEntry] = []
    mark: NonPrivateMark | None = None
    limit: RecordedLimit | None = None
    seen: set[str] = set()
    for seq, kind, charge_id, _, entry, _, recorded_at in rows:
        run_id = links.get(charge_id, ("", ""))[0]
        try:
            if kind == "charge" and charge_id not in seen:  # a charge restored twice: once
                seen.add(charge_id)
                charges.append(LedgerEntry.from_json(entry, run_id, charge_id))
            elif kind == "limit":
                limit = RecordedLimit.from_json(entry, charge_id, _iso(recorded_at))
            elif kind == "nonprivate" and mark is None:
                mark = NonPrivateMark(run_id, charge_id, _iso(recorded_at),
                                      by_owner=bool(entry) and "owner" in entry)
        except (TypeError, ValueError, KeyError) as exc:
            # Fail closed: a charge or limit that cannot be read makes the budget unknown.
            raise LedgerUnavailableError(
                f"row {seq} of the privacy budget ledger at {where} cannot be read "
                f"({type(exc).__name__}: {exc}); the budget of {dataset_id!r} cannot "
                "be checked") from None
    return LedgerHistory(dataset_id, tuple(charges),
                         {cid: uri for cid, (_, uri) in links.items()}, mark, limit)


# --------------------------------------------------------------------------- stores
class LedgerStore(ABC):
    """An append-only ledger (open one with :func:`open_ledger`; one per thread)."""

    #: Where it is, without a password.
    uri: str
    _db_errors: tuple[type[BaseException], ...] = ()

    # What a backend provides: a transaction (exclusive per dataset when ``write``), the
    # dataset's rows in order, and one appended row.
    @abstractmethod
    def _transaction(self, dataset_id: str, write: bool) -> contextlib.AbstractContextManager:
        ...

    @abstractmethod
    def _select(self, dataset_id: str) -> list[tuple[Any, ...]]:
        ...

    @abstractmethod
    def _insert(self, kind: str, charge_id: str, dataset_id: str, recorded_at: datetime, *,
                run_id: str = "", entry: str | None = None, private: bool | None = None,
                tracking_uri: str | None = None) -> None:
        ...

    @abstractmethod
    def close(self) -> None:
        ...

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _failures(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._db_errors as exc:
            raise LedgerUnavailableError(
                f"cannot {what} the privacy budget ledger at {self.uri}: "
                f"{type(exc).__name__}: {str(exc).strip()[:300]}") from None

    def history(self, dataset_id: str) -> LedgerHistory:
        with self._failures("read"), self._transaction(dataset_id, write=False):
            return _history(dataset_id, self._select(dataset_id), self.uri)

    def entries(self, dataset_id: str) -> list[LedgerEntry]:
        """Every charge on ``dataset_id``, in order (with charge and run ids)."""
        return list(self.history(dataset_id).charges)

    def charge(self, entry: LedgerEntry, limit_epsilon: float, limit_delta: float, *,
               private: bool | None = None) -> BudgetCheck:
        """Check ``entry`` against the dataset's budget and append it only if it fits,
        atomically. The check's ``charge_id`` is set iff the charge was appended.

        ``private``: whether the run is private, for the record (default: whether the
        entry's releases are noisy; a fixed noise seed makes a noisy run not private).
        """
        with self._failures("charge"), self._transaction(entry.dataset_id, write=True):
            history = _history(entry.dataset_id, self._select(entry.dataset_id), self.uri)
            check = check_budget(history.charges, entry, limit_epsilon, limit_delta,
                                 nonprivate=history.nonprivate, recorded=history.limit)
            if not check.ok:
                return check  # nothing appended
            charge_id, now = uuid.uuid4().hex, datetime.now(UTC)
            self._insert("charge", charge_id, entry.dataset_id, now, entry=entry.to_json(),
                         private=entry.private if private is None else private)
            mark = check.nonprivate
            if mark is not None and mark.new:
                self._insert("nonprivate", charge_id, entry.dataset_id, now)
                mark = replace(mark, charge_id=charge_id, recorded_at=_iso(now))
            limit = check.recorded_limit
            if limit is not None and limit.new:
                # The dataset's first charge (or its first since limits were recorded):
                # its configured budget becomes the recorded limit.
                self._insert("limit", charge_id, entry.dataset_id, now, entry=limit.to_json())
                limit = replace(limit, entry_id=charge_id, recorded_at=_iso(now))
        return replace(check, charge_id=charge_id, nonprivate=mark, recorded_limit=limit)

    def set_limit(self, dataset_id: str, epsilon: float | None = None,
                  delta: float | None = None, *, nonprivate: bool = False) -> LedgerHistory:
        """The data owner's action: record ``dataset_id``'s lifetime (``epsilon``,
        ``delta``), or mark it non-private for good (``nonprivate``). Appended like a
        charge, never updated; the dataset's history afterwards is returned.

        Raises :class:`LedgerOwnerError` for a dataset already marked non-private (the
        marking cannot be taken back) and ValueError for an invalid budget."""
        with self._failures("write"), self._transaction(dataset_id, write=True):
            history = _history(dataset_id, self._select(dataset_id), self.uri)
            if history.nonprivate is not None:
                raise LedgerOwnerError(
                    f"dataset {dataset_id!r} is marked non-private (since "
                    f"{history.nonprivate.since()}): the marking holds for good, so no "
                    "lifetime budget can be set on it")
            now, entry_id = datetime.now(UTC), uuid.uuid4().hex
            if nonprivate:
                limit = RecordedLimit(math.inf, delta if delta is not None else (
                    history.limit.delta if history.limit else 1e-5), "owner")
                self._insert("limit", entry_id, dataset_id, now, entry=limit.to_json())
                self._insert("nonprivate", entry_id, dataset_id, now,
                             entry='{"by":"owner"}')
            else:
                if epsilon is None or delta is None:
                    raise ValueError("a lifetime budget needs both --epsilon and --delta "
                                     "(or --non-private)")
                epsilon, delta = validate_epsilon_delta(epsilon, delta)
                if math.isinf(epsilon):
                    raise ValueError("an infinite lifetime epsilon marks the dataset "
                                     "non-private: say so with --non-private")
                self._insert("limit", entry_id, dataset_id, now,
                             entry=RecordedLimit(epsilon, delta, "owner").to_json())
            return _history(dataset_id, self._select(dataset_id), self.uri)

    def identity(self, digest: str, default_id: str) -> str:
        """The ledger id that training content with ``digest`` was first charged under;
        if none, ``default_id``, recorded for it now (:mod:`dpsynth.privacy.identity`).
        The digest appears in no message."""
        with self._failures("read"), self._transaction(f"identity:{digest}", write=True):
            found = self._select_identity(digest)
            if found is not None:
                return found
            self._insert("identity", uuid.uuid4().hex, default_id, datetime.now(UTC),
                         entry=digest)
            return default_id

    def known_identity(self, digest: str) -> str | None:
        """The ledger id content with ``digest`` was first charged under, or None: a read,
        nothing recorded (a budget runway's look-up, with a read-only role)."""
        with self._failures("read"), self._transaction(f"identity:{digest}", write=False):
            return self._select_identity(digest)

    def _select_identity(self, digest: str) -> str | None:
        row = self._conn.execute(
            f"SELECT dataset_id FROM {TABLE} WHERE kind = 'identity' AND entry = "
            f"{self._placeholder} ORDER BY seq LIMIT 1", (digest,)).fetchone()
        return None if row is None else row[0]

    def restore_charges(self, dataset_id: str, mirror: Sequence[LedgerEntry],
                        tracking_uri: str) -> list[LedgerEntry]:
        """The data owner's repair of a lost ledger from its MLflow mirror: append every
        mirror charge (by its charge id) that the ledger lacks, with its run link. Returns
        the charges appended. A mirror entry without a charge id is appended under a new
        id. Only ever adds charges: the budget can only grow stricter."""
        restored = []
        with self._failures("write"), self._transaction(dataset_id, write=True):
            history = _history(dataset_id, self._select(dataset_id), self.uri)
            known = {c.charge_id for c in history.charges}
            for entry in mirror:
                if entry.dataset_id != dataset_id or (entry.charge_id
                                                     and entry.charge_id in known):
                    continue
                charge_id, now = entry.charge_id or uuid.uuid4().hex, datetime.now(UTC)
                known.add(charge_id)
                self._insert("charge", charge_id, dataset_id, now, entry=entry.to_json(),
                             private=entry.private)
                if entry.run_id:
                    self._insert("run", charge_id, dataset_id, now, run_id=entry.run_id,
                                 tracking_uri=public_uri(tracking_uri))
                restored.append(replace(entry, charge_id=charge_id))
        return restored

    def link_run(self, charge_id: str, dataset_id: str, run_id: str, tracking_uri: str
                 ) -> None:
        """Record which MLflow run (in which tracking store) a charge paid for."""
        with self._failures("write"), self._transaction(dataset_id, write=True):
            self._insert("run", charge_id, dataset_id, datetime.now(UTC), run_id=run_id,
                         tracking_uri=public_uri(tracking_uri))


_COLUMNS = "seq, kind, charge_id, run_id, entry, tracking_uri, recorded_at"
_INSERT = (f"INSERT INTO {TABLE} (kind, charge_id, dataset_id, run_id, entry, private, "
           "tracking_uri, recorded_at) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})")

_SQLITE_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ({_KINDS_SQL})),
        charge_id TEXT NOT NULL,
        dataset_id TEXT NOT NULL,
        run_id TEXT NOT NULL DEFAULT '',
        entry TEXT,
        private INTEGER,
        tracking_uri TEXT,
        recorded_at TEXT NOT NULL)""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_dataset ON {TABLE} (dataset_id, seq)",
    *(f"""CREATE TRIGGER IF NOT EXISTS {TABLE}_no_{op.lower()} BEFORE {op} ON {TABLE}
        BEGIN SELECT RAISE(ABORT, 'the privacy budget ledger is append-only: {op} refused');
        END""" for op in ("UPDATE", "DELETE")),
)


class SQLiteLedgerStore(LedgerStore):
    """The embedded ledger: one SQLite file (``BEGIN IMMEDIATE`` serialises charges)."""

    _db_errors = (sqlite3.Error, OSError)
    _placeholder = "?"

    def __init__(self, path: Path, uri: str) -> None:
        self.uri = public_uri(uri)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._conn = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_S, isolation_level=None)
        try:
            with self._transaction("", write=True):
                for statement in _SQLITE_SCHEMA:
                    self._conn.execute(statement)
                self._migrate_kinds()
            self.path.chmod(0o600)  # the user's budget record, not the machine's
        except BaseException:
            self._conn.close()
            raise

    def _migrate_kinds(self) -> None:
        """A ledger made before ``limit`` rows existed has a narrower CHECK on ``kind``,
        which SQLite cannot alter: copy its rows (seq included) into a table of the current
        schema, in the schema transaction, so that nothing is lost or half-done."""
        (sql,) = self._conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' "
                                    "AND name = ?", (TABLE,)).fetchone()
        if all(f"'{kind}'" in sql for kind in KINDS):
            return
        old = f"{TABLE}_before_limits"
        self._conn.execute(f"ALTER TABLE {TABLE} RENAME TO {old}")
        for statement in ("DROP INDEX IF EXISTS", "DROP TRIGGER IF EXISTS"):
            names = ([f"{TABLE}_dataset"] if "INDEX" in statement
                     else [f"{TABLE}_no_update", f"{TABLE}_no_delete"])
            for name in names:
                self._conn.execute(f"{statement} {name}")
        for statement in _SQLITE_SCHEMA:
            self._conn.execute(statement)
        columns = "seq, kind, charge_id, dataset_id, run_id, entry, private, tracking_uri, " \
                  "recorded_at"
        self._conn.execute(f"INSERT INTO {TABLE} ({columns}) SELECT {columns} FROM {old} "
                           "ORDER BY seq")
        self._conn.execute(f"DROP TABLE {old}")

    @contextlib.contextmanager
    def _transaction(self, dataset_id: str, write: bool) -> Iterator[None]:
        # IMMEDIATE takes the write lock before the read, so two charges cannot both read
        # the ledger before either appends (a deferred BEGIN would let them).
        self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _select(self, dataset_id: str) -> list[tuple[Any, ...]]:
        return self._conn.execute(
            f"SELECT {_COLUMNS} FROM {TABLE} WHERE dataset_id = ? ORDER BY seq",
            (dataset_id,)).fetchall()

    def _insert(self, kind: str, charge_id: str, dataset_id: str, recorded_at: datetime, *,
                run_id: str = "", entry: str | None = None, private: bool | None = None,
                tracking_uri: str | None = None) -> None:
        self._conn.execute(_INSERT.format(p="?"), (
            kind, charge_id, dataset_id, run_id, entry,
            None if private is None else int(private), tracking_uri, _iso(recorded_at)))

    def close(self) -> None:
        self._conn.close()


def _pg_lock_key(dataset_id: str) -> int:
    """A stable signed 64-bit advisory lock key per dataset id."""
    digest = hashlib.sha256(f"dpsynth.ledger:{dataset_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresLedgerStore(LedgerStore):
    """The cluster's ledger, reached as the restricted role (see the module docstring)."""

    _placeholder = "%s"

    def __init__(self, uri: str) -> None:
        import psycopg

        self.uri = public_uri(uri)
        self._db_errors = (psycopg.Error,)
        with self._failures("connect to"):
            self._conn = psycopg.connect(uri, autocommit=True,
                                         connect_timeout=PG_CONNECT_TIMEOUT_S)
        try:
            with self._failures("open"):
                # READ COMMITTED whatever the server's default: each statement then sees
                # what was committed before it, so the read after the advisory lock sees
                # every charge made while this one waited (REPEATABLE READ would not).
                self._conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
                self._conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
                self._check_restricted()
        except BaseException:
            self._conn.close()
            raise

    def _check_restricted(self) -> None:
        row = self._conn.execute(
            "SELECT current_user, to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()
        user, exists = row
        if not exists:
            raise LedgerUnavailableError(
                f"the privacy budget ledger at {self.uri} has no table {TABLE}: the database "
                "admin creates it and the runs' role once with "
                "`python -m dpsynth.privacy.ledger_store install-postgres` (see README)")
        can = self._conn.execute(
            "SELECT p FROM unnest(ARRAY['UPDATE', 'DELETE', 'TRUNCATE']) AS p "
            "WHERE has_table_privilege(%s, p)", (TABLE,)).fetchall()
        if can:
            raise LedgerUnavailableError(
                f"role {user!r} may {'/'.join(p for (p,) in can)} the privacy budget ledger "
                f"at {self.uri}: runs must connect as the restricted role made by "
                f"install_postgres_ledger (default {DEFAULT_ROLE!r}: INSERT and SELECT "
                "only), so that no run can rewrite the ledger")
        (triggers,) = self._conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s) "
            "AND tgname = ANY(%s) AND tgenabled <> 'D'", (TABLE, list(_PG_TRIGGERS))
        ).fetchone()
        if triggers != len(_PG_TRIGGERS):
            raise LedgerUnavailableError(
                f"the privacy budget ledger table at {self.uri} lacks its append-only "
                "triggers (or they are disabled): the database admin reruns "
                "install_postgres_ledger")
        kinds = self._conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = "
            "to_regclass(%s) AND contype = 'c'", (TABLE,)).fetchall()
        if not any(all(f"'{k}'" in d for k in KINDS) for (d,) in kinds):
            raise LedgerUnavailableError(
                f"the privacy budget ledger table at {self.uri} predates recorded lifetime "
                "limits (its kind column does not take 'limit'): the database admin reruns "
                "`python -m dpsynth.privacy.ledger_store install-postgres` (it keeps every "
                "row)")

    @contextlib.contextmanager
    def _transaction(self, dataset_id: str, write: bool) -> Iterator[None]:
        with self._conn.transaction():
            if write:
                # Serialises charges on one dataset; released at commit or rollback.
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)",
                                   (_pg_lock_key(dataset_id),))
            yield

    def _select(self, dataset_id: str) -> list[tuple[Any, ...]]:
        return self._conn.execute(
            f"SELECT {_COLUMNS} FROM {TABLE} WHERE dataset_id = %s ORDER BY seq",
            (dataset_id,)).fetchall()

    def _insert(self, kind: str, charge_id: str, dataset_id: str, recorded_at: datetime, *,
                run_id: str = "", entry: str | None = None, private: bool | None = None,
                tracking_uri: str | None = None) -> None:
        self._conn.execute(_INSERT.format(p="%s"), (
            kind, charge_id, dataset_id, run_id, entry, private, tracking_uri, recorded_at))

    def close(self) -> None:
        self._conn.close()


def open_ledger(uri: str | None = None) -> LedgerStore:
    """The ledger at ``uri`` (None: :func:`default_ledger_uri`); creates a SQLite one.

    Raises :class:`LedgerUnavailableError` when it cannot be opened.
    """
    uri = resolve_ledger_uri(uri)
    problem = ledger_uri_problem(uri)
    if problem:
        raise LedgerUnavailableError(f"privacy budget ledger URI {problem}")
    if urlsplit(uri).scheme == "sqlite":
        try:
            return SQLiteLedgerStore(Path(uri.removeprefix("sqlite:///")), uri)
        except SQLiteLedgerStore._db_errors as exc:
            raise LedgerUnavailableError(
                f"cannot open the privacy budget ledger at {public_uri(uri)}: "
                f"{type(exc).__name__}: {exc}") from None
    return PostgresLedgerStore(uri)


# ------------------------------------------------------------------------ the mirror
class LedgerIncompleteError(BudgetExceededError):
    """The ledger holds fewer charges on a dataset than its MLflow mirror: it was deleted,
    emptied or put back from an old backup. Its budget cannot be checked, so the run is
    refused (nothing read, nothing charged) until the ledger is restored."""


def ledger_gap(after: LedgerHistory, mirror: Sequence[LedgerEntry], ledger_uri: str,
               tracking_uri: str) -> str | None:
    """Why the ledger cannot be trusted next to its mirror, or None.

    The ledger and its MLflow mirror are the two witnesses of a dataset's budget: losing
    one is an error to repair, never a fresh budget. The ledger (``after``: read after the
    mirror, so every genuine mirror entry of a run charging meanwhile is in it) must hold
    every charge that the mirror names by charge id, and at least as many charges as the
    mirror holds in all (entries without a charge id count too). An empty ledger next to a
    non-empty mirror is the plainest case: ``ledger.sqlite`` deleted or truncated.
    """
    known = {c.charge_id for c in after.charges}
    lost = [e for e in mirror if e.charge_id and e.charge_id not in known]
    if not lost and len(after.charges) >= len(mirror):
        return None
    runs = ", ".join(e.run_id for e in lost[:5]) + (
        f" and {len(lost) - 5} more" if len(lost) > 5 else "")
    which = f" ({len(lost)} of them not in the ledger: MLflow run(s) {runs})" if lost else ""
    return (f"the privacy budget ledger at {public_uri(ledger_uri)} holds "
            f"{len(after.charges)} charge(s) on dataset {after.dataset_id!r}, but its MLflow "
            f"mirror at {public_uri(tracking_uri)} holds {len(mirror)} charge(s) of it{which}"
            ": the ledger was deleted, emptied or put back from an old backup, and the "
            "budget cannot be checked without it. Refusing to start: nothing was read and "
            "nothing was charged. Restore the ledger from its backup (the SQLite file, or "
            "the PostgreSQL table); if no backup holds these charges, the data owner "
            "re-enters them from the mirror with `dpsynth budget restore --dataset-id "
            f"{after.dataset_id} --epsilon E --delta D` (the dataset's lifetime budget; see "
            "docs/design.md, the private boundary). A ledger is "
            "never started afresh next to a mirror that holds charges.")


def mirror_problems(before: LedgerHistory, mirror: Sequence[LedgerEntry],
                    after: LedgerHistory, tracking_uri: str) -> list[str]:
    """Where the MLflow mirror disagrees with the ledger store, one line per problem.

    ``before`` is read before the mirror and ``after`` after it, so that runs charging
    meanwhile raise no false alarm: a run is linked in the store only after its MLflow run
    exists (so every charge linked in ``before`` is in the mirror already), and a run is
    charged before its MLflow run is made (so every genuine mirror entry is in ``after``).
    Only charges whose run is in *this* tracking store are expected in its mirror.
    """
    here = public_uri(tracking_uri)
    mirrored = {e.charge_id: e for e in mirror if e.charge_id}
    problems = []
    for charge in before.charges:
        if before.tracking_uris.get(charge.charge_id) != here:
            continue  # tracked in another store, or its run was never created
        copy = mirrored.get(charge.charge_id)
        if copy is None:
            problems.append(
                f"the charge of run {charge.run_id} (ledger charge {charge.charge_id}, eps = "
                f"{charge.epsilon:.3g}) is missing from the MLflow mirror at {here}: its "
                "mirror tags were deleted; the ledger store still counts the charge")
        elif copy.run_id != charge.run_id:
            problems.append(
                f"ledger charge {charge.charge_id} paid for run {charge.run_id}, but the "
                f"MLflow mirror puts it on run {copy.run_id}")
    known = {c.charge_id: c for c in after.charges}
    legacy = 0
    for copy in mirror:
        charge = known.get(copy.charge_id) if copy.charge_id else None
        if not copy.charge_id:
            legacy += 1
        elif charge is None:
            problems.append(
                f"MLflow run {copy.run_id} mirrors ledger charge {copy.charge_id}, which is "
                "not in the ledger store: the mirror entry is not counted")
        elif copy.to_json() != charge.to_json():
            problems.append(
                f"the MLflow mirror of run {copy.run_id} (ledger charge {copy.charge_id}) "
                f"differs from the ledger store: mirror {copy.to_json()}, store "
                f"{charge.to_json()}; the store's entry is counted")
    if legacy:
        problems.append(
            f"{legacy} MLflow run(s) carry a ledger entry without a ledger charge id "
            "(recorded before the ledger store, or written by hand): not counted")
    return problems


# ---------------------------------------------------------------- cluster admin
_PG_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        seq BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ({_KINDS_SQL})),
        charge_id TEXT NOT NULL,
        dataset_id TEXT NOT NULL,
        run_id TEXT NOT NULL DEFAULT '',
        entry TEXT,
        private BOOLEAN,
        tracking_uri TEXT,
        recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_dataset ON {TABLE} (dataset_id, seq)",
    # The same refusal for every role, the owner included (privileges do not bind it).
    f"""CREATE OR REPLACE FUNCTION {TABLE}_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the privacy budget ledger is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$""",
    f"""CREATE OR REPLACE TRIGGER {_PG_TRIGGERS[0]} BEFORE UPDATE OR DELETE ON {TABLE}
        FOR EACH ROW EXECUTE FUNCTION {TABLE}_refuse()""",
    f"""CREATE OR REPLACE TRIGGER {_PG_TRIGGERS[1]} BEFORE TRUNCATE ON {TABLE}
        FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_refuse()""",
    # Tables made before `limit` rows existed: widen the CHECK on kind (rows stay).
    f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS {TABLE}_kind_check",
    f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_kind_check CHECK (kind IN ({_KINDS_SQL}))",
    f"REVOKE ALL ON {TABLE} FROM PUBLIC",
)


def install_postgres_ledger(admin: Any, *, role: str = DEFAULT_ROLE,
                            password: str | None = None) -> None:
    """Create the ledger table, its refusing triggers and the runs' role (idempotent).

    ``admin``: a psycopg connection or a URI, as a role that may create tables and roles
    (the table's owner keeps UPDATE/DELETE; only the triggers stop it, so runs must never
    connect as it). ``role`` gets LOGIN (with ``password`` when given), SELECT and INSERT
    on the table, USAGE on its sequence and schema, and nothing else. PostgreSQL >= 14.
    """
    import psycopg
    from psycopg import sql

    conn = psycopg.connect(admin) if isinstance(admin, str) else admin
    try:
        with conn.transaction():
            for statement in _PG_SCHEMA:
                conn.execute(statement)
            ident = sql.Identifier(role)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                  (role,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
            if password is not None:
                conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                    ident, sql.Literal(password)))
            (sequence,) = conn.execute("SELECT pg_get_serial_sequence(%s, 'seq')",
                                       (TABLE,)).fetchone()
            (schema,) = conn.execute("SELECT current_schema()").fetchone()
            # Exactly INSERT and SELECT: revoke first, so a rerun also takes back anything
            # granted by hand since.
            conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(TABLE),
                                                                     ident))
            conn.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(
                sql.Identifier(TABLE), ident))
            # pg_get_serial_sequence returns the name quoted as SQL needs it.
            conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
                sql.SQL(sequence), ident))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(schema), ident))
    finally:
        if isinstance(admin, str):
            conn.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m dpsynth.privacy.ledger_store install-postgres``: for the cluster admin."""
    parser = argparse.ArgumentParser(prog="python -m dpsynth.privacy.ledger_store",
                                     description="Set up the dpsynth privacy budget ledger.")
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install-postgres", help="create the ledger table, its "
                             "append-only triggers and the restricted role the runs use")
    install.add_argument("--admin-uri", required=True,
                         help="postgresql://ADMIN@HOST:PORT/DB (password: PGPASSWORD)")
    install.add_argument("--role", default=DEFAULT_ROLE)
    install.add_argument("--no-password", action="store_true",
                         help="leave the role's password as it is (e.g. certificate auth)")
    args = parser.parse_args(argv)
    password = None
    if not args.no_password:
        password = (os.environ.get("DPSYNTH_LEDGER_ROLE_PASSWORD")
                    or getpass.getpass(f"password for role {args.role}: "))
    install_postgres_ledger(args.admin_uri, role=args.role, password=password)
    print(f"ledger ready: runs use {LEDGER_URI_ENV}=postgresql://{args.role}@HOST:PORT/DB "
          "(password in PGPASSWORD or ~/.pgpass)")


if __name__ == "__main__":  # pragma: no cover
    main()

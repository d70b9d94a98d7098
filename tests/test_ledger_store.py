"""The append-only ledger store: SQLite (the embedded default) and a real PostgreSQL cluster.

Charges are appended only when they fit, atomically, so concurrent runs never overspend;
rows cannot be updated or deleted; the MLflow mirror is compared, never trusted.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import sqlite3
import threading
import time

import pytest
from pg_server import started_postgres

from dpsynth.config import ConfigError, load_config
from dpsynth.privacy import ReleaseSpec, build_plan
from dpsynth.privacy import ledger_store as store_module
from dpsynth.privacy.ledger import LedgerEntry, composed_epsilon
from dpsynth.privacy.ledger_store import (
    LEDGER_URI_ENV,
    LedgerHistory,
    LedgerUnavailableError,
    default_ledger_uri,
    install_postgres_ledger,
    mirror_problems,
    open_ledger,
    public_uri,
)

DELTA = 1e-5
LIMIT = 2.0  # eps = 1 runs: one, two and three fit (1.0, 1.46, 1.83), four do not


@functools.cache  # calibrating a plan takes a while; entries are immutable
def _entry(epsilon: float = 1.0, dataset: str = "d") -> LedgerEntry:
    return LedgerEntry.from_plan(build_plan([ReleaseSpec("sum", 1.0)], epsilon, DELTA), dataset)


@functools.cache
def _fitting_runs() -> int:
    k = 0
    while composed_epsilon([_entry()] * (k + 1), DELTA) <= LIMIT:
        k += 1
    return k


@pytest.fixture
def sqlite_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"


# ------------------------------------------------------------------ any backend
def _charges_append_and_read_back(uri: str) -> None:
    with open_ledger(uri) as store:
        first = store.charge(_entry(), LIMIT, DELTA)
        assert first.ok and first.charge_id and first.previous_runs == 0
        second = store.charge(_entry(), LIMIT, DELTA)
        assert second.ok and second.previous_runs == 1 and second.spent == pytest.approx(1.0,
                                                                                        rel=0.01)
        store.link_run(first.charge_id, "d", "run-1", "http://u:secret@mlflow:5000")
        entries = store.entries("d")
        assert [e.charge_id for e in entries] == [first.charge_id, second.charge_id]
        assert [e.run_id for e in entries] == ["run-1", ""]
        assert entries[0].releases == _entry().releases
        history = store.history("d")
        # The tracking store is recorded without its password.
        assert history.tracking_uris == {first.charge_id: "http://u@mlflow:5000"}
        assert store.entries("other") == []


def _over_budget_is_refused_without_appending(uri: str) -> None:
    with open_ledger(uri) as store:
        for _ in range(_fitting_runs()):
            assert store.charge(_entry(), LIMIT, DELTA).ok
        refused = store.charge(_entry(), LIMIT, DELTA)
        assert not refused.ok and refused.charge_id == ""
        assert "nothing was charged" in refused.message()
        assert len(store.entries("d")) == _fitting_runs()


def _nonprivate_marking_holds_for_good(uri: str) -> None:
    inf_run = _entry(math.inf)
    with open_ledger(uri) as store:
        assert not store.charge(inf_run, LIMIT, DELTA).ok  # not marked: refused
        assert store.entries("d") == []
        marked = store.charge(inf_run, math.inf, DELTA)
        assert marked.ok and marked.nonprivate.new
        assert marked.nonprivate.charge_id == marked.charge_id
        store.link_run(marked.charge_id, "d", "run-m", "sqlite:////x/mlflow.db")
    with open_ledger(uri) as store:  # a later run, with a finite budget in its config
        later = store.charge(inf_run, LIMIT, DELTA)
        assert later.ok and not later.nonprivate.new and later.previous_runs == 1
        assert later.nonprivate.run_id == "run-m"
        assert later.nonprivate.recorded_at == marked.nonprivate.recorded_at
        assert "since run run-m" in later.summary_line()
        assert store.charge(_entry(1.0), LIMIT, DELTA).ok
        assert len(store.entries("d")) == 3
        # The marking is the dataset's, not the ledger's.
        assert not store.charge(_entry(math.inf, "e"), LIMIT, DELTA).ok


def _the_limit_is_recorded_and_changed_only_by_the_owner(uri: str) -> None:
    """Issue 27: the first charge records the limit; a config that disagrees is refused;
    the owner's change and marking are appended entries (INSERT only)."""
    with open_ledger(uri) as store:
        first = store.charge(_entry(), LIMIT, DELTA)
        assert first.ok and first.recorded_limit.new
        assert first.recorded_limit.entry_id == first.charge_id
    with open_ledger(uri) as store:
        raised = store.charge(_entry(), 1000.0, DELTA)
        assert not raised.ok and "disagrees" in raised.message()
        assert store.history("d").limit.epsilon == LIMIT
        assert not store.charge(_entry(), math.inf, DELTA).ok  # no marking as a side effect
        history = store.set_limit("d", 1000.0, DELTA)
        assert (history.limit.epsilon, history.limit.by) == (1000.0, "owner")
        assert store.charge(_entry(), 1000.0, DELTA).ok
        assert not store.charge(_entry(), LIMIT, DELTA).ok
        assert len(store.entries("d")) == 2
        marked = store.set_limit("d", nonprivate=True)
        assert marked.nonprivate.by_owner and math.isinf(marked.limit.epsilon)
        assert store.charge(_entry(math.inf), LIMIT, DELTA).ok
        with pytest.raises(store_module.LedgerOwnerError, match="holds for good"):
            store.set_limit("d", 5.0, DELTA)
        assert store.history("e").limit is None  # the dataset's, not the ledger's


def _restored_charges_count_once(uri: str) -> None:
    with open_ledger(uri) as store:
        kept = store.charge(_entry(), LIMIT, DELTA)
    lost = LedgerEntry.from_json(_entry().to_json(), "run-lost", "c-lost")
    mirror = [LedgerEntry.from_json(_entry().to_json(), "run-kept", kept.charge_id), lost]
    with open_ledger(uri) as store:
        added = store.restore_charges("d", mirror, "http://u:pw@mlflow")
        assert [e.charge_id for e in added] == ["c-lost"]
        assert store.restore_charges("d", mirror, "http://mlflow") == []  # idempotent
        history = store.history("d")
        assert [c.charge_id for c in history.charges] == [kept.charge_id, "c-lost"]
        assert history.tracking_uris["c-lost"] == "http://u@mlflow"


def _content_identity_maps_to_the_first_id(uri: str) -> None:
    """dpsynth.privacy.identity's index: the first id recorded for a digest holds."""
    with open_ledger(uri) as store:
        assert store.identity("digest-1", "image-folder:/old") == "image-folder:/old"
        assert store.charge(_entry(dataset="image-folder:/old"), LIMIT, DELTA).ok
    with open_ledger(uri) as store:
        assert store.identity("digest-1", "image-folder:/new") == "image-folder:/old"
        assert store.identity("digest-2", "image-folder:/new") == "image-folder:/new"
        history = store.history("image-folder:/old")  # identity rows are not charges
        assert len(history.charges) == 1 and history.limit.epsilon == LIMIT


STORE_CASES = [_charges_append_and_read_back, _over_budget_is_refused_without_appending,
               _nonprivate_marking_holds_for_good,
               _the_limit_is_recorded_and_changed_only_by_the_owner,
               _restored_charges_count_once, _content_identity_maps_to_the_first_id]


@pytest.mark.parametrize("case", STORE_CASES)
def test_sqlite_store(sqlite_uri, case):
    case(sqlite_uri)


def test_a_sqlite_ledger_made_before_limits_is_migrated_keeping_every_row(sqlite_uri,
                                                                         tmp_path):
    path = tmp_path / "ledger.sqlite"
    old = sqlite3.connect(path)
    schema = [s.replace(", 'limit'", "") for s in store_module._SQLITE_SCHEMA]
    for statement in schema:
        old.execute(statement)
    old.execute("INSERT INTO dpsynth_ledger (kind, charge_id, dataset_id, entry, private, "
                "recorded_at) VALUES ('charge', 'c0', 'd', ?, 1, 'then')",
                (_entry().to_json(),))
    old.commit()
    with pytest.raises(sqlite3.IntegrityError):  # the old table takes no limit rows
        old.execute("INSERT INTO dpsynth_ledger (kind, charge_id, dataset_id, recorded_at) "
                    "VALUES ('limit', 'x', 'd', 'now')")
    old.close()
    with open_ledger(sqlite_uri) as store:
        assert [c.charge_id for c in store.entries("d")] == ["c0"]
        check = store.charge(_entry(), LIMIT, DELTA)  # records the limit: a 'limit' row
        assert check.ok and check.recorded_limit.new and check.previous_runs == 1
        assert store.history("d").limit.epsilon == LIMIT
    raw = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("DELETE FROM dpsynth_ledger")
    assert raw.execute("SELECT seq, kind FROM dpsynth_ledger ORDER BY seq").fetchall() == [
        (1, "charge"), (2, "charge"), (3, "limit")]
    raw.close()


# ---------------------------------------------------------------------- SQLite
def test_sqlite_triggers_refuse_update_and_delete(sqlite_uri, tmp_path):
    with open_ledger(sqlite_uri) as store:
        store.charge(_entry(), LIMIT, DELTA)
        store.charge(_entry(), LIMIT, DELTA)
    raw = sqlite3.connect(tmp_path / "ledger.sqlite")
    for statement in ("UPDATE dpsynth_ledger SET entry = NULL",
                      "UPDATE dpsynth_ledger SET dataset_id = 'elsewhere' WHERE seq = 1",
                      "DELETE FROM dpsynth_ledger WHERE seq = 2",
                      "DELETE FROM dpsynth_ledger"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute(statement)
    raw.close()
    with open_ledger(sqlite_uri) as store:
        assert len(store.entries("d")) == 2


def test_an_unreadable_row_fails_closed(sqlite_uri, tmp_path):
    open_ledger(sqlite_uri).close()
    raw = sqlite3.connect(tmp_path / "ledger.sqlite")
    raw.execute("INSERT INTO dpsynth_ledger (kind, charge_id, dataset_id, entry, recorded_at) "
                "VALUES ('charge', 'x', 'd', '{not json', 'now')")
    raw.commit()
    raw.close()
    with open_ledger(sqlite_uri) as store, pytest.raises(LedgerUnavailableError,
                                                         match="row 1 .* cannot be read"):
        store.charge(_entry(), LIMIT, DELTA)


def _slow_checks(monkeypatch_or_module, hold_s: float) -> None:
    """Hold every budget check for ``hold_s`` between the ledger's read and the append:
    without the store's lock, every concurrent charge would read the same ledger."""
    real = store_module.check_budget

    def slow(*args, **kwargs):
        result = real(*args, **kwargs)
        time.sleep(hold_s)
        return result

    monkeypatch_or_module.setattr(store_module, "check_budget", slow)


def _charge_in_a_process(uri: str, barrier, results, hold_s: float) -> None:
    _slow_checks(pytest.MonkeyPatch(), hold_s)
    try:
        with open_ledger(uri) as store:
            barrier.wait()
            results.put(store.charge(_entry(), LIMIT, DELTA).ok)
    except Exception as exc:  # noqa: BLE001 - the parent's assertion shows it
        results.put(repr(exc))


def test_concurrent_charges_from_processes_never_exceed_the_budget(sqlite_uri):
    """Like several `dpsynth run`s started together on one machine."""
    # fork, not spawn: a spawned child re-imports dp-accounting, ~5 s each on 2 cores.
    ctx = multiprocessing.get_context("fork")
    n = _fitting_runs() + 2
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_charge_in_a_process, args=(sqlite_uri, barrier, results, 0.5))
             for _ in range(n)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=240) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
    assert sorted(outcomes, key=str) == [False] * 2 + [True] * _fitting_runs(), outcomes
    with open_ledger(sqlite_uri) as store:
        charged = store.entries("d")
    assert len(charged) == _fitting_runs()
    assert composed_epsilon(charged, DELTA) <= LIMIT


def _concurrent_threads(uri: str, monkeypatch) -> None:
    _slow_checks(monkeypatch, 0.3)
    n = _fitting_runs() + 2
    barrier, outcomes, errors = threading.Barrier(n), [], []

    def charge() -> None:
        try:
            with open_ledger(uri) as store:
                barrier.wait()
                outcomes.append(store.charge(_entry(), LIMIT, DELTA).ok)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=charge) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and sorted(outcomes) == [False] * 2 + [True] * _fitting_runs()
    with open_ledger(uri) as store:
        assert composed_epsilon(store.entries("d"), DELTA) <= LIMIT


def test_concurrent_charges_from_threads_never_exceed_the_budget(sqlite_uri, monkeypatch):
    _concurrent_threads(sqlite_uri, monkeypatch)


# ------------------------------------------------------------- where it lives
def test_the_default_ledger_is_per_user_and_env_and_config_override_it(monkeypatch, tmp_path):
    monkeypatch.delenv(LEDGER_URI_ENV)
    monkeypatch.delenv("DPSYNTH_HOME")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_ledger_uri() == (
        f"sqlite:///{tmp_path / 'home' / '.local' / 'share' / 'dpsynth' / 'ledger.sqlite'}")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_ledger_uri() == f"sqlite:///{tmp_path / 'xdg' / 'dpsynth' / 'ledger.sqlite'}"
    with open_ledger() as store:
        store.charge(_entry(), LIMIT, DELTA)
    assert (tmp_path / "xdg" / "dpsynth" / "ledger.sqlite").stat().st_mode & 0o077 == 0
    monkeypatch.setenv(LEDGER_URI_ENV, "postgresql://role@db.example/ledger")
    assert default_ledger_uri() == "postgresql://role@db.example/ledger"
    cfg = load_config(None, [f"privacy.ledger_uri=sqlite:///{tmp_path / 'cfg.sqlite'}"])
    assert store_module.resolve_ledger_uri(cfg.privacy.ledger_uri).endswith("cfg.sqlite")


@pytest.mark.parametrize("uri, message", [
    ("sqlite:///relative.sqlite", "absolute path"),
    ("mysql://db/ledger", "expected sqlite"),
    ("postgresql://role:hunter2@db/ledger", "must not hold a password"),
    ("postgresql://role@db/ledger?password=hunter2", "must not hold a password"),
])
def test_bad_ledger_uris_in_the_config_are_refused(uri, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [f"privacy.ledger_uri={uri}"])
    assert "hunter2" not in str(info.value)


def test_bad_ledger_uri_in_the_environment_is_refused_and_password_never_shown(monkeypatch):
    monkeypatch.setenv(LEDGER_URI_ENV, "mysql://role:hunter2@db/ledger")
    with pytest.raises(LedgerUnavailableError, match="expected sqlite") as info:
        open_ledger()
    assert "hunter2" not in str(info.value)
    assert public_uri("postgresql://r:hunter2@[::1]:5432/db") == "postgresql://r@[::1]:5432/db"


# ------------------------------------------------------------------ the mirror
def test_mirror_problems_name_deleted_altered_and_unknown_entries():
    here, elsewhere = "http://mlflow:5000", "sqlite:////other/mlflow.db"
    a, b, c = (LedgerEntry.from_json(_entry(eps).to_json(), f"run-{i}", f"c{i}")
               for i, eps in enumerate((1.0, 2.0, 3.0)))
    store = LedgerHistory("d", (a, b, c), {"c0": here, "c1": here, "c2": elsewhere})
    assert mirror_problems(store, [a, b], store, here) == []  # c is tracked elsewhere
    altered = LedgerEntry.from_json(_entry(0.5).to_json(), "run-1", "c1")
    forged = LedgerEntry.from_json(_entry(9.0).to_json(), "run-9", "c9")
    legacy = LedgerEntry.from_json(_entry(9.0).to_json(), "run-8", "")
    problems = mirror_problems(store, [altered, forged, legacy], store, here)
    assert len(problems) == 4, problems
    assert "run run-0" in problems[0] and "missing from the MLflow mirror" in problems[0]
    assert "run-1" in problems[1] and "differs" in problems[1]
    assert "c9" in problems[2] and "not counted" in problems[2]
    assert "1 MLflow run(s)" in problems[3]


def test_a_run_charging_while_the_mirror_is_read_raises_no_false_alarm():
    here = "http://mlflow:5000"
    new = LedgerEntry.from_json(_entry().to_json(), "run-new", "c-new")
    # Read before the mirror: nothing yet. The mirror: the new run's tags. Read after:
    # its charge, not yet linked. Nothing is wrong.
    after = LedgerHistory("d", (LedgerEntry.from_json(new.to_json(), "", "c-new"),))
    assert mirror_problems(LedgerHistory("d"), [new], after, here) == []


# ------------------------------------------------------------------ PostgreSQL
ROLE, ROLE_PASSWORD = "dpsynth_ledger", "ledger-test-password"


@pytest.fixture(scope="module")
def pg():
    server = started_postgres()
    try:
        install_postgres_ledger(server.admin_uri, role=ROLE, password=ROLE_PASSWORD)
        install_postgres_ledger(server.admin_uri, role=ROLE, password=ROLE_PASSWORD)  # again
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_uri(pg, request):
    """The restricted role's URI, on a database of this test's own (a clean ledger)."""
    import psycopg

    name = f"t_{abs(hash(request.node.nodeid)) % 10**9}"
    with psycopg.connect(pg.admin_uri, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    install_postgres_ledger(pg.uri(database=name), role=ROLE, password=ROLE_PASSWORD)
    return pg.uri(ROLE, ROLE_PASSWORD, database=name)


@pytest.mark.parametrize("case", STORE_CASES)
def test_postgres_store_as_the_restricted_role(pg_uri, case):
    case(pg_uri)


def test_postgres_ledger_made_before_limits_is_refused_until_reinstalled(pg, pg_uri):
    import psycopg

    owner_uri = pg_uri.replace(f"{ROLE}:{ROLE_PASSWORD}", f"postgres:{pg.password}")
    with psycopg.connect(owner_uri, autocommit=True) as owner:  # as an old install made it
        owner.execute("ALTER TABLE dpsynth_ledger DROP CONSTRAINT dpsynth_ledger_kind_check")
        owner.execute("ALTER TABLE dpsynth_ledger ADD CONSTRAINT dpsynth_ledger_kind_check "
                      "CHECK (kind IN ('charge', 'run', 'nonprivate'))")
        owner.execute("INSERT INTO dpsynth_ledger (kind, charge_id, dataset_id, entry) "
                      "VALUES ('charge', 'c0', 'd', %s)", (_entry().to_json(),))
    with pytest.raises(LedgerUnavailableError, match="reruns .*install-postgres"):
        open_ledger(pg_uri)
    install_postgres_ledger(owner_uri, role=ROLE, password=ROLE_PASSWORD)
    with open_ledger(pg_uri) as store:
        assert len(store.entries("d")) == 1
        assert store.set_limit("d", 3.0, DELTA).limit.epsilon == 3.0


def test_postgres_restricted_role_cannot_update_delete_or_truncate(pg, pg_uri):
    import psycopg

    with open_ledger(pg_uri) as store:
        store.charge(_entry(), LIMIT, DELTA)
        store.charge(_entry(), LIMIT, DELTA)
    statements = ("UPDATE dpsynth_ledger SET entry = NULL", "DELETE FROM dpsynth_ledger",
                  "TRUNCATE dpsynth_ledger")
    with psycopg.connect(pg_uri, autocommit=True) as role:
        for statement in statements:
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="permission denied for table dpsynth_ledger"):
                role.execute(statement)
    # Even the table's owner is stopped by the triggers.
    owner_uri = pg_uri.replace(f"{ROLE}:{ROLE_PASSWORD}", f"postgres:{pg.password}")
    with psycopg.connect(owner_uri, autocommit=True) as owner:
        for statement in statements:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                owner.execute(statement)
    with open_ledger(pg_uri) as store:
        assert len(store.entries("d")) == 2


def test_postgres_runs_refuse_a_role_that_could_rewrite_the_ledger(pg, pg_uri):
    owner_uri = pg_uri.replace(f"{ROLE}:{ROLE_PASSWORD}", f"postgres:{pg.password}")
    with pytest.raises(LedgerUnavailableError, match="UPDATE/DELETE/TRUNCATE") as info:
        open_ledger(owner_uri)
    assert pg.password not in str(info.value)


def test_postgres_without_the_table_says_who_must_create_it(pg):
    import psycopg

    with psycopg.connect(pg.admin_uri, autocommit=True) as admin:
        admin.execute("CREATE DATABASE no_ledger")
    with pytest.raises(LedgerUnavailableError, match="install-postgres"):
        open_ledger(pg.uri(ROLE, ROLE_PASSWORD, database="no_ledger"))


def test_postgres_concurrent_charges_never_exceed_the_budget(pg_uri, monkeypatch):
    _concurrent_threads(pg_uri, monkeypatch)

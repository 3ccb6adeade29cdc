"""Opening the run database and short transactions around it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from autopipe.db.models import Base, Event
from autopipe.db.urls import redacted
from autopipe.errors import AutopipeError
from autopipe.layout import RUN_MARKER, RunLayout


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the status command and worker threads read while the loop writes;
    # busy_timeout waits for a lock instead of failing at once.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL fsyncs at checkpoints, not at every commit: a commit survives the loop's
    # process being killed (what resume guarantees), only a power loss may take the last few back.
    # FULL cost 5 ms per commit on a loaded disk, most of the steering time at 64 walkers
    # (benchmarks/scale.py).
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_read_only(dbapi_conn, _record) -> None:
    # No journal_mode here: switching a file to WAL rewrites its header. The loop's database
    # is in WAL already (the mode is kept in the file).
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA query_only=ON")
    cur.close()


def schema_gaps(engine: Engine) -> tuple[list[str], list[str]]:
    """The tables and the "table.column"s of this autopipe's models that the database lacks."""
    from sqlalchemy import inspect

    insp = inspect(engine)
    have = set(insp.get_table_names())
    tables = [t.name for t in Base.metadata.sorted_tables if t.name not in have]
    columns = []
    for table in Base.metadata.sorted_tables:
        if table.name in have:
            got = {c["name"] for c in insp.get_columns(table.name)}
            columns += [f"{table.name}.{c.name}" for c in table.columns if c.name not in got]
    return tables, columns


def add_missing_columns(engine: Engine) -> list[str]:
    """Add the nullable columns a newer autopipe defines to an existing database; returns "table.column"s.

    ``create_all`` creates missing tables but never alters existing ones, so a run started
    by an older version could not be resumed (every query names the new columns). Only
    nullable columns are added: old rows get NULL, which every new column reads as "the
    default". Anything else is left for a real migration.
    """
    from sqlalchemy import inspect, text

    added: list[str] = []
    quote = engine.dialect.identifier_preparer.quote
    for table in Base.metadata.sorted_tables:
        insp = inspect(engine)
        if not insp.has_table(table.name):
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name in have or not col.nullable or col.primary_key:
                continue
            ddl = f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(col.name)} {col.type.compile(dialect=engine.dialect)}"
            try:
                with engine.begin() as conn:
                    conn.execute(text(ddl))
            except Exception:
                # Another process opening the same database may have added it meanwhile.
                if col.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
            added.append(f"{table.name}.{col.name}")
    return added


def run_marker_url(marker: Path) -> str:
    """The database URL in a run marker; one line naming the file when it is not a marker."""
    import json

    try:
        url = json.loads(marker.read_text())["database"]
    except json.JSONDecodeError as exc:
        raise AutopipeError(f"{marker}: not a run marker (invalid JSON: {exc})") from None
    except (KeyError, TypeError, IndexError):
        raise AutopipeError(f"{marker}: not a run marker (no 'database' key)") from None
    if not isinstance(url, str):
        raise AutopipeError(f"{marker}: database: a URL string is required, not {url!r}")
    return url


class Database:
    """One run's database: SQLite by default, any SQLAlchemy URL (PostgreSQL) by config.

    Use :meth:`session` for a transaction: it commits on success and rolls back on error.

    ``read_only``: an existing run's database, for the commands that only read it (status,
    report, replay): nothing is created or migrated, every connection refuses writes (SQLite
    ``query_only``, PostgreSQL ``default_transaction_read_only``), and a missing, foreign or
    outdated database is an :class:`AutopipeError` (one line) at once.
    """

    def __init__(self, url: str, *, create: bool = True, read_only: bool = False):
        self.url = url
        kwargs: dict = {"future": True}
        sqlite = url.startswith("sqlite")
        if sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                if read_only and not Path(path).is_file():  # connecting would create it
                    raise AutopipeError(f"no database at {path}")
                if not read_only:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
            if read_only and url.startswith("postgresql"):
                kwargs["connect_args"] = {"options": "-c default_transaction_read_only=on"}
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except Exception as exc:  # bad URL or missing driver
            raise AutopipeError(f"cannot open database {redacted(url)!r}: {exc}") from None
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_read_only if read_only else _sqlite_pragmas)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        if read_only:
            self._check_schema()
        elif create:
            try:
                Base.metadata.create_all(self.engine)
                add_missing_columns(self.engine)
            except Exception as exc:
                raise AutopipeError(f"cannot open database {redacted(url)!r}: {str(exc).splitlines()[0]}") from None

    def _check_schema(self) -> None:
        """One line unless the database has every table and column this autopipe reads."""
        try:
            tables, columns = schema_gaps(self.engine)
        except Exception as exc:  # unreachable server, wrong password, a file that is not SQLite
            self.engine.dispose()
            first = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "file is not a database" in first:
                raise AutopipeError(f"{redacted(self.url)}: not an autopipe database ({first})") from None
            raise AutopipeError(f"cannot open database {redacted(self.url)!r}: {first}") from None
        self.engine.dispose()
        if len(tables) == len(Base.metadata.tables):
            raise AutopipeError(f"{redacted(self.url)}: not an autopipe database (it has none of its tables)")
        if tables or columns:
            missing = ", ".join(tables + columns)
            raise AutopipeError(f"{redacted(self.url)}: written by an older autopipe (it lacks {missing}); "
                                "run autopipe-steer on the run once to upgrade it")

    @classmethod
    def for_workdir(cls, workdir: Path | str, url: str | None = None) -> "Database":
        """The database of a work directory: ``url`` if given, else ``<workdir>/autopipe.db``."""
        return cls(url or f"sqlite:///{RunLayout(Path(workdir)).database_file.resolve()}")

    @classmethod
    def for_run(cls, workdir: Path | str) -> "Database":
        """The database of an existing run, opened read-only: the URL in its run marker, else
        ``<workdir>/autopipe.db``. For the commands that read a run, never for the loop."""
        layout = RunLayout(Path(workdir))
        if layout.marker.is_file():
            return cls(run_marker_url(layout.marker), read_only=True)
        if layout.database_file.is_file():
            return cls(f"sqlite:///{layout.database_file.resolve()}", read_only=True)
        raise AutopipeError(f"{workdir}: no autopipe run here (no {RUN_MARKER} or autopipe.db)")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: commit on normal exit, roll back on an exception."""
        s = self._factory()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def record_event(self, kind: str, message: str, **data) -> None:
        """Append an :class:`Event` in its own transaction."""
        with self.session() as s:
            s.add(Event(kind=kind, message=message, data=data))

    def last_event(self, kind: str) -> Event | None:
        with self.session() as s:
            return s.scalars(select(Event).where(Event.kind == kind).order_by(Event.id.desc()).limit(1)).first()

    def dispose(self) -> None:
        self.engine.dispose()

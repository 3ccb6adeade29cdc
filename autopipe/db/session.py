"""Opening the run database and short transactions around it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from autopipe.db.models import Base, Event
from autopipe.errors import AutopipeError
from autopipe.layout import RUN_MARKER, RunLayout


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the status command and worker threads read while the loop writes;
    # busy_timeout waits for a lock instead of failing at once.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


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


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: the form that may be printed or logged."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show nothing of it
        return "<database URL>"


class Database:
    """One run's database: SQLite by default, any SQLAlchemy URL (PostgreSQL) by config.

    Use :meth:`session` for a transaction: it commits on success and rolls back on error.
    """

    def __init__(self, url: str, *, create: bool = True):
        self.url = url
        kwargs: dict = {"future": True}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except Exception as exc:  # bad URL or missing driver
            raise AutopipeError(f"cannot open database {redacted(url)!r}: {exc}") from None
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        if create:
            try:
                Base.metadata.create_all(self.engine)
                add_missing_columns(self.engine)
            except Exception as exc:
                raise AutopipeError(f"cannot open database {redacted(url)!r}: {str(exc).splitlines()[0]}") from None

    @classmethod
    def for_workdir(cls, workdir: Path | str, url: str | None = None) -> "Database":
        """The database of a work directory: ``url`` if given, else ``<workdir>/autopipe.db``."""
        return cls(url or f"sqlite:///{RunLayout(Path(workdir)).database_file.resolve()}")

    @classmethod
    def for_run(cls, workdir: Path | str) -> "Database":
        """The database of an existing run: the URL in its run marker, else ``<workdir>/autopipe.db``."""
        import json

        layout = RunLayout(Path(workdir))
        if layout.marker.is_file():
            return cls(json.loads(layout.marker.read_text())["database"])
        if layout.database_file.is_file():
            return cls.for_workdir(workdir)
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

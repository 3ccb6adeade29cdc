"""Database URLs in the forms that may leave the process: without the password (kept in the
work directory) or with it masked (printed and logged)."""

from __future__ import annotations


def without_password(url: str) -> str:
    """``url`` with no password at all: the form kept in the work directory. The password comes
    at connect time from where libpq looks (PGPASSWORD, PGPASSFILE, ``~/.pgpass``)."""
    from sqlalchemy.engine import URL, make_url

    u = make_url(url)  # URL.set(password=None) would keep it: None there means "unchanged"
    return URL.create(u.drivername, username=u.username, host=u.host, port=u.port, database=u.database,
                      query={k: v for k, v in u.query.items() if k != "password"}).render_as_string(hide_password=False)


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: the form that may be printed or logged."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show nothing of it
        return "<database URL>"

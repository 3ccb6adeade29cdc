"""Column types: numpy arrays stored portably (SQLite BLOB, PostgreSQL bytea)."""

from __future__ import annotations

import io

import numpy as np
from sqlalchemy import LargeBinary
from sqlalchemy.types import TypeDecorator


class NDArray(TypeDecorator):
    """A numpy array stored as ``.npy`` bytes; dtype and shape round-trip exactly."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        return buf.getvalue()

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return np.load(io.BytesIO(value), allow_pickle=False)

"""Exceptions that the CLI turns into one clear line (no traceback unless --debug)."""

from __future__ import annotations


class AutopipeError(Exception):
    """An error the user can act on; its message is a complete sentence."""


class ConfigError(AutopipeError):
    """A site or run file is missing, unreadable or invalid."""

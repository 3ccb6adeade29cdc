"""Shared pieces of the pydantic configuration models and the YAML loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from autopipe.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class KeyProblem(ValueError):
    """Raised by a validator about a key other than the one it sits on (cross-key rules):
    ``key`` is the dotted path relative to the model that raises it, e.g. ``train.lmax``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)


def one_line(text: str) -> str:
    """``text`` with its line breaks shown as ``\\n``: a message quoting a user's value stays one line."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def _key_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif parts:
            parts.append(f".{item}")
        else:
            parts.append(str(item))
    return "".join(parts) or "<top level>"


def format_validation_error(source: str, err: ValidationError) -> str:
    """Render a pydantic error as one ``file: key.path: what was expected`` line.

    One line, whatever pydantic found: the first problem in the file's order, and how many
    more there are (a value that fits no member of a union gives one error per member).
    """
    lines = []
    for e in err.errors():
        # Discriminated unions add the tag (e.g. 'espresso') to the location; it is
        # noise for the user, who wrote the key path without it.
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"]
        problem = (e.get("ctx") or {}).get("error")
        if isinstance(problem, KeyProblem):
            loc += tuple(problem.key.split("."))
            msg = str(problem)
        elif e["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here; check the spelling)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{_key_path(loc)}: {one_line(msg)}")
    distinct = list(dict.fromkeys(lines))
    more = f" (and {len(distinct) - 1} more problem(s))" if len(distinct) > 1 else ""
    return f"{source}: {distinct[0]}{more}"


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, raising :class:`ConfigError` with the file name on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def load_model(model: type[M], path: Path, overrides: dict[str, Any] | None = None) -> M:
    """Load and validate ``path`` as ``model``; relative paths in it are left to the model."""
    data = read_yaml(path)
    if overrides:
        data.update(overrides)
    try:
        return model.model_validate(data, context={"base_dir": Path(path).resolve().parent, "source": str(path)})
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(path), err)) from None

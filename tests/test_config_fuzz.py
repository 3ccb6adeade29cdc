"""Fuzz the shipped run and site files: mutate every key and load each result in-process.

Each mutation must either load or raise :class:`ConfigError` whose text is one line starting
with the file's name, never another exception. Mutations that make a file wrong (a wrong
type, a missing file for a path-like key, a symbol that is no element) must be refused, and
the line must name the key. ``autopipe check`` gives the same one line on a sample.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from typer.testing import CliRunner

from autopipe.config import load_run, load_site
from autopipe.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = sorted((ROOT / "configs" / "runs").glob("*.yaml"))
SITE_FILES = sorted((ROOT / "configs").glob("*.yaml"))
PATH_KEYS = {"path", "asi", "training_data", "pseudo_dir"}  # files and directories a run reads
ELEMENT_DICTS = {"pseudopotentials", "reference_energies", "starting_magnetization"}  # keyed by element


def _leaves(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every (key path, value) of a YAML tree, containers included (a whole section can be wrong too)."""
    if path:
        yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))


def _set(tree: dict, path: tuple, value: Any) -> dict:
    out = copy.deepcopy(tree)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def _rename_key(tree: dict, path: tuple, new: str) -> dict:
    out = copy.deepcopy(tree)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[new] = node.pop(path[-1])
    return out


def _wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "maybe"
    if isinstance(value, (int, float)):
        return "not-a-number"
    if isinstance(value, str):
        return {"a": [1, 2]}
    if isinstance(value, list):
        return {"a": 1}
    return "a string"


def mutations(tree: dict) -> Iterator[tuple[str, tuple, dict, bool]]:
    """``(what, key path, mutated tree, must_fail)`` for every key of ``tree``."""
    for path, value in _leaves(tree):
        leaf = path[-1]
        yield "wrong type", path, _set(tree, path, _wrong_type(value)), True
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for bad in (-1, 0, 1e30):
                yield f"value {bad:g}", path, _set(tree, path, bad), False
        if isinstance(leaf, str) and leaf in PATH_KEYS:
            yield "missing file", path, _set(tree, path, "does-not-exist/nothing.here"), True
        if isinstance(value, str) and not isinstance(leaf, int):
            yield "newline", path, _set(tree, path, value + "\n#SBATCH --nodes=100"), False
        if path[-2:-1] == ("elements",):
            yield "unknown element", path, _set(tree, path, "Xx"), True
            yield "other element", path, _set(tree, path, "Kr"), False
        if len(path) >= 2 and path[-2] in ELEMENT_DICTS:
            yield "wrong element", path, _rename_key(tree, path, "Kr"), True
        if not isinstance(leaf, int):
            yield "removed", path, _without(tree, path), False


def _without(tree: dict, path: tuple) -> dict:
    out = copy.deepcopy(tree)
    node = out
    for k in path[:-1]:
        node = node[k]
    del node[path[-1]]
    return out


def _key_text(path: tuple) -> str:
    """The last named key of a path: what the error line must mention."""
    return next(str(k) for k in reversed(path) if not isinstance(k, int))


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """A tree where mutated run files resolve their relative paths as the shipped ones do."""
    (tmp_path / "configs" / "runs").mkdir(parents=True)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


def _fuzz(original: Path, target: Path, loader) -> tuple[int, list[tuple[str, tuple, Path]]]:
    tree = yaml.safe_load(original.read_text())
    refused, samples = 0, []
    for what, path, mutated, must_fail in mutations(tree):
        target.write_text(yaml.dump(mutated, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
        try:
            loader(target)
        except ConfigError as exc:
            text = str(exc)
            assert "\n" not in text and "Traceback" not in text, (what, path, text)
            assert text.startswith(f"{target}: "), (what, path, text)
            if must_fail:
                assert _key_text(path) in text, (what, path, text)
            refused += 1
            if len(samples) < 3 or refused % 25 == 0:
                kept = target.with_name(f"sample-{len(samples)}-{original.name}")
                kept.write_text(target.read_text())
                samples.append((what, path, kept))
            continue
        # any other exception propagates and fails the test
        assert not must_fail, f"{original.name}: {what} at {path} loaded"
    return refused, samples


@pytest.mark.parametrize("run_file", RUN_FILES, ids=lambda p: p.name)
def test_every_mutation_of_a_shipped_run_file_gives_one_line(run_file, sandbox):
    target = sandbox / "configs" / "runs" / run_file.name
    load_run(run_file)  # the shipped file itself loads
    refused, samples = _fuzz(run_file, target, load_run)
    assert refused > 50
    # autopipe check (its CLI entry, in-process) says the same one line
    from autopipe.cli import app

    runner = CliRunner()
    for what, path, sample in samples:
        out = runner.invoke(app, ["check", "--run", str(sample)])
        assert out.exit_code == 2, (what, path, out.output)
        lines = out.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {sample}: "), (what, path, out.output)


@pytest.mark.parametrize("site_file", SITE_FILES, ids=lambda p: p.name)
def test_every_mutation_of_a_shipped_site_file_gives_one_line(site_file, tmp_path):
    load_site(site_file)
    refused, _ = _fuzz(site_file, tmp_path / site_file.name, load_site)
    assert refused > 20

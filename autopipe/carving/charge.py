"""Carved cells pw.x accepts: electron count, formal charge and the run's charge policy.

A cell carved from a compound is generally not stoichiometric: its valence-electron count (the
pseudopotentials' ``z_valence`` summed over the atoms; pw.x labels it neutral) can be odd, and its
formal charge (the sum of configured oxidation states) non-zero. ``embedding.charge_policy`` says
what to do before the cell is sent:

* ``none``: nothing (the default; today's one-element runs);
* ``neutralise``: remove masked atoms farthest from the centre, never one within
  ``protected_radius`` (core_radius + buffer, the range the run already trusts for the core's
  forces), until the formal charge is zero and the count even; refused when that is impossible;
* ``spin``: a cell with an odd count or a formal charge is marked for spin-polarised, smeared
  labelling (``info["embedding_spin_polarized"]``, read by :func:`autopipe.dft.espresso.cell_config`);
* ``refuse``: such a cell is refused with its count and charge in the reason.

Every decision is written into the cell's ``info`` under ``embedding_*`` keys, which the embed
handler keeps on the cell's structure row; a refusal is a :class:`ChargeRefused` (a ``ValueError``),
which the carve records as the candidate's reason. Units: charges in e, lengths in Å.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from autopipe.errors import AutopipeError

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.config.run import RunConfig

POLICIES = ("none", "neutralise", "spin", "refuse")
#: info key the pw.x labeller reads: label this cell spin-polarised (and smeared).
SPIN_FLAG = "embedding_spin_polarized"
_TOL = 1e-6

_V2 = re.compile(r"<PP_HEADER\b[^>]*?\bz_valence\s*=\s*\"\s*([-+0-9.eEdD]+)\s*\"", re.DOTALL)
_V1_HEADER = re.compile(r"<PP_HEADER>(.*?)</PP_HEADER>", re.DOTALL)
_V1_LINE = re.compile(r"^\s*([-+0-9.eEdD]+)\s+Z\s*valence", re.MULTILINE | re.IGNORECASE)


class ChargeRefused(ValueError):
    """The charge policy refuses a carved cell; the message says why, with its count and charge."""


def upf_valence(path: Path | str) -> float:
    """``z_valence`` (electrons) of a UPF file: the v2 ``<PP_HEADER z_valence="..."/>`` attribute or
    the v1 header's ``... Z valence`` line. Raises a one-line :class:`AutopipeError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise AutopipeError(f"pseudopotential {path}: cannot be read ({exc.strerror or exc})") from None
    found = _V2.search(text)
    if found is None:
        header = _V1_HEADER.search(text)
        found = _V1_LINE.search(header.group(1)) if header else None
    if found is not None:
        try:
            value = float(found.group(1).replace("d", "e").replace("D", "e"))
        except ValueError:
            value = float("nan")
        if np.isfinite(value) and value > 0:
            return value
    raise AutopipeError(f"pseudopotential {path}: no valence in its PP_HEADER (neither a UPF v2 z_valence "
                        "attribute nor a UPF v1 'Z valence' line)")


def valences(elements: Sequence[str], pseudo_dir: Path, explicit: Mapping[str, str]) -> dict[str, float]:
    """Element -> valence electrons of the UPF file pw.x will use for it (same choice as the labeller)."""
    from autopipe.dft import pseudo

    names, missing = pseudo.resolve(list(elements), Path(pseudo_dir), dict(explicit))
    if missing:
        raise AutopipeError(f"no pseudopotential for {', '.join(missing)} in {pseudo_dir}: the charge policy needs "
                            "its valence")
    return {e: _cached_valence(str(Path(pseudo_dir) / name), *_stamp(Path(pseudo_dir) / name))
            for e, name in names.items()}


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=256)
def _cached_valence(path: str, mtime_ns: int, size: int) -> float:
    # Each carve builds the run's rule; a UPF file is read again only when it changes.
    return upf_valence(path)


def electron_count(symbols: Sequence[str], valence: Mapping[str, float]) -> float:
    """Valence electrons of a neutral cell of ``symbols``."""
    return float(sum(valence[s] for s in symbols))


def formal_charge(symbols: Sequence[str], oxidation_states: Mapping[str, float]) -> float | None:
    """Sum of the oxidation states (e); None when a species present has none configured."""
    if any(s not in oxidation_states for s in set(symbols)):
        return None
    return float(sum(oxidation_states[s] for s in symbols))


def is_even(n: float) -> bool:
    """An integer, even electron count (a fractional count from fractional valences is not)."""
    return abs(n - round(n)) < _TOL and int(round(n)) % 2 == 0


@dataclass(frozen=True)
class ChargeRule:
    """The run's policy with what it needs: valences (electrons per atom), oxidation states (e) and
    ``protected_radius`` (Å from the centre within which neutralising may touch nothing)."""

    policy: str
    valence: dict[str, float]
    oxidation_states: dict[str, float] = field(default_factory=dict)
    protected_radius: float = 0.0

    @classmethod
    def from_run(cls, run: RunConfig) -> ChargeRule | None:
        """The rule of a run whose labeller is pw.x and whose policy is not ``none``; else None."""
        e, dft = run.embedding, run.dft
        if dft.code != "espresso" or e.charge_policy == "none":  # by its tag: the config imports this module
            return None
        return cls(policy=e.charge_policy, valence=valences(run.system.elements, dft.pseudo_dir, dft.pseudopotentials),
                   oxidation_states=dict(e.oxidation_states), protected_radius=e.core_radius + e.buffer)


def _describe(n: float, q: float | None) -> str:
    parity = "even" if is_even(n) else ("odd" if abs(n - round(n)) < _TOL else "fractional")
    charge = "unknown (no oxidation state for a species)" if q is None else f"{q:+g}"
    return f"{n:g} electrons ({parity}), formal charge {charge}"


def neutralising_removals(symbols: Sequence[str], distances: np.ndarray, masked: Sequence[int],
                          rule: ChargeRule) -> list[int] | None:
    """Indices of the fewest masked atoms beyond ``rule.protected_radius`` whose removal leaves formal
    charge zero and an even electron count, preferring the farthest from the centre; ``[]`` when the
    cell already is; None when no such set exists."""
    q = formal_charge(symbols, rule.oxidation_states)
    n = electron_count(symbols, rule.valence)
    if q is None or any(abs(rule.valence[s] - round(rule.valence[s])) > _TOL for s in set(symbols)):
        return None  # no charge to aim at, or no parity to reach
    if abs(q) < _TOL and is_even(n):
        return []
    scale = 1000  # oxidation states as integers of 1/1000 e: exact sums, hashable states
    ox = {s: int(round(v * scale)) for s, v in rule.oxidation_states.items()}
    order = sorted((int(i) for i in masked if distances[i] > rule.protected_radius + _TOL),
                   key=lambda i: (-distances[i], i))
    bound = abs(int(round(q * scale))) + 2 * max((abs(v) for v in ox.values()), default=0)
    # States (charge left, parity left) -> the shortest removal list found so far. Candidates come
    # farthest first and a list is replaced only by a shorter one, so ties keep the farthest atoms.
    best: dict[tuple[int, int], tuple[int, ...]] = {(int(round(q * scale)), int(round(n)) % 2): ()}
    for i in order:
        for (qk, parity), chosen in list(best.items()):
            state = (qk - ox[symbols[i]], (parity - int(round(rule.valence[symbols[i]]))) % 2)
            if abs(state[0]) <= bound and (state not in best or len(chosen) + 1 < len(best[state])):
                best[state] = chosen + (i,)
        if (0, 0) in best:
            break
    found = best.get((0, 0))
    return None if found is None else list(found)


def apply_charge_policy(sub: Atoms, masked: Sequence[int], rule: ChargeRule) -> tuple[Atoms, list[int]]:
    """``(cell, masked)`` after ``rule`` (``sub[0]`` is the centre): unchanged, neutralised (atoms
    removed, ``masked`` renumbered) or marked for spin; raises :class:`ChargeRefused`. The decision
    is recorded in the cell's ``info`` (``embedding_electrons``, ``embedding_formal_charge``,
    ``embedding_charge_policy``, ``embedding_charge_decision``, ``embedding_charge_removed``: parent
    indices of removed atoms, and :data:`SPIN_FLAG`)."""
    symbols = sub.get_chemical_symbols()
    n, q = electron_count(symbols, rule.valence), formal_charge(symbols, rule.oxidation_states)
    fine = is_even(n) and (q is None or abs(q) < _TOL)
    state = _describe(n, q)
    masked = [int(i) for i in masked]
    out = sub
    if fine or rule.policy == "none":
        decision = f"as carved: {state}"
    elif rule.policy == "refuse":
        raise ChargeRefused(f"charge check: {state}; embedding.charge_policy is refuse")
    elif rule.policy == "spin":
        out = sub.copy()
        out.info[SPIN_FLAG] = True
        decision = f"spin: {state}; labelled spin-polarised with smearing"
    elif rule.policy == "neutralise":
        distances = sub.get_distances(0, range(len(sub)), mic=True)
        removed = neutralising_removals(symbols, distances, masked, rule)
        if removed is None:
            raise ChargeRefused(f"charge check: {state}; no set of masked atoms beyond {rule.protected_radius:g} Å "
                                "of the centre (core_radius + buffer) neutralises it, so neutralise refuses")
        keep = np.setdiff1d(np.arange(len(sub)), removed)
        out = sub[keep]
        out.info = dict(sub.info)
        _check_untouched(sub, out, keep, distances, rule.protected_radius)
        renumber = {int(old): new for new, old in enumerate(keep)}
        masked = [renumber[i] for i in masked if i in renumber]
        parents = sub.arrays.get("parent_index")
        out.info["embedding_charge_removed"] = [int(parents[i]) if parents is not None else int(i) for i in removed]
        new_symbols = out.get_chemical_symbols()
        n, q = electron_count(new_symbols, rule.valence), formal_charge(new_symbols, rule.oxidation_states)
        decision = (f"neutralised: removed {len(removed)} masked atom(s) "
                    f"({', '.join(sorted(set(symbols[i] for i in removed)))}) at {min(distances[removed]):.2f}-"
                    f"{max(distances[removed]):.2f} Å from the centre; was {state}" if removed else f"as carved: {state}")
    else:
        raise ValueError(f"unknown charge policy {rule.policy!r} (one of {', '.join(POLICIES)})")
    out.info.update(embedding_electrons=n, embedding_formal_charge=q, embedding_charge_policy=rule.policy,
                    embedding_charge_decision=decision)
    return out, masked


def _check_untouched(raw: Atoms, new: Atoms, keep: np.ndarray, distances: np.ndarray, radius: float) -> None:
    """Every atom of ``raw`` within ``radius`` of the centre is in ``new``, same species, same place."""
    inside = np.flatnonzero(distances <= radius + _TOL)
    where = {int(old): k for k, old in enumerate(keep)}
    for i in inside:
        k = where.get(int(i))
        if k is None or new.numbers[k] != raw.numbers[i] or not np.allclose(new.positions[k], raw.positions[i]):
            raise ChargeRefused(f"neutralising would change atom {int(i)} at {distances[i]:.2f} Å of the centre, "
                                f"within {radius:g} Å (core_radius + buffer)")

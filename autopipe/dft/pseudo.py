"""Finding the pseudopotential file of each element for pw.x."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from autopipe.errors import AutopipeError


def candidates(symbol: str, pseudo_dir: Path) -> list[str]:
    """UPF files in ``pseudo_dir`` that belong to ``symbol``, in the order they are preferred.

    A file belongs to an element when its name starts with the symbol followed by
    '.', '_' or '-' (case-insensitive, so ``pb_s.UPF`` is lead and ``Rhs.pbe...`` is not
    rhodium) and ends in ``.upf`` (any case; older formats are not considered). The order
    is case-insensitive alphabetical, ties broken by the exact name, so the choice does
    not depend on the file system.
    """
    pattern = re.compile(rf"^{re.escape(symbol)}[._-].*\.upf$", re.IGNORECASE)
    names = [p.name for p in pseudo_dir.iterdir() if p.is_file() and pattern.match(p.name)]
    return sorted(names, key=lambda n: (n.lower(), n))


def resolve(symbols: list[str], pseudo_dir: Path, explicit: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """UPF file name for each symbol, and the symbols without one.

    ``explicit`` (element -> file name in ``pseudo_dir``) wins; other elements take the
    first of :func:`candidates`. Automatic choice mixes functionals freely (Si.pbe next to
    O.pz), so production runs should name every file. Raises :class:`AutopipeError` when
    ``pseudo_dir`` is missing or an explicitly named file does not exist: both are
    configuration mistakes that would refuse every structure.
    """
    pseudo_dir = Path(pseudo_dir)
    if not pseudo_dir.is_dir():
        raise AutopipeError(f"pseudo_dir {pseudo_dir} is not a directory.")
    chosen: dict[str, str] = {}
    missing: list[str] = []
    for symbol in symbols:
        if symbol in explicit:
            name = explicit[symbol]
            if not (pseudo_dir / name).is_file():
                raise AutopipeError(f"pseudopotential {name!r} for {symbol} not found in {pseudo_dir}.")
            chosen[symbol] = name
            continue
        found = candidates(symbol, pseudo_dir)
        if found:
            chosen[symbol] = found[0]
        else:
            missing.append(symbol)
    return chosen, missing


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file: records exactly which pseudopotential a label used."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

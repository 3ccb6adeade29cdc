"""Bytes moved per MD segment for one walker, by value and by reference (shared scratch).

Builds a synthetic walker state (fcc Ar, thermal momenta; the size of a state does not depend
on what the atoms are) and serialises what really travels with Parsl's own serializer:

* by value: the ``MDState`` to the worker; back, the final state (and for a trigger the
  rewind state too); the steering host then writes the returned state as an ``.npz`` checkpoint;
* by reference: an ``OnScratch`` (path, size, sha256, step, target directory) to the worker;
  back, one ``StateRef`` (two for a trigger); the worker writes the checkpoint on the shared
  scratch and reads the previous one there (file bytes on scratch, not between hosts).

The potential's files travel on both routes alike and are not counted.
Usage: ``.venv/bin/python benchmarks/state_route.py [--atoms 1000000]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _walker(n_atoms: int):
    from ase.build import bulk

    from autopipe.config.run import MDConfig
    from autopipe.md.state import initial_state

    side = max(1, round((n_atoms / 4) ** (1 / 3)))
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((side, side, side))
    return initial_state(atoms, MDConfig(temperature=80.0))


def measure(n_atoms: int) -> dict[str, float]:
    """Bytes per segment on each route (quiet and triggered segments) and the time to hash a checkpoint."""
    from parsl.serialize import serialize

    from autopipe.layout import checkpoint_file
    from autopipe.md.state import OnScratch, save_state_ref

    state = _walker(n_atoms)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        ref = save_state_ref(checkpoint_file(d, state.step), state)
        t_write = time.perf_counter() - t0
        on_scratch = OnScratch(ref, str(Path(d) / "walkers" / "w0000" / "seg0001"))
        t0 = time.perf_counter()
        on_scratch.load()
        t_verify = time.perf_counter() - t0
    value_out, value_back = len(serialize(state)), len(serialize(state))
    ref_out, ref_back = len(serialize(on_scratch)), len(serialize(ref))
    return {
        "atoms": len(state.atoms),
        "value_out": value_out, "value_back_quiet": value_back, "value_back_trigger": 2 * value_back,
        "checkpoint_file": ref.size,
        "ref_out": ref_out, "ref_back_quiet": ref_back, "ref_back_trigger": 2 * ref_back,
        "write_and_hash_s": t_write, "read_and_verify_s": t_verify,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--atoms", type=int, default=1_000_000)
    m = measure(p.parse_args().atoms)
    mb = 1 << 20
    print(f"walker of {m['atoms']:,} atoms; bytes serialised by parsl.serialize per segment (MB = 2^20 bytes)")
    print(f"  by value     : to the worker {m['value_out'] / mb:.1f} MB, back {m['value_back_quiet'] / mb:.1f} MB "
          f"(quiet) or {m['value_back_trigger'] / mb:.1f} MB (trigger: final + rewind state); the steering host "
          f"writes a {m['checkpoint_file'] / mb:.1f} MB checkpoint")
    print(f"  by reference : to the worker {m['ref_out']} bytes, back {m['ref_back_quiet']} bytes (quiet) or "
          f"{m['ref_back_trigger']} bytes (trigger); the worker writes a {m['checkpoint_file'] / mb:.1f} MB checkpoint "
          f"on the shared scratch ({m['write_and_hash_s']:.2f} s with its sha256) and reads+verifies the previous "
          f"one ({m['read_and_verify_s']:.2f} s)")


if __name__ == "__main__":
    main()

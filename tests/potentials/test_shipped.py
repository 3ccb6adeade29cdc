"""A published potential by value: written once per checksum into the worker's cache."""

from __future__ import annotations

from autopipe.potentials.shipped import ShippedPotential


def test_potential_materialises_once_per_checksum_and_heals_a_damaged_copy(lj2d_potential, tmp_path):
    shipped = ShippedPotential.of(lj2d_potential)
    cache = tmp_path / "cache"
    pot = shipped.materialise(cache)
    assert pot.version == lj2d_potential.version and pot.yaml.read_bytes() == lj2d_potential.yaml.read_bytes()
    assert pot.asi.read_bytes() == lj2d_potential.asi.read_bytes()
    assert pot.yaml.parent.name == shipped.files.key and not str(pot.yaml).startswith(str(lj2d_potential.directory))
    stamp = pot.yaml.stat().st_mtime_ns
    assert shipped.materialise(cache).yaml.stat().st_mtime_ns == stamp  # intact: not written again
    pot.asi.write_bytes(b"damaged")
    assert shipped.materialise(cache).asi.read_bytes() == lj2d_potential.asi.read_bytes()

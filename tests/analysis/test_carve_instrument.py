"""`autopipe buffer-scan --strategies ...`: the carving instrument on a run's own trigger frame, labeller
(EMT) and newest potential; whole-frame labels are cached in the work directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from typer.testing import CliRunner

from autopipe.cli import app
from tests.lj import lj_run_config

N_ATOMS = 499  # 5x5x5 cubic fcc Cu less one vacancy
CENTRE = 61


def _cu_potential(lj_potential, directory: Path) -> dict[str, Path]:
    """The LJ argon fixture potential renamed to Cu (yaml species and the active set's key): a "potential"
    whose forces on Cu are wrong by a known nonzero amount, as a real one's would be before training."""
    directory.mkdir()
    yaml = directory / "potential.yaml"
    yaml.write_text(Path(lj_potential.yaml).read_text().replace("Ar", "Cu"))
    asi = directory / "potential.asi"
    with open(asi, "wb") as fh:  # a file object: np.savez would append .npz to a name
        np.savez(fh, Cu=np.load(lj_potential.asi)["Ar"])
    return {"yaml": yaml, "asi": asi}


def _cu_run(workdir: Path, lj_potential) -> Path:
    """A run's work directory as the loop leaves it: an EMT labeller, fcc Cu, one trigger frame (a
    rattled vacancy, gamma largest on atom 61) and one published potential."""
    from autopipe.config.run import RunConfig
    from autopipe.db import Database, structure_from_atoms
    from autopipe.layout import RunLayout, write_run_files
    from autopipe.potentials import PotentialStore

    data = lj_run_config("cu-carve", workdir).model_dump(mode="json")
    data["system"] = {"elements": ["Cu"], "structure": {"kind": "bulk", "crystal": "fcc", "a": 3.61, "cubic": True,
                                                        "repeat": [5, 5, 5]}}
    data["dft"] = {"code": "emt"}
    data["embedding"].update(core_radius=2.6, buffer=3.0, min_distance=0.5)
    run = RunConfig.model_validate(data)
    layout = RunLayout(workdir)
    write_run_files(layout, run, "local")
    frame = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((5, 5, 5))
    del frame[60]
    frame.positions += np.random.default_rng(1).normal(0, 0.1, frame.positions.shape)
    gamma = np.ones(len(frame))
    gamma[CENTRE] = 7.0
    frame.arrays["gamma"] = gamma
    db = Database(run.database_url())
    with db.session() as s:
        s.add(structure_from_atoms(frame, "md_frame"))
    PotentialStore(db, layout.potentials).publish(_cu_potential(lj_potential, workdir.parent / "cu-pot"),
                                                  name="v1", version=1)
    db.dispose()
    return workdir


def test_instrument_compares_strategies_and_caches_the_whole_frame(lj_potential, tmp_path, monkeypatch):
    import autopipe.dft

    workdir = _cu_run(tmp_path / "run", lj_potential)
    real = autopipe.dft.label
    sizes: list[int] = []

    def counting(atoms, *args, **kwargs):
        sizes.append(len(atoms))
        return real(atoms, *args, **kwargs)

    monkeypatch.setattr(autopipe.dft, "label", counting)
    args = ["buffer-scan", "--workdir", str(workdir), "--strategies", "cube,commensurate", "--buffers", "3"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    rows = [ln for ln in out.output.splitlines() if ln.startswith(f"| s1 | {CENTRE} |")]
    assert {ln.split("|")[3].strip() for ln in rows} == {"cube", "commensurate"}, out.output
    rms = {ln.split("|")[3].strip(): (float(ln.split("|")[10]), float(ln.split("|")[11])) for ln in rows}
    assert rms["commensurate"][0] < rms["cube"][0] / 5  # no bond cut at a wrong length at the seams
    assert rms["cube"][1] == rms["commensurate"][1] > 0.05  # the potential's error on the same core atoms
    assert sizes.count(N_ATOMS) == 1 and len(sizes) == 3  # the whole frame once, one cell per strategy
    assert out.output.count("labelled:") == 2  # a progress line per labelled cell
    assert "budget: " in out.output and "x the potential's" in out.output
    assert "cube (buffer 3 Å, k density)" in out.output  # the pooled measurements
    scan = workdir / "carve-scan"
    cache = sorted((scan / "cache").glob("*.json"))
    assert len(cache) == 1
    assert (scan / "table.md").read_text().count("| s1 |") == 2
    assert (scan / "scan.png").read_bytes()[:4] == b"\x89PNG"
    # A second run reads the whole frame from the cache: only the two cells are labelled again.
    sizes.clear()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert N_ATOMS not in sizes and len(sizes) == 2
    assert sorted((scan / "cache").glob("*.json")) == cache
    assert "whole frame s1: 499 atoms, cached" in again.output


def test_instrument_options_are_checked(lj_potential, tmp_path):
    workdir = _cu_run(tmp_path / "run", lj_potential)
    out = CliRunner().invoke(app, ["buffer-scan", "--workdir", str(workdir), "--strategies", "cube,sphere"])
    assert out.exit_code == 2 and "--strategies: unknown 'sphere' (one of cube, commensurate)" in out.output
    out = CliRunner().invoke(app, ["buffer-scan", "--workdir", str(workdir), "--kpoints", "dense"])
    assert out.exit_code == 2 and "--kpoints: unknown 'dense' (one of density, fold)" in out.output
    out = CliRunner().invoke(app, ["buffer-scan", "--workdir", str(workdir), "--frames", "a.extxyz,b.extxyz",
                                   "--centres", "1"])
    assert out.exit_code == 2 and "--centres: 1 centre(s) for 2 frame(s)" in out.output


@pytest.mark.parametrize("with_centre", [False, True])
def test_instrument_scans_extra_frames_from_files(lj_potential, tmp_path, with_centre):
    workdir = _cu_run(tmp_path / "run", lj_potential)
    extra = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((4, 4, 4))
    extra.positions += np.random.default_rng(2).normal(0, 0.05, extra.positions.shape)
    gamma = np.zeros(len(extra))
    gamma[5] = 3.0
    extra.arrays["gamma"] = gamma
    extra.write(tmp_path / "extra.extxyz")
    args = ["buffer-scan", "--workdir", str(workdir), "--frames", str(tmp_path / "extra.extxyz"), "--buffers", "3"]
    out = CliRunner().invoke(app, args + (["--centres", "9"] if with_centre else []))
    assert out.exit_code == 0, out.output
    assert f"| s1 | {CENTRE} | cube |" in out.output  # the run's trigger frame, with the default strategy
    assert f"| extra | {9 if with_centre else 5} | cube |" in out.output


def test_instrument_on_a_structure_file_without_a_potential(tmp_path, monkeypatch):
    """--structure with --run: no published potential, so the table is measured and the budget says why it
    cannot choose; the cache lives in ./carve-scan."""
    import yaml

    data = lj_run_config("cu-file", tmp_path / "unused").model_dump(mode="json")
    data["system"] = {"elements": ["Cu"], "structure": {"kind": "bulk", "crystal": "fcc", "a": 3.61, "cubic": True,
                                                        "repeat": [4, 4, 4]}}
    data["dft"] = {"code": "emt"}
    data["embedding"].update(core_radius=2.6, buffer=3.0, min_distance=0.5)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(data))
    frame = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((4, 4, 4))
    frame.positions += np.random.default_rng(3).normal(0, 0.05, frame.positions.shape)
    frame.write(tmp_path / "frame.extxyz")
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["buffer-scan", "--structure", "frame.extxyz", "--run", "run.yaml", "--center", "7",
                                   "--kpoints", "density", "--buffers", "3"])
    assert out.exit_code == 0, out.output
    assert "potential none published" in out.output and "| frame | 7 | cube |" in out.output
    assert "budget: not chosen: no published potential" in out.output
    assert len(list((tmp_path / "carve-scan" / "cache").glob("*.json"))) == 1

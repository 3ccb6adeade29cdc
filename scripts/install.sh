#!/usr/bin/env bash
# Idempotent installer: .venv with autopipe and all extras, plus pw.x (Debian's
# quantum-espresso) when missing. Safe to run again; does little when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.autopipe-installed
# Re-install when the dependency list changed.
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)

need_apt=()
command -v pw.x >/dev/null 2>&1 || need_apt+=(quantum-espresso)
[ -d /usr/share/espresso/pseudo ] || need_apt+=(quantum-espresso-data)
if [ "${1:-}" = "--with-postgres" ]; then
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        echo "install.sh: installing ${need_apt[*]} from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    else
        echo "install.sh: missing ${need_apt[*]}; install them (e.g. 'sudo apt-get install ${need_apt[*]}')" >&2
        exit 1
    fi
fi

# LAMMPS with ML-PACE (the native MD route), built once and cached; without it MD takes
# the callback route (pyace through fix external), so a failed build does not stop the install.
build_lammps() {
    bash scripts/build-lammps.sh || echo "install.sh: LAMMPS with ML-PACE not built (see above); MD uses the callback route" >&2
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    build_lammps
    exit 0
fi
echo "install.sh: building $VENV (first time takes a few minutes: TensorFlow is ~600 MB)"
[ -x $VENV/bin/python ] || "$PY" -m venv $VENV
$VENV/bin/python -m pip install -q --upgrade pip
$VENV/bin/python -m pip install -q -e ".[train,postgres,globus,test]"
# tensorpotential declares tensorflow[and-cuda]; take it without deps so the CPU build stays.
$VENV/bin/python -m pip install -q --no-deps "tensorpotential==0.6.2.1"
echo "$want" > "$STAMP"
build_lammps
echo "install.sh: done"

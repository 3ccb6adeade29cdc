# The two commands of the README: `make demo` and `make test`. Each installs what it needs.
PY      := .venv/bin/python
DEMO    ?= demo-run
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench clean

install:
	@bash scripts/install.sh

demo: install  # the healing demo: 2-5 min on 2 cores; run again to resume or to rebuild the report
	.venv/bin/autopipe-steer --site configs/local.yaml --run configs/runs/lj2d-heal.yaml --workdir $(DEMO)
	.venv/bin/autopipe replay --workdir $(DEMO)
	.venv/bin/autopipe report --workdir $(DEMO)

# The Slurm test cluster (tests/hpc) is started for the run (SLURM_CONF, AUTOPIPE_TEST_SLURM=1)
# and stopped after it whatever the outcome, unless it was already running (another test run
# may be using it). The Slurm tests run in a lane of their own beside the others
# (scripts/test-lanes.sh); make fails if either lane fails. PYTEST_ARGS: one pytest run instead.
test:
	@bash scripts/install.sh --with-postgres
	@slurm_env=$$(bash scripts/slurm-test-server.sh start) || exit 1; eval "$$slurm_env"; \
	if [ -n "$${AUTOPIPE_SLURM_STARTED:-}" ]; then trap 'bash scripts/slurm-test-server.sh stop' EXIT; fi; \
	AUTOPIPE_TEST_POSTGRES_URL=$$(bash scripts/pg-test-server.sh start) PY=$(PY) \
	    bash scripts/test-lanes.sh $(PYTEST_ARGS)

test-fast: install  # skip the slow (training, pw.x, full-loop) tests while developing
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(DEMO) .pytest_cache tests/.cache

# The two commands of the README: `make demo` and `make test`. Each installs what it needs.
PY      := .venv/bin/python
DEMO    ?= demo-run
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench clean

install:
	@bash scripts/install.sh

demo: install  # the healing demo: ~5 min on 2 cores; run again to resume or to rebuild the report
	.venv/bin/autopipe-steer --site configs/local.yaml --run configs/runs/lj2d-heal.yaml --workdir $(DEMO)
	.venv/bin/autopipe replay --workdir $(DEMO)
	.venv/bin/autopipe report --workdir $(DEMO)

test:
	@bash scripts/install.sh --with-postgres
	AUTOPIPE_TEST_POSTGRES_URL=$$(bash scripts/pg-test-server.sh start) \
	    $(PY) -m pytest $(PYTEST_ARGS)

test-fast: install  # skip the slow (training, pw.x, full-loop) tests while developing
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(DEMO) .pytest_cache tests/.cache

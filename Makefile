# surgecap: `make demo` runs the default scenario end to end, `make test` runs the tests.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-quick browser lint bench bench-plan bench-server clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/capacity simulate scenarios/prakerja-launch.yaml --out runs/demo/simulate
	$(BIN)/capacity plan scenarios/prakerja-launch.yaml --out runs/demo/plan
	@echo "the plan for the Prakerja launch: runs/demo/plan/plan.html (and plan.md, plan.json); the simulation: runs/demo/simulate/"

# the report tests open the HTML reports in Debian's chromium (chromium-driver drives it)
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver)

# the quick tests on every core, then those marked slow one at a time (they pin the server and the load to their own cores)
test: $(STAMP) browser
	$(BIN)/pytest -q -m "not slow" -n auto
	$(BIN)/pytest -q -m slow --durations=12

# everything but the tests that start servers, Locust or a full-day run (marked slow), on every core: under a minute
test-quick: $(STAMP)
	$(BIN)/pytest -q -m "not slow" -n auto

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy models reports refserver locustfiles workflows capacity_cli.py capacity_args.py contracts.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sim.py

bench-plan: $(STAMP)
	$(BIN)/python benchmarks/bench_plan.py

clean:
	rm -rf $(VENV) runs .pytest_cache

bench-server: $(STAMP)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python benchmarks/bench_server.py

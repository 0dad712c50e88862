# Two entry points: `make run` (fetch data, train, export, serve) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= data
MODELS_DIR ?= models
RUN_DIR ?= runs/cddae
PORT ?= 8000

.PHONY: run test e2e install contract faults compose-test ui-test

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/cddae data fetch ml-100k --dest $(DATA_DIR)
	$(BIN)/cddae train --model cddae --data $(DATA_DIR)/ml-100k --output $(RUN_DIR)
	$(BIN)/cddae export --checkpoint $(RUN_DIR) --models-dir $(MODELS_DIR) --promote
	$(BIN)/cddae serve --models-dir $(MODELS_DIR) --port $(PORT)

# Lint and the in-process suite (models, export, store, app through its ASGI client): under 5 min
# (`--durations` lists the slowest, so a test that outgrows it shows in every run).
SLOW_SUITES := tests/e2e tests/test_distributed.py tests/test_retrain.py tests/test_export_variants.py \
               tests/test_paper_report.py
test: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/python -m pytest -m "not contract" --durations=15 $(SLOW_SUITES:%=--ignore=%)

# Real processes (uvicorn, the retraining job, torchrun) on loopback and Redis, and the retraining
# job's runs in-process (train, export, gate, promote; 15–30 s each), the export of every model
# variant, the paper suite's quick report: about 9 min
e2e: install
	$(BIN)/python -m pytest -m "not contract" $(SLOW_SUITES)

# The OpenAPI contract attacked by schemathesis against a real server (about a minute)
contract: install
	$(BIN)/python -m pytest -m contract

# Faults under load on loopback (own redis-server per scenario; about two minutes): docs/RELIABILITY.md
faults: install
	$(BIN)/python scripts/fault_suite.py

# The deployment for real (docker.io, debootstrap, docker-compose; first run ~15 min): scripts/compose_test.py
compose-test: install
	$(BIN)/python scripts/compose_test.py

# The admin page (/ui/) in headless chromium: screenshots into docs/ui/, checked for errors and
# layout (about a minute; needs `chromium`): scripts/ui_screenshots.py
ui-test: install
	$(BIN)/python scripts/ui_screenshots.py

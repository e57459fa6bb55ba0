# cryptoflow: `make run` starts everything, `make test` runs the tests.
# Without DATABASE_URL / REDIS_URL both use embedded PostgreSQL and Redis (data under var/).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
EMBEDDED := $(BIN)/python -m crypto_app.embedded exec
export PORT ?= 8000
export FLOWER_PORT ?= 5555

.PHONY: help install run serve test test-browser screenshots test-fast smoke worker beat flower db-migrate up down logs clean bench soak

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(INSTALLED): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $@

install: $(INSTALLED) ## create .venv and install the pinned requirements

run: $(INSTALLED) ## start API, worker, beat and Flower (embedded PostgreSQL/Redis unless the URLs are set)
	@$(EMBEDDED) --stop-after -- $(MAKE) --no-print-directory serve

serve: $(INSTALLED)
	@test -n "$$DATABASE_URL" -a -n "$$REDIS_URL" || { echo "serve needs DATABASE_URL and REDIS_URL (use make run)"; exit 2; }
	@mkdir -p var
	$(BIN)/flask db upgrade
	@echo "API      http://localhost:$(PORT)   (docs /docs, health /health, metrics /metrics)"
	@echo "Flower   http://localhost:$(FLOWER_PORT)"
	@exec $(BIN)/honcho -f Procfile start

test: $(INSTALLED) ## run the test suite against real PostgreSQL and Redis
	$(BIN)/pytest -q

test-browser: $(INSTALLED) ## the dashboard's browser tests alone (headless Chromium; also part of make test)
	$(BIN)/pytest -q tests/browser

screenshots: $(INSTALLED) ## a PNG of each dashboard page, with data, under var/screenshots/
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { echo "make screenshots needs headless Chromium: apt-get install -y chromium chromium-driver"; exit 2; }
	DASHBOARD_SCREENSHOTS=$(CURDIR)/var/screenshots $(BIN)/pytest -q tests/browser
	@ls var/screenshots/*.png

smoke: $(INSTALLED) ## end-to-end check against a running system (make run in another shell)
	$(BIN)/python tests/smoke.py --url http://localhost:$(PORT)

worker: $(INSTALLED) ## a Celery worker alone
	$(EMBEDDED) -- $(BIN)/celery -A tasks worker --loglevel=INFO --hostname=worker@%h

beat: $(INSTALLED) ## Celery beat alone (run exactly one)
	$(EMBEDDED) -- $(BIN)/celery -A tasks beat --loglevel=INFO

flower: $(INSTALLED) ## Flower alone
	$(EMBEDDED) -- $(BIN)/python -m crypto_app.flower

bench: $(INSTALLED) ## benchmark: ingest vs COPY, reads under load vs SQL (ARGS="--rows 10000000"; see bench-results/)
	$(EMBEDDED) -- $(BIN)/python -m tests.benchmarks $(ARGS)

soak: $(INSTALLED) ## simulated days of the default schedules' load with maintenance (ARGS="--days 12 --retention-days 3")
	$(EMBEDDED) -- $(BIN)/python -m tests.benchmarks.soak $(ARGS)

db-migrate: $(INSTALLED) ## apply the migrations
	$(EMBEDDED) -- $(BIN)/flask db upgrade

up: ## docker compose: build and start the full stack
	docker compose up --build -d

down: ## docker compose: stop the stack
	docker compose down

logs: ## docker compose: follow the logs
	docker compose logs -f

clean: ## stop embedded servers, remove .venv and var/ (deletes embedded data)
	-@test -x $(BIN)/python && $(BIN)/python -m crypto_app.embedded stop
	rm -rf $(VENV) var .pytest_cache

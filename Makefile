# cryptoflow: `make run` starts everything, `make test` runs the tests.
# Without DATABASE_URL / REDIS_URL both use embedded PostgreSQL and Redis (data under var/).
# crypto_app/checkout.py decides who may start and stop them: `make run` refuses while another instance of
# this checkout runs, and servers are stopped only by the last one using them (or by `make stop`).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CHECKOUT := $(BIN)/python -m crypto_app.checkout
EMBEDDED := $(CHECKOUT) exec
export PORT ?= 8000
export FLOWER_PORT ?= 5555

.PHONY: help install run serve stop status test test-browser screenshots test-fast smoke worker beat flower db-migrate up down logs clean bench soak

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(INSTALLED): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $@

install: $(INSTALLED) ## create .venv and install the pinned requirements

run: $(INSTALLED) ## start API, worker, beat and Flower (embedded PostgreSQL/Redis unless the URLs are set)
	@$(CHECKOUT) run -- $(MAKE) --no-print-directory serve

stop: ## stop the system `make run` started, then the embedded servers (unless make test/bench still use them)
	@test -x $(BIN)/python && $(CHECKOUT) stop

status: ## what runs from this checkout: the system, its ports, the embedded servers and who uses them
	@test -x $(BIN)/python && $(CHECKOUT) status

serve: $(INSTALLED)
	@test -n "$$DATABASE_URL" -a -n "$$REDIS_URL" || { echo "serve needs DATABASE_URL and REDIS_URL (use make run)"; exit 2; }
	@mkdir -p var
	$(BIN)/flask db upgrade
	@echo "API      http://$${BIND_HOST:-127.0.0.1}:$(PORT)   (docs /docs, health /health, metrics /metrics)"
	@$(BIN)/python -m crypto_app.flower login
	@exec $(BIN)/honcho -f Procfile start

test: $(INSTALLED) ## run the test suite against real PostgreSQL and Redis
	@CRYPTOFLOW_COMMAND_NAME="make test" $(EMBEDDED) --stop-after -- $(BIN)/pytest -q

test-browser: $(INSTALLED) ## the dashboard's browser tests alone (headless Chromium; also part of make test)
	$(BIN)/pytest -q tests/browser

screenshots: $(INSTALLED) ## a PNG of each dashboard page, with data, under var/screenshots/
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { echo "make screenshots needs headless Chromium: apt-get install -y chromium chromium-driver"; exit 2; }
	DASHBOARD_SCREENSHOTS=$(CURDIR)/var/screenshots $(BIN)/pytest -q tests/browser
	@ls var/screenshots/*.png

smoke: $(INSTALLED) ## end-to-end check against a running system (make run in another shell)
	$(BIN)/python tests/smoke.py --url http://localhost:$(PORT)

worker: $(INSTALLED) ## a Celery worker alone
	$(EMBEDDED) -- $(BIN)/celery -A tasks --quiet worker --loglevel=INFO --hostname=worker@%h

beat: $(INSTALLED) ## Celery beat alone (run exactly one)
	$(EMBEDDED) -- $(BIN)/celery -A tasks --quiet beat --loglevel=INFO

flower: $(INSTALLED) ## Flower alone
	$(EMBEDDED) -- $(BIN)/python -m crypto_app.flower

bench: $(INSTALLED) ## benchmark: ingest vs COPY, reads under load vs SQL (ARGS="--rows 10000000"; see bench-results/)
	@CRYPTOFLOW_COMMAND_NAME="make bench" $(EMBEDDED) --stop-after -- $(BIN)/python -m tests.benchmarks $(ARGS)

soak: $(INSTALLED) ## simulated days of the default schedules' load with maintenance (ARGS="--days 12 --retention-days 3 [--fast] [--reads]")
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
	-@test -x $(BIN)/python && $(CHECKOUT) stop
	rm -rf $(VENV) var .pytest_cache

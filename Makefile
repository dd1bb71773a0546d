# Rapport: `make run` serves a demo workspace, `make test` runs the whole suite.
# Both create .venv with Python 3.13 (or 3.12), install, and fetch front-end assets from the npm registry.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
MANAGE := $(PY) manage.py
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

# A Python 3.13 or 3.12: on PATH, else in pyenv's versions folder.
SYSTEM_PYTHON := $(shell \
  for c in python3.13 python3.12 python3; do \
    if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 13), (3, 12)))' >/dev/null 2>&1; then command -v $$c; exit 0; fi; \
  done; \
  root=$${PYENV_ROOT:-$$HOME/.pyenv}; \
  for v in $$(ls -1 $$root/versions 2>/dev/null | grep -E '^3\.1[32]\.[0-9]+$$' | sort -rV); do \
    if [ -x $$root/versions/$$v/bin/python3 ]; then echo $$root/versions/$$v/bin/python3; exit 0; fi; \
  done)

.PHONY: install assets run test migrate seed clean check-deploy

$(VENV)/.installed: pyproject.toml
	@if [ -z "$(SYSTEM_PYTHON)" ]; then \
	  echo "Rapport needs Python 3.13 (or 3.12) and found none."; \
	  echo "Install it: 'pyenv install 3.13', 'apt-get install python3.13', or from https://www.python.org/downloads/"; \
	  exit 1; fi
	@echo "Using $(SYSTEM_PYTHON) ($$($(SYSTEM_PYTHON) --version))"
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed assets

# Front-end assets come from the npm registry at install time; nothing third-party is committed.
static/vendor/.installed: static/package.json static/package-lock.json
	@command -v npm >/dev/null || { echo "npm is needed to fetch Bootstrap, htmx and Chart.js: install Node.js (apt-get install nodejs npm)."; exit 1; }
	@# Installed under var/npm, so node_modules stays out of the source tree and of the collected static files.
	mkdir -p var/npm && cp static/package.json static/package-lock.json var/npm/
	npm ci --prefix var/npm --no-audit --no-fund --loglevel=error
	mkdir -p static/vendor/bootstrap static/vendor/htmx static/vendor/chartjs
	cp var/npm/node_modules/bootstrap/dist/css/bootstrap.min.css var/npm/node_modules/bootstrap/dist/css/bootstrap.min.css.map static/vendor/bootstrap/
	cp var/npm/node_modules/bootstrap/dist/js/bootstrap.bundle.min.js var/npm/node_modules/bootstrap/dist/js/bootstrap.bundle.min.js.map static/vendor/bootstrap/
	cp var/npm/node_modules/htmx.org/dist/htmx.min.js static/vendor/htmx/
	cp var/npm/node_modules/chart.js/dist/chart.umd.min.js static/vendor/chartjs/
	touch $@

assets: static/vendor/.installed

migrate: install
	$(MANAGE) migrate --noinput

seed: migrate
	$(MANAGE) seed_demo

# web + worker + beat on the embedded default (SQLite, filesystem broker) unless DATABASE_URL / CELERY_BROKER_URL say otherwise.
run: seed
	@# On exit stop the worker and beat by their own pids (kill 0 would re-trigger this trap). A thread pool,
	@# not prefork: no forked SQLite connections, and a SIGTERM to the whole group cannot strand the worker.
	@trap 'trap - INT TERM EXIT; kill $$(jobs -p) 2>/dev/null; wait' INT TERM EXIT; \
	$(VENV)/bin/celery -A crm_site worker -Q default,lifecycle,dispatch,send --pool threads --concurrency 2 --loglevel INFO & \
	$(VENV)/bin/celery -A crm_site beat --loglevel INFO & \
	sleep 2; \
	echo; echo "  Rapport is running at http://$(HOST):$(PORT)/"; \
	echo "  Sign in as  demo / rapport-demo   (Django admin: /admin/ with the same login)"; echo; \
	$(MANAGE) runserver $(HOST):$(PORT) --noreload

test: install
	@source .ci/test-env.sh && $(PY) -m pytest $(PYTEST_ARGS)

check-deploy: install
	RAPPORT_ENV=production DJANGO_SECRET_KEY=$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))') \
	  DJANGO_ALLOWED_HOSTS=rapport.example.com $(MANAGE) check --deploy --fail-level WARNING

clean:
	rm -rf $(VENV) node_modules static/vendor var

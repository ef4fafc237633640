# Stello for Django. `make run` serves on 127.0.0.1:8000 (PORT overrides); `make test` runs the suite.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
HOST ?= 127.0.0.1

.PHONY: run test lint bench clean constraints

# Every install goes through constraints.txt, which pins every transitive dependency too.
$(VENV)/.installed-runtime: requirements.txt constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-runtime requirements-dev.txt constraints.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	@touch $@

# Re-lock after changing requirements*.txt: resolve them afresh in a throw-away virtualenv and
# write what it installed, pinned, to constraints.txt (keeping its header).
constraints:
	rm -rf .stello/lock-venv
	$(PYTHON) -m venv .stello/lock-venv || python3 -m venv .stello/lock-venv
	.stello/lock-venv/bin/python -m pip install --quiet --upgrade pip
	.stello/lock-venv/bin/python -m pip install --quiet -r requirements-dev.txt
	{ grep '^#' constraints.txt; .stello/lock-venv/bin/python -m pip freeze --exclude-editable \
	    | sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .stello/lock-venv

# Development: DEBUG=1 (unless set), which also allows the embedded SECRET_KEY.
# stello_project.serve starts daphne with the server limits (WebSocket frames, pings) set from
# the STELLO_* settings.
run: export DEBUG ?= 1
run: $(VENV)/.installed-runtime
	$(PY) manage.py migrate --noinput
	$(PY) manage.py ensure_dev_key
	@echo "Web console: http://$(HOST):$(PORT)/console/ (sign in with the key above)"
	$(PY) -m stello_project.serve daphne -b $(HOST) -p $(PORT)

test: $(VENV)/.installed-dev
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed-dev  # the WebSocket phase needs the websockets client
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

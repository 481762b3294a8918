# `make run` and `make test` set up .venv from requirements.txt when it is missing or stale (--no-compile:
# bytecode is written on first import, only for the modules used: a fresh venv in 23 s instead of 41 s).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.requirements-installed
PORT ?= 5000
# Two test processes per core: half of the suite's time is waiting on servers, workers and browsers
# (2 cores, a fresh clone: 291 s with -n 2, 224 s with -n 4, 235 s with -n 6).
JOBS ?= $(shell echo $$(( 2 * $$(nproc) )))

.PHONY: run test bench clean

$(STAMP): requirements.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --no-compile --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

run: $(STAMP)
	@$(VENV)/bin/python omniwise.py init --port $(PORT)
	@echo "Open http://127.0.0.1:$(PORT)/ in your browser (Ctrl-C stops both processes)."
	@OMNIWISE_PORT=$(PORT) $(VENV)/bin/honcho start -f Procfile

# Bytecode on: the suite starts hundreds of Python processes, and where PYTHONDONTWRITEBYTECODE is set (this
# machine's image sets it) each compiled every module it imported again (a fresh clone: 320 s CPU, 289 s with it).
test: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/python -m pytest -n $(JOBS)

bench: $(STAMP)
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

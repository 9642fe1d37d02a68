# Two commands on a fresh machine:
#   make demo   set up .venv, then run construction -> transform -> GCA evaluation -> report on the
#               repo's sample book with the embedded offline model (no key, no network)
#   make test   set up .venv, then run the test suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# The stamp changes with the requirements and with the backend's build recipe, so either change reinstalls.
STAMP   := $(VENV)/.installed-$(shell cat requirements.txt coser/backend.py | cksum | cut -d' ' -f1)

MODEL   ?= local

.PHONY: venv test demo

venv: $(STAMP)

# The embedded model's backend is built portably (no native CPU detection) by coser.backend, once per machine
# kind, and proved by running the model once in a child process before the stamp is written.
$(STAMP): requirements.txt coser/backend.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m coser.backend install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m coser.backend check
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

demo: venv
	$(BIN)/python -m coser.demo --model $(MODEL)

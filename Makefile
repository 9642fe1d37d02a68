# Two commands on a fresh machine:
#   make demo   set up .venv, then run construction -> transform -> GCA evaluation -> report on the
#               repo's sample book with the embedded offline model (no key, no network)
#   make test   set up .venv, then run the test suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

MODEL   ?= local

.PHONY: venv test demo

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

demo: venv
	$(BIN)/python -m coser.demo --model $(MODEL)


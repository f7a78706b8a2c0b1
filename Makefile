# Sluice: `make demo` runs the whole job offline; `make test` runs the test suite. Both install first.
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $@

demo: install
	$(PY) -m sluice.devtools.demo

test: install
	$(PY) -m pytest

clean:
	-$(PY) -m sluice.devtools.embedded_pg stop .sluice/pg
	rm -rf .sluice

# shop-mesh. The README's two commands are `make run` and `make test`; both
# install what they need first (a venv with the project, and the binaries).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install tools protos baseline test test-fast lint run demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

# Binaries that do not come from PyPI (nats-server); installs with apt where it can.
tools:
	@scripts/ensure-tools.sh

protos: install
	$(PY) -m mesh.contracts.codegen
	$(PY) -m mesh.edge.render

# Record today's contracts as released (the baseline breaking changes are checked against).
baseline: install
	$(PY) -m mesh.contracts.baseline

test: install tools
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m services.tools.contract_lint
	$(PY) -m mesh.contracts.baseline --check

run: install tools
	$(PY) -m mesh.cli up

demo: install tools
	$(PY) -m mesh.cli demo

bench: install tools
	$(PY) -m bench

clean:
	rm -rf .run build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

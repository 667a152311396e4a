# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install system-deps demo test test-unit bench up down clean

# Java runs the broker and Maven fetches it; Slurm and munge run the local cluster.
# Install them from Debian when missing and we may.
DEBS := default-jre-headless maven slurmctld slurmd slurm-client slurmrestd slurm-wlm-jwt-plugin munge
system-deps:
	@command -v java >/dev/null && command -v mvn >/dev/null && command -v slurmctld >/dev/null \
	  && command -v slurmd >/dev/null && command -v munged >/dev/null && command -v slurmrestd >/dev/null \
	  && ls /usr/lib/*/slurm-wlm/auth_jwt.so >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS); \
	  else echo "Needed from Debian: apt-get install $(DEBS)"; exit 1; fi; }

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: system-deps $(STAMP)
	$(BIN)/python -c "from ops.kafka import LocalKafka; from ops.settings import Settings; s = Settings.from_env(); LocalKafka(s.cache_dir, s.data_dir / 'kafka').install()"
	$(BIN)/python -m ops.compose_schema

demo: install
	$(BIN)/opsloop demo

# The test session starts its own Kafka (tests/conftest.py) and stops it at the end.
test: install
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest -m unit

bench: install
	$(BIN)/opsloop bench

up: install
	$(BIN)/opsloop up

down:
	$(BIN)/opsloop down

clean:
	rm -rf $(VENV) var .pytest_cache

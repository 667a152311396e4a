# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install system-deps llm-deps demo test test-slow test-unit test-faults simbench-data bench noc-screenshots up down clean

# Java runs the broker and Maven fetches it; Slurm and munge run the local cluster; Chromium and its
# driver run the NOC page test; snmpd serves the SNMP source tests' PDU and snmptrap (snmp) sends
# their traps; Prometheus and its node-exporter are the real parts the Prometheus sources are tested
# against; HAProxy is the balancer the LLM sink steers in front of the test LLM servers, and hey the
# load generator the flex-shed test streams completions through it with. Install them
# from Debian when missing and we may.
DEBS := default-jre-headless maven slurmctld slurmd slurm-client slurmrestd slurm-wlm-jwt-plugin munge \
        chromium chromium-driver snmpd snmp prometheus prometheus-node-exporter haproxy hey
system-deps:
	@command -v java >/dev/null && command -v mvn >/dev/null && command -v slurmctld >/dev/null \
	  && command -v slurmd >/dev/null && command -v munged >/dev/null && command -v slurmrestd >/dev/null \
	  && ls /usr/lib/*/slurm-wlm/auth_jwt.so >/dev/null 2>&1 \
	  && command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v snmpd >/dev/null \
	  && command -v snmptrap >/dev/null && command -v prometheus >/dev/null \
	  && command -v prometheus-node-exporter >/dev/null && command -v haproxy >/dev/null \
	  && command -v hey >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS); \
	  else echo "Needed from Debian: apt-get install $(DEBS)"; exit 1; fi; }

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: system-deps $(STAMP)
	$(BIN)/python -c "from opsloop.ops.kafka import LocalKafka; from opsloop.config.settings import Settings; s = Settings.from_env(); LocalKafka(s.cache_dir, s.data_dir / 'kafka').install()"
	$(BIN)/python -m opsloop.ops.compose_schema

# The tests' LLM server: llama-cpp-python built from source once into the opsloop cache (outside the repo),
# then reused. The flags and why: DEVELOPERS.md. `make demo` does not need it.
OPSLOOP_CACHE := $(or $(OPSLOOP_CACHE_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/opsloop)
WHEELS        := $(OPSLOOP_CACHE)/wheels
LLAMA_VERSION := $(shell sed -n 's/^llama[-_]cpp[-_]python==//p' constraints.txt)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF
LLM_STAMP     := $(VENV)/.llm-installed

llm-deps: install $(LLM_STAMP)

$(LLM_STAMP): $(STAMP)
	@command -v c++ >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential; \
	  else echo "a C/C++ compiler is needed to build llama-cpp-python (Debian: apt-get install build-essential)"; exit 1; fi; }
	@ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || { \
	  echo "building llama-cpp-python $(LLAMA_VERSION) once into $(WHEELS) (tens of minutes on 2 cores)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(BIN)/pip wheel -q --no-deps --wheel-dir $(WHEELS) llama-cpp-python==$(LLAMA_VERSION); }
	$(BIN)/pip install -q -c constraints.txt --find-links $(WHEELS) --only-binary llama-cpp-python -e '.[test,llm]'
	touch $@

demo: install
	$(BIN)/opsloop demo

# The test session starts its own Kafka and LLM server (tests/conftest.py) and stops them at the end.
test: install llm-deps
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m "not slow"

# The long end-to-end runs (twin demo, a closed-loop day on the twin, flexible shedding): about 10 minutes more.
test-slow: install llm-deps
	$(BIN)/python -m pytest -m slow

test-unit: install
	$(BIN)/python -m pytest -m unit

# The fault tests alone (broker restart, leader change, killed and added workers, slow consumer); `make test` runs them too.
test-faults: install
	$(BIN)/python -m pytest -m faults

# On a host with NVIDIA GPUs (as root): NVML power limits and SM clock locks made, read back and undone,
# with each GPU's board power printed; skipped elsewhere, as in `make test`.
test-gpu: install
	$(BIN)/python -m pytest -m gpu -s

# The SimBench load profiles (Open Database License), fresh curves for `opsloop eval peaks-suite --families simbench`:
# the package's wheel from PyPI into the opsloop cache, read in place (not installed, not redistributed).
SIMBENCH_VERSION := $(shell sed -n 's/^SIMBENCH_VERSION = "\(.*\)"/\1/p' ops/evals/peak_curves.py)
simbench-data: install
	$(BIN)/pip download -q --no-deps --only-binary=:all: -d $(OPSLOOP_CACHE)/simbench simbench==$(SIMBENCH_VERSION)

bench: install
	$(BIN)/opsloop bench

# The README's pictures of the NOC (docs/noc-*.png): the bench's data set in Debian's headless Chromium.
noc-screenshots: install
	$(BIN)/python -m opsloop.ops.noc_screenshots --out docs

up: install
	$(BIN)/opsloop up

down:
	$(BIN)/opsloop down

clean:
	rm -rf $(VENV) var .pytest_cache

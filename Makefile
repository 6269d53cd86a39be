# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck unit proto bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt --upgrade pip
	# PIP_CONSTRAINT also pins the isolated build environment (setuptools).
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip install -q -e '.[local,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/attrgate serve --local-cognito --insecure --policies policies --region us-east-1 \
		--listen 127.0.0.1:50051 --admin-listen 127.0.0.1:50052

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check server tests bench
	$(BIN)/ruff format --check server tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q

# Regenerate the committed protobuf stubs (a test fails when they are stale).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=server --pyi_out=server \
		--grpc_python_out=server proto/attrgate/v1/attrgate.proto

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Benchmarks print measured figures beside a baseline; they are not part of `make test`.
bench: $(STAMP)
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_observability.py
	$(BIN)/python bench/bench_sms_store.py

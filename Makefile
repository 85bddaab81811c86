# The README's front door: `make serve` and `make test`, each on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch is pinned to the CPU build that lies on these machines' disk; an unpinned torch pulls
# a multi-GB CUDA build. Install it before the `export` extra so that extra adds nothing.
# Elsewhere, take PyTorch's CPU wheel index (the tests need no GPU), e.g.
#   make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# `make serve` never installs torch.
TORCH  ?= torch==2.13.0

.PHONY: serve test bench lint clean image-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The gRPC front end's protobuf modules, generated from app/grpc/protos (not in git). grpcio-tools
# is a build tool: `make serve` runs it from a folder of its own, outside the server's venv.
PROTOS = app/grpc/generated/__init__.py
$(PROTOS): app/grpc/protos/*.proto app/grpc/protos/generate.py | $(BIN)/python
	$(BIN)/python -c 'import grpc_tools' 2>/dev/null || $(BIN)/pip install -q --target $(VENV)/.protoc grpcio-tools
	PYTHONPATH=$(VENV)/.protoc $(BIN)/python app/grpc/protos/generate.py

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[cpu]'
	$(MAKE) $(PROTOS)
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[cpu,export,dev,bench]'
	$(MAKE) $(PROTOS)
	touch $@ $(VENV)/.serve-installed

## Start the server on the shipped demo model (http://127.0.0.1:8000).
serve: $(VENV)/.serve-installed $(PROTOS)
	$(BIN)/lstm-serve

# The server tests again against two HTTP workers and an engine process (the whole suite above
# runs one process unless a test asks for more); modules without a server, or that already test
# both layouts, are left out of this second pass.
TWO_WORKERS_SKIP = test_batcher test_config test_inference test_padding test_protocol test_runtime test_scheduling test_wire \
                   test_shutdown test_streams test_supervisor test_handoff

## Run the whole test suite (then the server tests with --workers 2).
test: $(VENV)/.test-installed $(PROTOS)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	LSTM_SERVE_TEST_WORKERS=2 $(BIN)/python -m pytest -q tests/app $(foreach m,$(TWO_WORKERS_SKIP),--ignore=tests/app/$(m).py) $(PYTEST_ARGS)

## Build the CPU image with podman on a Debian base made here, run it plainly and as k8s/base
## runs it (root; installs podman, runc, mmdebstrap when missing; docs/image.md). CI runs it.
image-check:
	deploy/image-check.sh

## Run the benchmark (see bench/README.md).
bench: $(VENV)/.test-installed
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

# Developer entry points: setup, test, lint, serve, bench, demo. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch. On machines without a local wheel, point TORCH_INDEX at
# https://download.pytorch.org/whl/cpu (the provisioning uses the same two settings).
TORCH_SPEC ?= torch==2.13.0+cpu
TORCH_INDEX ?=
APT_PACKAGES := chromium chromium-driver debootstrap systemd-container pebble bind9 \
	bind9-utils bind9-dnsutils tinyproxy openssl iproute2 ca-certificates curl zstd openssh-client
MODEL ?= yolov3-tiny
PYTEST_ARGS ?=

.PHONY: setup apt venv weights test lint format serve bench demo demo-down clean

setup: apt venv weights

apt:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "apt: installing $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "apt: all packages present"; fi; \
	else echo "apt: not root or no apt-get, skipping system packages (e2e and browser tests will skip)"; fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || \
	  $(BIN)/pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[test]'

weights: venv
	$(BIN)/detector fetch-weights $(MODEL) --dest weights

test:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_ARGS)

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

serve:
	DETECTOR_MODEL=$(MODEL) DETECTOR_WEIGHTS_DIR=weights $(BIN)/detector serve --bind 127.0.0.1:5000

bench:
	$(BIN)/python -m bench.run

demo:  # test bed (1 host) up, provision, fab deploy; prints the URL and a curl; stays up
	$(BIN)/python -m deploy.demo up

demo-down:  # stop the demo's test bed (by recorded PIDs)
	$(BIN)/python -m deploy.demo down

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache test-artifacts

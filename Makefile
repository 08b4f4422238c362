# Entry points: setup, setup-control (deploy tools only), test, lint, serve, bench, demo. README.md
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch: the provisioning's two settings, read from the one file holding them
# (detector_torch_spec, detector_torch_index_url). `make torch` tries the configured package
# sources first (pip's own config: an index, find-links), then TORCH_INDEX (PyTorch's CPU index).
SETTINGS := ansible/roles/detector/defaults/main.yml
setting = $(shell sed -n 's/^$(1):[[:space:]]*\([^[:space:]\#]*\).*/\1/p' $(SETTINGS) | tr -d '"')
TORCH_SPEC ?= $(call setting,detector_torch_spec)
TORCH_INDEX ?= $(call setting,detector_torch_index_url)
APT_PACKAGES := chromium chromium-driver debootstrap systemd-container pebble bind9 \
	bind9-utils bind9-dnsutils tinyproxy openssl iproute2 ca-certificates curl zstd openssh-client nginx
MODEL ?= yolov3-tiny
PYTEST_ARGS ?=

.PHONY: setup setup-control apt torch torch-settings venv weights test lint format serve bench \
	demo demo-down clean

setup: apt venv weights

# Only what a person who provisions and deploys needs (ansible, fabric, the release wheel's build):
# no torch, no service packages, no apt packages. pip >= 25.1 reads pyproject's dependency groups.
setup-control: $(BIN)/python
	$(BIN)/pip install -q "pip>=25.1"
	$(BIN)/pip install -q --group control

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

torch: $(BIN)/python
	@test -n "$(TORCH_SPEC)" || { echo "torch: no detector_torch_spec in $(SETTINGS)"; exit 1; }
	@if $(BIN)/pip install -q "$(TORCH_SPEC)" 2>/dev/null; then \
	  echo "torch: $(TORCH_SPEC) present or installed from the configured package sources"; \
	elif [ -n "$(TORCH_INDEX)" ]; then \
	  echo "torch: $(TORCH_SPEC) is not in the configured package sources; trying $(TORCH_INDEX)"; \
	  $(BIN)/pip install -q "$(TORCH_SPEC)" --extra-index-url "$(TORCH_INDEX)"; \
	else echo "torch: $(TORCH_SPEC) not found and TORCH_INDEX is empty"; exit 1; fi

torch-settings:  # what `make torch` installs, from where (tests compare it with the provisioning)
	@echo "TORCH_SPEC=$(TORCH_SPEC)"
	@echo "TORCH_INDEX=$(TORCH_INDEX)"

venv: torch
	$(BIN)/pip install -q "pip>=25.1"
	$(BIN)/pip install -q -e . --group test

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

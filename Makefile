# mmfm: `make demo` runs the end-to-end job on real data, `make test` runs the test suite.
# Both set everything up on a fresh machine: the Debian packages, the venv and the Python packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_PKGS := fonts-noto-color-emoji unicode-data
TEST_PKGS := $(DEMO_PKGS) chromium dataset-fashion-mnist libcairo2   # chromium: the service page's browser test; Fashion-MNIST: the old-domain probe
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Evaluation-only data from npm (data_recipes/twemoji): another artist's emoji, cached outside the repo.
MMFM_CACHE ?= $(HOME)/.cache/mmfm
TWEMOJI := $(MMFM_CACHE)/emoji-datasource-twitter-16.0.0
# The general model's extra sources (data_recipes/openmoji, country_flags; fashion_mnist and icon_theme: Debian).
OPENMOJI := $(MMFM_CACHE)/openmoji-17.0.0
FLAGS := $(MMFM_CACHE)/svg-country-flags-1.2.10
GENERAL_PKGS := $(DEMO_PKGS) dataset-fashion-mnist libcairo2 adwaita-icon-theme openclipart-svg

.PHONY: demo general general-ab general-data test venv apt-deps demo-deps twemoji continued clean help

help:
	@echo "make demo   - build emoji shards, continue pre-training CLIP (ImageNet + MiniLM towers), captioner, VQA, evaluate on Noto, Twemoji and photos, write runs/demo/report.html"
	@echo "make general - the model to try on your own pictures: CLIP + captioner on every openly licensed source (Noto, OpenMoji, flags, Fashion-MNIST), leave-one-source-out report in runs/general/"
	@echo "make general-ab - the general job plus its training A/Bs (class-balanced sampling, augmentation; ab.yaml)"
	@echo "make test   - run the test suite (CPU, offline)"
	@echo "make continued - continue pre-training pretrained towers on emoji; compare what they gained and forgot"
	@echo "make twemoji - fetch Twemoji (npm emoji-datasource-twitter) into $(TWEMOJI) for data_recipes/twemoji"

apt-deps:
	@bash tools/ensure_apt.sh $(TEST_PKGS)

demo-deps:
	@bash tools/ensure_apt.sh $(DEMO_PKGS)

twemoji: $(TWEMOJI)/package.json

$(TWEMOJI)/package.json:
	@bash tools/fetch_npm.sh emoji-datasource-twitter 16.0.0 $(TWEMOJI)

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,demo,parquet,sources]'
	@touch $@

venv: $(VENV)/.installed

test: apt-deps venv
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 tests

demo: demo-deps venv twemoji   # twemoji: the transfer stage reads another artist's emoji (evaluation only)
	MALLOC_ARENA_MAX=2 $(VENV)/bin/mmfm demo --out runs/demo   # fewer glibc arenas: less fragmented memory

# The general model: every source in data_recipes/ that the registries carry, one deduplicated mix, the demo's CLIP
# recipe continued on it, a captioner, and the leave-one-source-out table (runs/general/report.html). Reuses the
# Noto-only demo model in runs/demo/clip as a comparison arm when it exists. Budget 45 min, 4 GB; measured 38:41,
# 3.66 GiB peak from a fresh clone with its venv (docs/demo.md).
general-data: twemoji $(OPENMOJI)/package.json $(FLAGS)/package.json
	@bash tools/ensure_apt.sh $(GENERAL_PKGS)

$(OPENMOJI)/package.json:
	@bash tools/fetch_npm.sh openmoji 17.0.0 $(OPENMOJI)

$(FLAGS)/package.json:
	@bash tools/fetch_npm.sh svg-country-flags 1.2.10 $(FLAGS)

general: general-data venv
	MALLOC_ARENA_MAX=2 $(VENV)/bin/mmfm demo --job general --out runs/general

# The general job plus its training A/Bs (configs/experiments/general/ab.yaml: class-balanced sampling and
# augmentation, each against a baseline of the same length), outside `make general`'s budget; after `make general`
# only the A/Bs and the report run.
general-ab: general-data venv
	MALLOC_ARENA_MAX=2 $(VENV)/bin/mmfm demo --job general --out runs/general --ab

# Issue 13's measured run: three ways to continue pre-training (image tower locked / last 2 groups / all) from
# the same pretrained towers, compared on the new domain and an old one (runs/continued/compare/compare.html).
continued: venv twemoji
	@bash tools/ensure_apt.sh $(DEMO_PKGS) dataset-fashion-mnist
	$(PY) tools/continued_pretraining.py --out runs/continued

clean:
	rm -rf runs .pytest_cache

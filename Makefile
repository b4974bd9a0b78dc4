# Everything runs inside .venv, built from python3 with the versions pinned in constraints.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
comma  := ,
# Optional task families to install with `make install`: EXTRAS=mujoco (the MuJoCo locomotion
# families), EXTRAS=metaworld (Meta-World ML1), EXTRAS=mujoco,metaworld (both).
EXTRAS ?=
# What `make dev` (and so test, lint, CI) adds: every optional family, so `make test` runs them.
DEV_EXTRAS ?= mujoco,metaworld
# One stamp per set of extras: asking for other extras installs again.
STAMP  := $(VENV)/.installed-stamp$(if $(EXTRAS),-$(subst $(comma),-,$(EXTRAS)))
DEV_STAMP := $(VENV)/.dev-installed-stamp$(if $(DEV_EXTRAS),-$(subst $(comma),-,$(DEV_EXTRAS)))

.PHONY: install dev proto check-proto lint test test-slow demo bundle-checkpoints clean

# What running needs (train, eval and its --plot, serve, demo): the package with matplotlib, and
# the client; no development tools. EXTRAS adds optional task families.
install: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml envs/pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt -e ./client \
	  -e './envs$(if $(EXTRAS),[$(EXTRAS)])' -e '.[plot$(if $(EXTRAS),$(comma)$(EXTRAS))]'
	touch $@

# The development tools on top (pytest, ruff, mypy, grpcio-tools, ...): test, lint and proto
# pull them in themselves. The optional families' packages too (DEV_EXTRAS); where one cannot
# install, the rest still does, the reason is printed, and pytest skips those families' tests.
dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e ./client -e ./envs -e '.[dev]'
	$(if $(DEV_EXTRAS),$(PIP) install --quiet -c constraints.txt -e './envs[$(DEV_EXTRAS)]' \
	  || echo "make dev: the extras $(DEV_EXTRAS) did not install (pip's reason above);" \
	     "the tests of their task families will be skipped" >&2)
	touch $@

# Regenerate the Python stubs in client/metarl_client/proto from proto/ (grpcio-tools is pinned).
proto: $(DEV_STAMP)
	$(BIN)/python scripts/gen_proto.py

# Fails when the committed stubs differ from what `make proto` generates.
check-proto: proto
	@git diff --exit-code --stat -- client/metarl_client/proto \
	  && test -z "$$(git status --porcelain -- client/metarl_client/proto)" \
	  || (echo "generated stubs are stale: run 'make proto' and commit the result" >&2; exit 1)

# ruff, mypy, and buf lint (STANDARD, proto/buf.yaml) of the contract with the pinned buf that
# scripts/ensure-buf.sh installs into .tools/ (from npm).
lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	cd proto && "$$(../scripts/ensure-buf.sh)" lint

test: $(DEV_STAMP)
	$(BIN)/python -m pytest

test-slow: $(DEV_STAMP)
	$(BIN)/python -m pytest -m slow

demo: $(STAMP)
	$(BIN)/metarl demo

# Retrains the checkpoints shipped in metarl/data/checkpoints with each family's default preset
# (metarl/presets/<family>.toml: the one place their settings live; the README records these).
# The robot checkpoints need the optional families (the dev install has them) and about an hour
# of CPU; the shipped half-cheetah-dir/1 and ml1-reach/1 were made differently (shorter or in two
# stages: docs/training-results.md, "Robot families").
bundle-checkpoints: $(DEV_STAMP)
	$(BIN)/metarl train --env metarl/CartPoleFamily-v0 --seed 1 \
	  --out metarl/data/checkpoints/cartpole-family/1 --name cartpole-family --version 1 --overwrite \
	  --metrics-csv runs/cartpole-family-1.metrics.csv
	$(BIN)/metarl train --env metarl/Navigation2D-v0 --seed 1 \
	  --out metarl/data/checkpoints/navigation-2d/1 --name navigation-2d --version 1 --overwrite \
	  --metrics-csv runs/navigation-2d-1.metrics.csv
	$(BIN)/metarl train --env metarl/HalfCheetahDir-v0 --seed 0 \
	  --out metarl/data/checkpoints/half-cheetah-dir/1 --name half-cheetah-dir --version 1 \
	  --overwrite --metrics-csv runs/half-cheetah-dir-1.metrics.csv
	$(BIN)/metarl train --env metarl/ML1Reach-v3 --seed 0 \
	  --out metarl/data/checkpoints/ml1-reach/1 --name ml1-reach --version 1 --overwrite \
	  --metrics-csv runs/ml1-reach-1.metrics.csv
	rm -rf metarl/data/checkpoints/*/1.trainer-state   # resumable state: not shipped

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

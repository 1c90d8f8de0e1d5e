# The two commands of the README: `make run` and `make test`. Everything else is what they call.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export FLASK_APP := wsgi.py

.PHONY: run test appnode setup setup-dev translations db lint pytest bench wrk i18n-extract clean

# The console with gunicorn, and the scheduler process beside it (stopped together).
run: setup db
	@$(BIN)/flask scheduler run & scheduler=$$!; trap 'kill $$scheduler 2>/dev/null' EXIT INT TERM; \
	MPIM_COOKIE_SECURE=$${MPIM_COOKIE_SECURE:-0} $(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

test: setup-dev lint pytest

# A reference application node beside the console: init (once), join with an enrollment token (waits for the
# approval), then serve over HTTPS with mutual TLS. `make appnode NAME=jx ENROLL=<token> DIVISION=360000 PORT=8443`
DIVISION ?= 360000
PORT ?= 8443
# The console `make run` serves: MPIM_BIND's port, on loopback when it binds every address.
MPIM_BIND ?= 127.0.0.1:5000
REGISTRY ?= http://$(patsubst :%,127.0.0.1:%,$(patsubst [::]:%,127.0.0.1:%,$(patsubst 0.0.0.0:%,127.0.0.1:%,$(MPIM_BIND))))
appnode: setup
	@test -n "$(NAME)" || { echo "usage: make appnode NAME=jx ENROLL=<token> [DIVISION=360000] [PORT=8443] [REGISTRY=$(REGISTRY)]"; exit 2; }
	@$(BIN)/python -m app.appnode --data instance/appnode-$(NAME) init --if-missing --registry $(REGISTRY) \
	  --division $(DIVISION) --endpoint https://127.0.0.1:$(PORT) --listen 127.0.0.1:$(PORT)
	@$(BIN)/python -m app.appnode --data instance/appnode-$(NAME) join --if-needed --token "$(ENROLL)"
	@$(BIN)/python -m app.appnode --data instance/appnode-$(NAME) run

setup: $(BIN)/.installed translations

setup-dev: setup $(BIN)/.installed-dev browser openssl

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(BIN)/.installed-dev: requirements-dev.txt $(BIN)/.installed
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

translations: $(BIN)/.installed
	@$(BIN)/pybabel -q compile -d app/translations

# Debian's Chromium drives the browser tests (Playwright never downloads a browser here);
# a CJK font makes the zh-CN screenshots legible.
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! fc-list :lang=zh 2>/dev/null | grep -q .; then \
	  echo "installing Debian's chromium and a CJK font for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null; \
	fi

openssl:
	@command -v openssl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }

db: setup
	@$(BIN)/flask db upgrade
	@$(BIN)/flask divisions import
	@$(BIN)/flask users ensure-admin
	@$(BIN)/flask ca init --if-missing --generate-passphrase

lint: setup-dev
	$(BIN)/ruff check .

pytest: setup-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# bench/routes.py loads gunicorn with wrk, a real HTTP load generator.
wrk:
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

bench: setup-dev wrk
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

i18n-extract: setup
	$(BIN)/pybabel extract -F babel.cfg -k _l -k lazy_gettext -o app/translations/messages.pot .
	$(BIN)/pybabel update -i app/translations/messages.pot -d app/translations --no-fuzzy-matching --ignore-obsolete

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# phoned: `make test` and `make demo` work on a fresh Debian 12 machine as root.
# Each installs what it needs (apt packages once, a venv in .venv), then runs.
# `make test` is what CI runs: the host's lint and tests, then the arm64 image built
# (scripts/build-image, which installs its own tools) and proven under QEMU
# (scripts/test-arm64). One after the other: the host's tests time packets to the
# millisecond, and with the image building beside them (even at the lowest priority, on
# tmpfs) three runs in three failed a different timing test each.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := .make
APT_PACKAGES := kamailio kamailio-presence-modules kamailio-tls-modules sip-tester tcpdump \
                nftables iproute2 dnsmasq-base openssl wireguard-go wireguard-tools \
                python3-venv python3-dev gcc procps systemd shellcheck nginx stress-ng
IMAGE  := build/image/phoned-rootfs-arm64.tar.gz
# What goes into the image: it is rebuilt only when one of these changed.
IMAGE_INPUTS := scripts/build-image scripts/binfmt-arm64 setup.cfg pyproject.toml README.md \
                $(shell find firmware board -type f -not -path '*/__pycache__/*' -not -path '*.egg-info/*')

.PHONY: test test-host demo deps lint unit integration image arm64 bench clean

test: test-host arm64

test-host: deps
	$(BIN)/pre-commit run --all-files --show-diff-on-failure
	$(BIN)/pytest -q -p no:cacheprovider --durations=15

demo: deps
	$(BIN)/phoned demo

deps: $(STAMP)/apt $(STAMP)/venv

lint: deps
	$(BIN)/pre-commit run --all-files --show-diff-on-failure

unit: $(STAMP)/venv
	$(BIN)/pytest -q tests/unit tests/contract

integration: deps
	$(BIN)/pytest -q tests/integration

image: $(IMAGE)

$(IMAGE): $(IMAGE_INPUTS)
	scripts/build-image $(if $(IMAGE_WORK),--work $(IMAGE_WORK))

arm64: $(IMAGE)
	scripts/test-arm64

bench: deps
	$(BIN)/python scripts/bench-failover
	$(BIN)/python scripts/bench-grid
	$(BIN)/python scripts/bench-provisioning

$(STAMP)/apt: Makefile
	@mkdir -p $(STAMP)
	@if [ "$$(id -u)" != 0 ]; then echo "make: run as root (apt-get, network namespaces)"; exit 1; fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES)
	# the lab runs its own nginx and Kamailio in namespaces: not the packages' services
	systemctl disable --now nginx.service >/dev/null 2>&1 || true
	@touch $@

$(STAMP)/venv: setup.cfg pyproject.toml Makefile
	@mkdir -p $(STAMP)
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	# the lab (firmware/phonelab) beside the product: importable here, never in the wheel
	$(BIN)/python -c 'import pathlib, site; pathlib.Path(site.getsitepackages()[0], "phonelab.pth").write_text("$(CURDIR)/firmware\n")'
	@touch $@

clean:
	rm -rf $(STAMP) $(VENV) build *.egg-info firmware/*.egg-info

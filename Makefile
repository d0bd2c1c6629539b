# libvirt-exporter: `make test` is all CI runs (see .ci/run); `make run` tries it out.
PYTHON := python3
VENV   := .venv
STAMP  := $(VENV)/.deps-installed
# Debian packages that building libvirt-python from its PyPI source needs.
BUILD_PACKAGES := libvirt-dev pkg-config gcc
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Use the system libvirtd when it answers, else libvirt's built-in test driver.
URI  = $(shell [ -S /run/libvirt/libvirt-sock-ro ] && virsh -r -c qemu:///system version \
         >/dev/null 2>&1 && echo qemu:///system || echo test:///default)
ARGS =

.PHONY: deps test lint run docs rules dashboards deb bench bench-real bench-outage clean

# deps: build packages, the venv and the project with its test extras. The stamp
# makes a re-run free until pyproject.toml changes.
deps: $(STAMP)

# Debian's own python3 lacks venv support and headers (python3-venv, python3-dev);
# a pyenv or other python that has them is used as it is.
$(STAMP): pyproject.toml
	@missing=""; \
	for p in $(BUILD_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	$(PYTHON) -c 'import ensurepip, os, sys, sysconfig; \
	  sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  2>/dev/null || missing="$$missing python3-venv python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# test: start libvirtd (installing it if needed), lint, then the whole suite.
test: deps
	bash scripts/ensure-libvirtd.sh
	$(MAKE) lint
	LIBVIRT_EXPORTER_TEST_URI=qemu:///system $(VENV)/bin/pytest

# lint: ruff's checks and formatting, mypy as configured in pyproject.toml.
lint:
	$(VENV)/bin/ruff check libvirt_exporter tools tests benchmarks
	$(VENV)/bin/ruff format --check libvirt_exporter tools tests benchmarks
	$(VENV)/bin/mypy

# run: the exporter in the foreground, e.g. `make run ARGS=--web.listen-address=:9177`.
run: deps
	exec $(VENV)/bin/libvirt-exporter --libvirt.uri=$(URI) $(ARGS)

# docs: regenerate docs/metrics.md from the metric definitions (a unit test checks it).
docs: deps
	$(VENV)/bin/python -m tools.metrics_doc > docs/metrics.md.new
	mv docs/metrics.md.new docs/metrics.md

# rules: validate the alerting and compatibility rules and run their unit tests (the suite does too).
rules:
	promtool check rules dashboards/alerts.yml dashboards/compat-*.yml
	promtool test rules dashboards/tests/*_test.yml

# dashboards: validate the dashboards' JSON and queries, and the alerting rules with promtool.
dashboards: deps
	$(VENV)/bin/pytest -q tests/unit/test_dashboards.py tests/unit/test_rules.py

# bench: the exporter on a simulated hypervisor at 100, 500 and 2,000 domains, healthy, with every
# tenth domain frozen, and half of them hung (dead storage, stopped and frozen QEMUs); prints one
# table of figures (docs/benchmarks.md), in about five minutes.
bench: deps
	$(VENV)/bin/python -m benchmarks.simulated

# bench-real: this exporter against Debian's prometheus-libvirt-exporter on the system libvirtd,
# with tiny real VMs; holds the shared libvirtd's lock while it runs (docs/benchmarks.md).
bench-real: deps
	flock /tmp/system-libvirtd.lock sh -c \
	  'bash scripts/ensure-libvirtd.sh && $(VENV)/bin/python -m benchmarks.real_libvirt'

# bench-outage: hung VMs by the dozen (frozen QEMUs, a dead storage) on the system libvirtd with the
# exporter's default flags; prints what stayed fresh, stuck threads and the signals caught.
bench-outage: deps
	flock /tmp/system-libvirtd.lock sh -c \
	  'bash scripts/ensure-libvirtd.sh && $(VENV)/bin/python -m benchmarks.outage'

# deb: dist/libvirt-exporter_<version>_<arch>.deb, a venv on Debian's python3 with the
# systemd unit and /etc/default file (packaging/); installs its build packages as root.
deb:
	$(SUDO) bash scripts/build-deb.sh dist

# image: the container image (Dockerfile) built with podman and checked against the system
# libvirtd, the way that works without an image registry; minutes, so not part of `make test`.
.PHONY: image
image:
	$(SUDO) bash scripts/build-image.sh

# chaos: faults at random and at once (VMs frozen, killed, created, destroyed, disks hot-plugged,
# libvirtd restarted and frozen) on a private libvirtd, with every promise checked and a summary
# table at the end, e.g. `make chaos DURATION=1h` (docs/reliability.md). `make test` runs 90 s.
DURATION = 10m
.PHONY: chaos
chaos: deps
	flock /tmp/system-libvirtd.lock bash scripts/ensure-libvirtd.sh  # installs libvirtd and QEMU
	$(VENV)/bin/python -m tests.chaos --duration=$(DURATION) --every-kind

# clean: remove the venv and every cache.
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

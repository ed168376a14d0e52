# SPDX-License-Identifier: MIT
# UBS top-level build.  Recurses into each part, in dependency order.
#   make            build everything into build/
#   make test       install missing packages, build, run every test
#   make demo       install, build, run the main job (see README)
#   make bench      transport benchmark (table + plot under docs/bench/)
#   make compat     compatibility matrix (docs/compat.md, docs/compat.csv; root)
#   make install    PREFIX=/usr/local DESTDIR= (staging); see ubsd/README.md
#   V=1             show commands;  SANITIZE=address|undefined
PARTS := ubtransport preload ubsd compat-tests scripts

all:
	@set -e; for p in $(PARTS); do $(MAKE) --no-print-directory -C $$p; done

deps:
	@scripts/setup-deps

export SANITIZE

test: deps
	@$(MAKE) --no-print-directory all
	@scripts/run-tests

demo: deps
	@$(MAKE) --no-print-directory all
	@scripts/demo

bench: all
	@scripts/bench-transport

compat: deps
	@$(MAKE) --no-print-directory all
	@compat-tests/matrix

# Installs what `make` built (build it first as yourself, then install
# as root if PREFIX needs it).
INSTALL_PARTS := preload ubsd

install: all
	@set -e; for p in $(INSTALL_PARTS); do \
		$(MAKE) --no-print-directory -C $$p install; done

clean:
	rm -rf build build-address build-undefined build-fuzz

.PHONY: all deps test demo bench compat install clean

# Every target creates or reuses the virtualenv in .venv and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Debian packages the testbed and the tests use: openssh (nodes' sshd and the client),
# ipmitool (power commands against the BMCs), busybox-static (root filesystem of test images),
# e2fsprogs/fdisk/util-linux/mount (disks), zstd/xz-utils/gzip (image compressions),
# iproute2 (namespaces, veth, tc), procps/psmisc (process sweeps), udpcast and taktuk (the
# peer tools of bench/chain.py; taktuk is the broadcast engine Kadeploy3 uses).
DEBIAN_PACKAGES := openssh-server openssh-client ipmitool busybox-static e2fsprogs fdisk \
	util-linux mount zstd xz-utils gzip tar iproute2 procps psmisc udpcast taktuk

.PHONY: test lint venv system-deps demo demo-down clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Installs the missing Debian packages (as root), or says which are missing.
system-deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages (install as root): $$missing" >&2; exit 1; fi; \
	echo "installing Debian packages: $$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null

# The venv's bin/ goes first on PATH: tests run the installed console scripts as subprocesses.
test: system-deps $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

# The main job: 8 emulated nodes, the daemon, one deployment (root; see scripts/demo).
# Run again, it reuses what runs and deploys again (a redeploy, timed like the first).
demo: system-deps $(STAMP)
	scripts/demo 8

# Stops the daemon, removes the testbed and all the demo made (testbed/, daemon state included).
demo-down:
	scripts/demo down

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

#!/usr/bin/env bash
# Installs the system packages the test suite uses when they are missing:
# mosquitto (the broker fixtures start their own on a free loopback port),
# postgresql (the postgres_server fixture runs initdb/postgres from
# /usr/lib/postgresql/<version>/bin in a temp dir on a free port, never the
# machine's own service), chromium (headless rendering check of the HTML
# drift report and the dashboard), strace (the offline test watches every
# connect() the agent makes) and systemd (systemd-analyze checks the units).
# Package names given as arguments are installed too when missing (make arm64-check
# passes debootstrap and qemu-user-static).
# Needs apt-get and root (or passwordless sudo); otherwise says what is missing
# and leaves it to the tests to report it.
set -u
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need+=(chromium)
command -v strace >/dev/null 2>&1 || need+=(strace)
# systemd-analyze checks the generated service units (tests/test_service_units.py).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: apt-get not available; please install: ${need[*]}" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "install-system-deps: not root; please install: ${need[*]}" >&2
        exit 0
    fi
fi
echo "install-system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || echo "install-system-deps: apt-get update failed" >&2
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || { echo "install-system-deps: could not install ${need[*]}; the tests that need them will fail" >&2; exit 0; }

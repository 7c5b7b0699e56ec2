#!/usr/bin/env bash
# The overhead benchmark: direct vs nginx vs meter, all on loopback, bounded in time (about two
# minutes with the default BENCH_SECS=5). Installs nginx from Debian's packages when missing,
# then runs `cargo bench --bench overhead`, which pins the proxies and the fake provider to core 0
# and its load generator to core 1. Extra arguments are passed on (e.g. `--quick`).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "installing nginx (Debian package nginx-light)" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q nginx-light >/dev/null
    else sudo apt-get install -y -q nginx-light >/dev/null; fi
fi
# 1,000 streams through a proxy hold 2,000 sockets.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec cargo bench --bench overhead -- "$@"

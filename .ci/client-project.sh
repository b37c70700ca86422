#!/usr/bin/env bash
# Builds a new tokio project outside the workspace that depends on the
# client crate alone, as an application would, in an empty target
# directory: it must build with no RocksDB, raft, glommio or libclang
# (bindgen, clang-sys) in its tree. Prints how long the cold build took.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/src"
cat > "$dir/Cargo.toml" <<TOML
[package]
name = "config-reader"
version = "0.1.0"
edition = "2021"

[dependencies]
corekv-client = { path = "$repo/net/client" }
tokio = { version = "1", features = ["rt-multi-thread", "macros", "time"] }
TOML
cat > "$dir/src/main.rs" <<'RS'
use std::time::Duration;

use corekv_client::aio::{CacheOptions, Selection};
use corekv_client::{AsyncClient, ClientConfig, Consistency};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7101".into());
    let client = AsyncClient::connect(ClientConfig::new(vec![endpoint])).await?;
    let v = client.get(b"/app/limit", Consistency::Linearizable).await?;
    println!("linearizable: {v:?}");
    let cache = client.cached(Selection::Prefix("/app/".into()), CacheOptions::new(Duration::from_secs(2)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("cached: {:?} {:?}", cache.get(b"/app/limit").await?, cache.stats());
    Ok(())
}
RS
# The workspace's lock file pins the same versions the workspace builds.
cp "$repo/Cargo.lock" "$dir/Cargo.lock"
cd "$dir"
heavy=$(cargo tree -e normal,build --prefix none | grep -E '^(rocksdb|librocksdb-sys|raft|raft-proto|glommio|bindgen|clang-sys) ' || true)
if [ -n "$heavy" ]; then
    echo "a project using corekv-client builds: $heavy" >&2
    exit 1
fi
start=$(date +%s%N)
CARGO_TARGET_DIR="$dir/target" cargo build --release --quiet
ms=$(( ($(date +%s%N) - start) / 1000000 ))
test -x "$dir/target/release/config-reader"
echo "a new tokio project using corekv-client built cold in $((ms / 1000)).$(printf %03d $((ms % 1000))) s (no RocksDB, raft, glommio or libclang)"

//! A configuration reader: keeps every key under a prefix in process
//! memory (never more than 2 s old), prints each change as it comes, and
//! serves its reads from memory.
//!
//! `cargo run --release -p corekv-client --example cached_config -- 127.0.0.1:7101 /app/ [SECONDS]`
//!
//! Runs for SECONDS (default 10), then prints the cache's counters.

use std::time::Duration;

use corekv_client::aio::{CacheOptions, Selection};
use corekv_client::{AsyncClient, ClientConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next().unwrap_or_else(|| "127.0.0.1:7101".into());
    let prefix = args.next().unwrap_or_else(|| "/app/".into());
    let seconds: u64 = args.next().map_or(Ok(10), |s| s.parse())?;
    let client = AsyncClient::connect(ClientConfig::new(vec![endpoint])).await?;
    let cache = client.cached(
        Selection::Prefix(prefix.clone().into()),
        CacheOptions::new(Duration::from_secs(2)),
    );
    let mut changes = cache.subscribe();
    let printer = tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(c) => println!(
                    "{:?} {} = {} (version {})",
                    c.kind,
                    String::from_utf8_lossy(&c.key),
                    String::from_utf8_lossy(&c.value),
                    c.version
                ),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    println!("({n} changes not shown: this reader fell behind)")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    // Stand-in for the service's own reads: one key, often.
    let probe = format!("{prefix}limit");
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while tokio::time::Instant::now() < until {
        let v = cache.get(probe.as_bytes()).await?;
        std::hint::black_box(v);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    printer.abort();
    let s = cache.stats();
    println!(
        "{} keys under {prefix} held ({} bytes, complete: {}); {} reads from memory, {} from \
         the cluster; {} changes applied; {} reloads; {}/{} regions fresh",
        s.entries,
        s.bytes,
        s.complete,
        s.hits,
        s.misses,
        s.invalidations,
        s.resyncs,
        s.fresh_regions,
        s.regions
    );
    Ok(())
}

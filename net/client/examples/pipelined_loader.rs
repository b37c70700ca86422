//! Loads N keys with up to 256 writes in flight through one client, and
//! reports the rate; every write is acknowledged or reported.
//!
//! `cargo run --release -p corekv-client --example pipelined_loader -- 127.0.0.1:7101 10000`

use std::sync::Arc;
use std::time::Instant;

use corekv_client::{AsyncClient, ClientConfig, PutOptions};
use tokio::sync::Semaphore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next().unwrap_or_else(|| "127.0.0.1:7101".into());
    let n: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let client = AsyncClient::connect(ClientConfig::new(vec![endpoint])).await?;
    let in_flight = Arc::new(Semaphore::new(256));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = in_flight.clone().acquire_owned().await?;
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let key = format!("/load/key-{i:08}");
            client
                .put(
                    key.as_bytes(),
                    format!("value-{i}").as_bytes(),
                    PutOptions::default(),
                )
                .await
        }));
    }
    let (mut ok, mut failed) = (0usize, 0usize);
    for t in tasks {
        match t.await? {
            Ok(_) => ok += 1,
            Err(e) => {
                failed += 1;
                eprintln!("write failed: {e}");
            }
        }
    }
    let took = started.elapsed();
    println!(
        "{ok} writes acknowledged, {failed} failed, in {took:.2?} ({:.0} writes/s)",
        ok as f64 / took.as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

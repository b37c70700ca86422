//! A tokio service that reads one key through a shared client: many tasks,
//! one `AsyncClient`.
//!
//! `cargo run --release -p corekv-client --example service_get -- 127.0.0.1:7101 KEY`

use corekv_client::{AsyncClient, ClientConfig, Consistency};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next().unwrap_or_else(|| "127.0.0.1:7101".into());
    let key = args.next().unwrap_or_else(|| "/app/config".into());
    let client = AsyncClient::connect(ClientConfig::new(vec![endpoint])).await?;
    // Stand-ins for request handlers: each reads the key on its own task.
    let handlers: Vec<_> = (0..100)
        .map(|_| {
            let (client, key) = (client.clone(), key.clone());
            tokio::spawn(async move { client.get(key.as_bytes(), Consistency::Linearizable).await })
        })
        .collect();
    let mut last = None;
    for h in handlers {
        last = h.await??;
    }
    match last {
        Some(v) => println!(
            "{key} = {} (version {}), read by 100 tasks over {} connection(s)",
            String::from_utf8_lossy(&v.value),
            v.version,
            client.connections()
        ),
        None => println!("{key} is not set (read by 100 tasks)"),
    }
    Ok(())
}

//! The load through the async client (`corekv_client::AsyncClient`):
//! `--client async`. One shared client on a tokio runtime of `threads`
//! workers; each simulated client is `pipeline` tasks, each with one
//! request in flight, so `clients × pipeline` requests are in flight as
//! with the hand-made driver. Closed loop only.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corekv_client::{AsyncClient, ClientError, PutOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{client_config, LoadSpec, Progress};
use crate::report::{OpKind, Stats};
use crate::workload::{KeyPicker, KeyTable};

/// Operations a task counts before it adds them to the progress line.
const PUBLISH_EVERY: u64 = 64;

/// Runs `spec` (not a preload, closed loop) through one shared async
/// client of the cluster at `endpoints`; returns the merged stats and the
/// measured time.
pub fn run_async(
    spec: LoadSpec,
    endpoints: Vec<String>,
    progress: Arc<Progress>,
) -> anyhow::Result<(Stats, Duration)> {
    anyhow::ensure!(
        spec.rate.is_none(),
        "--client async runs closed loop only (no --rate)"
    );
    anyhow::ensure!(!spec.preload, "the async client does not preload");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(spec.threads.max(1))
        .enable_all()
        .build()?;
    let client = rt
        .block_on(AsyncClient::connect(client_config(endpoints)))
        .map_err(|e| anyhow::anyhow!("connecting the async client: {e}"))?;
    let keys = Arc::new(KeyTable::new(spec.keys));
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let spec = Arc::new(spec);
    let mut tasks = Vec::new();
    for c in 0..spec.clients {
        for p in 0..spec.pipeline {
            let (client, keys, spec, progress) =
                (client.clone(), keys.clone(), spec.clone(), progress.clone());
            let seed =
                spec.seed ^ ((c * spec.pipeline + p) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            tasks.push(rt.spawn(async move {
                let mut rng = SmallRng::seed_from_u64(seed);
                let picker = KeyPicker::new(spec.keys, &spec.dist);
                let value = vec![b'v'; spec.value_size];
                let mut stats = Stats::default();
                let (mut done, mut failed) = (0u64, 0u64);
                tokio::time::sleep_until(start.into()).await;
                loop {
                    let now = Instant::now();
                    if now >= end || progress.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = keys.name(picker.next(&mut rng));
                    let read = rng.gen_range(0..100) < spec.mix.read_percent();
                    let (kind, result) = if read {
                        let r = client.get(&key, spec.consistency).await.map(|_| ());
                        (OpKind::Read, r)
                    } else {
                        let r = client
                            .put(&key, &value, PutOptions::default())
                            .await
                            .map(|_| ());
                        (OpKind::Write, r)
                    };
                    let at = Instant::now();
                    match result {
                        Ok(()) => {
                            done += 1;
                            if now >= measure_from && at <= end {
                                stats.record(kind, at - now);
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            if at >= measure_from {
                                stats.error(error_kind(&e));
                            }
                        }
                    }
                    if done + failed >= PUBLISH_EVERY {
                        progress.done.fetch_add(done, Ordering::Relaxed);
                        progress.failed.fetch_add(failed, Ordering::Relaxed);
                        (done, failed) = (0, 0);
                    }
                }
                progress.done.fetch_add(done, Ordering::Relaxed);
                progress.failed.fetch_add(failed, Ordering::Relaxed);
                stats
            }));
        }
    }
    let mut stats = Stats::default();
    for t in tasks {
        let s = rt
            .block_on(t)
            .map_err(|e| anyhow::anyhow!("load task: {e}"))?;
        stats.merge(&s);
    }
    Ok((stats, spec.duration))
}

fn error_kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::Unknown(_) => "Unknown",
        ClientError::Unavailable { .. } => "Unavailable",
        ClientError::Unauthenticated(_) => "Unauthenticated",
        ClientError::PermissionDenied(_) => "PermissionDenied",
        ClientError::ConditionFailed { .. } => "ConditionFailed",
        ClientError::Invalid { .. } => "Invalid",
        _ => "Other",
    }
}

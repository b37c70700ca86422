//! A simulated 3-node corekv cluster in one process: elect, replicate writes,
//! kill the leader, watch a new one take over, restart the old one and check
//! that every replica holds the same data.
//!
//! `cargo run --release -p corekv-engine --example sim_cluster [-- SEED]`

use std::time::Instant;

use bytes::Bytes;
use corekv_engine::sim::{SimCluster, SimOptions};
use corekv_engine::{Condition, Config, Consistency, WriteOutcome, WriteRequest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seed = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(42);
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    println!("corekv simulated cluster: 3 nodes, 4 regions, seed {seed}");
    println!("data directories under {}", dir.path().display());
    let mut c = SimCluster::new(
        dir.path(),
        SimOptions {
            nodes: 3,
            spare_nodes: 0,
            regions: 4,
            seed,
            config: Config::default(),
            ..SimOptions::default()
        },
    )?;

    c.run_until(5000, |c| (1..=4).all(|r| c.leader(r).is_some()))?;
    for r in 1..=4 {
        let leader = c.leader(r).ok_or("no leader")?;
        let s = c.status(leader, r).unwrap();
        println!(
            "[t={:>5} ms] region {r}: leader node {leader}, term {}",
            c.now_ms(),
            s.term
        );
    }

    let writes = 2000;
    for i in 0..writes {
        let w = WriteRequest::Put {
            key: Bytes::from(format!("config/service-{i}")),
            value: Bytes::from(format!("endpoint-{i}")),
            ttl_ms: None,
            condition: Condition::None,
        };
        match c.write(w, 5000)? {
            WriteOutcome::Written { .. } => {}
            other => return Err(format!("unexpected outcome {other:?}").into()),
        }
    }
    c.run_ms(200)?;
    let counts: Vec<usize> = [1, 2, 3]
        .iter()
        .map(|&n| c.dump_data(n).map(|d| d.len()))
        .collect::<Result<_, _>>()?;
    println!(
        "[t={:>5} ms] wrote {writes} keys; keys on nodes 1,2,3: {:?}",
        c.now_ms(),
        counts
    );

    let key = b"config/service-7";
    let region = c.region_of(key);
    let victim = c.leader(region).ok_or("no leader")?;
    let killed_at = c.now_ms();
    c.crash(victim);
    println!(
        "[t={:>5} ms] killed node {victim}, leader of region {region}",
        c.now_ms()
    );
    c.run_until(5000, |c| c.leader(region).is_some())?;
    let new = c.leader(region).ok_or("no new leader")?;
    println!(
        "[t={:>5} ms] node {new} leads region {region} after {} ms (simulated)",
        c.now_ms(),
        c.now_ms() - killed_at
    );
    let w = WriteRequest::Put {
        key: Bytes::from_static(key),
        value: Bytes::from_static(b"moved"),
        ttl_ms: None,
        condition: Condition::None,
    };
    c.write(w, 5000)?;
    let v = c
        .get(key, Consistency::Linearizable, 5000)?
        .ok_or("missing")?;
    println!(
        "[t={:>5} ms] write after failover acknowledged; linearizable read: {} (version {})",
        c.now_ms(),
        String::from_utf8_lossy(&v.value),
        v.version
    );

    c.restart(victim)?;
    c.run_ms(1000)?;
    let reference = c.dump_data(new)?;
    let same = [1, 2, 3]
        .iter()
        .all(|&n| c.dump_data(n).map(|d| d == reference).unwrap_or(false));
    println!(
        "[t={:>5} ms] restarted node {victim}; all replicas identical: {same} ({} keys)",
        c.now_ms(),
        reference.len()
    );
    println!(
        "messages delivered {}, dropped {}; wall time {:.2?}",
        c.net.delivered,
        c.net.dropped,
        started.elapsed()
    );
    if !same {
        return Err("replicas diverged".into());
    }
    Ok(())
}

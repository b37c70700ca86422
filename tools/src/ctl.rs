//! `corekv ctl`: cluster inspection and leader moves from any endpoint.
//!
//! Every node answers a `Status` request with its status document (regions
//! with role, indexes, sizes and rates; shards; log writer counters): `ctl`
//! asks every node it knows of and shows the result. `transfer-leader` makes
//! a replica its region's preferred leader and waits until it leads.

use corekv_net::{Client, ClientConfig};
use serde_json::Value;

/// Makes `node_id`'s replica of `region_id` the region's preferred leader
/// and waits up to `wait` until it leads. Returns how long the move took.
pub fn transfer_leader(
    client: &mut Client,
    region_id: u64,
    node_id: u64,
    wait: std::time::Duration,
) -> anyhow::Result<std::time::Duration> {
    let started = std::time::Instant::now();
    if !client.routes().iter().any(|r| r.region.id == region_id) {
        anyhow::bail!("no region {region_id} (see `corekv ctl regions`)");
    }
    client.transfer_leader(region_id, node_id)?;
    loop {
        // A failed refresh (a node restarting) is retried until the wait ends.
        if client.refresh().is_ok() {
            let leader = client
                .routes()
                .iter()
                .find(|r| r.region.id == region_id)
                .map_or(0, |r| r.leader_node);
            if leader == node_id {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > wait {
            anyhow::bail!(
                "node {node_id} is region {region_id}'s preferred leader, but did not lead within                  {wait:?} (is it up and caught up?); it takes over once it is"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Splits `region_id` at `at` (default: the middle of its range); returns
/// the two regions as text.
pub fn split(client: &mut Client, region_id: u64, at: Option<u64>) -> anyhow::Result<String> {
    let Some(before) = client
        .routes()
        .iter()
        .find(|r| r.region.id == region_id)
        .cloned()
    else {
        anyhow::bail!("no region {region_id} (see `corekv ctl regions`)");
    };
    let index = client.split(region_id, at)?;
    let mut out = format!("region {region_id} split at log index {index}:\n");
    let end = before.region.end_hash;
    for r in client.routes() {
        let inside = r.region.start_hash >= before.region.start_hash
            && (end == 0 || r.region.start_hash < end);
        if inside {
            out.push_str(&format!(
                "  region {:<16} {:016x}-{:016x} epoch {}/{}\n",
                r.region.id,
                r.region.start_hash,
                r.region.end_hash,
                r.region.epoch.conf_ver,
                r.region.epoch.version
            ));
        }
    }
    Ok(out)
}

/// The status documents of every node reachable through `endpoints`.
pub fn gather(endpoints: Vec<String>, timeout: std::time::Duration) -> anyhow::Result<Vec<Value>> {
    let mut cfg = ClientConfig::new(endpoints.clone());
    cfg.request_timeout = timeout;
    let mut client = Client::connect(cfg)?;
    let mut addrs: Vec<(u64, String)> = client
        .nodes()
        .iter()
        .map(|(id, a)| (*id, a.clone()))
        .collect();
    addrs.sort();
    if addrs.is_empty() {
        addrs = endpoints.into_iter().map(|a| (0, a)).collect();
    }
    let mut docs = Vec::new();
    for (id, addr) in addrs {
        match client.status_of(&addr) {
            Ok(text) => docs.push(serde_json::from_str(&text)?),
            Err(e) => docs.push(
                serde_json::json!({"node_id": id, "client_addr": addr, "error": e.to_string()}),
            ),
        }
    }
    Ok(docs)
}

/// One row per region: the leader's view when a leader answered, else any.
pub fn merge_regions(docs: &[Value]) -> Vec<Value> {
    let mut by_id: std::collections::BTreeMap<u64, Value> = std::collections::BTreeMap::new();
    for d in docs {
        let node = d["node_id"].as_u64().unwrap_or(0);
        for r in d["regions"].as_array().into_iter().flatten() {
            let id = r["id"].as_u64().unwrap_or(0);
            let mut row = r.clone();
            row["reported_by"] = node.into();
            let is_leader = r["role"] == "leader";
            match by_id.get(&id) {
                Some(old) if old["role"] == "leader" || !is_leader => {}
                _ => {
                    by_id.insert(id, row);
                }
            }
        }
    }
    by_id.into_values().collect()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// `ctl status` as a table.
pub fn status_table(docs: &[Value]) -> String {
    let mut s = String::from(
        "node  client address         shards  regions  leaders  fsyncs   entries/fsync  uptime s\n",
    );
    for d in docs {
        if let Some(e) = d.get("error") {
            s += &format!(
                "{:<5} {:<22} unreachable: {}\n",
                n(&d["node_id"]),
                d["client_addr"].as_str().unwrap_or(""),
                e
            );
            continue;
        }
        let regions = d["regions"].as_array().map_or(0, |r| r.len());
        s += &format!(
            "{:<5} {:<22} {:<7} {:<8} {:<8} {:<8} {:<14} {}\n",
            n(&d["node_id"]),
            d["client_addr"].as_str().unwrap_or(""),
            n(&d["shard_count"]),
            regions,
            n(&d["leaders"]),
            n(&d["log_writer"]["fsyncs"]),
            d["log_writer"]["entries_per_fsync"],
            n(&d["uptime_secs"]),
        );
        for sh in d["shards"].as_array().into_iter().flatten() {
            s += &format!(
                "        shard {}: {} regions, {} leaders\n",
                n(&sh["shard"]),
                n(&sh["regions"]),
                n(&sh["leaders"])
            );
        }
    }
    s
}

/// `ctl regions` as a table.
pub fn regions_table(rows: &[Value]) -> String {
    let mut s = String::from(
        "region  hash range                               epoch  peers(nodes)  leader(node/shard)  applied  log  keys  bytes  read/s  write/s\n",
    );
    for r in rows {
        let peers: Vec<String> = r["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| n(&p["node"]).to_string())
            .collect();
        let leader = if r["role"] == "leader" {
            format!("{}/{}", n(&r["leader_node"]), n(&r["shard"]))
        } else if n(&r["leader_node"]) != 0 {
            format!("{}/?", n(&r["leader_node"]))
        } else {
            "none".into()
        };
        s += &format!(
            "{:<7} {:016x}-{:016x}  {}/{}    {:<13} {:<19} {:<8} {:<4} {:<5} {:<6} {:<7} {}\n",
            n(&r["id"]),
            n(&r["start_hash"]),
            n(&r["end_hash"]),
            n(&r["epoch"]["conf_ver"]),
            n(&r["epoch"]["version"]),
            peers.join(","),
            leader,
            n(&r["applied_index"]),
            n(&r["log_entries"]),
            n(&r["keys"]),
            n(&r["bytes"]),
            r["read_ops_per_sec"],
            r["write_ops_per_sec"],
        );
    }
    s
}

//! `corekv ctl`: cluster inspection, leader and replica moves, membership.
//!
//! Every node answers a `Status` request with its status document (regions
//! with role, indexes, sizes and rates; shards; log writer counters): `ctl`
//! asks every node it knows of and shows the result. `transfer-leader` makes
//! a replica its region's preferred leader and waits until it leads;
//! `move-replica` moves a replica to another node (learner, catch-up, one
//! joint change); `balance` evens out replicas per node, then how many
//! regions each node leads; `add-node` and `remove-node` grow and drain the
//! cluster with them.

use corekv_net::meta::{self, NodeRecord};
use corekv_net::status::{
    AuthStatus, CheckStatus, NodeReport, NodeStatus, RegionReport, Role, Verdict,
};
use corekv_net::{Client, ClientConfig};
use corekv_shards::placement::count::{replica_counts, ReplicaMove};
use corekv_shards::placement::{plan, Policy, Step, View};

/// Runs the placement plan ([`plan::plan`]; only shows it with
/// `dry_run`): replica moves, then leader moves, then shard moves, one at a
/// time, each waiting up to `wait`. A dry run shows the first phase with
/// something to do (the next ones depend on it). Returns the report.
pub fn balance(
    client: &mut Client,
    dry_run: bool,
    policy: &Policy,
    wait: std::time::Duration,
) -> anyhow::Result<String> {
    let mut out = String::new();
    // Each round empties one phase; a fourth would only chase noise.
    for _ in 0..3 {
        let view = View::gather(client)?;
        let steps = plan::plan(&view, policy);
        if steps.is_empty() {
            break;
        }
        run_steps(client, &steps, dry_run, wait, &mut out)?;
        if dry_run {
            out.push_str("(later phases are planned once these moves are done)\n");
            return Ok(out);
        }
    }
    if out.is_empty() {
        out.push_str("balanced: nothing to move\n");
    }
    Ok(out)
}

/// Runs `steps` one at a time (with `dry_run`, only lists them),
/// reporting into `out`.
fn run_steps(
    client: &mut Client,
    steps: &[Step],
    dry_run: bool,
    wait: std::time::Duration,
    out: &mut String,
) -> anyhow::Result<()> {
    for step in steps {
        if dry_run {
            out.push_str(&format!("would move {step}\n"));
        } else {
            out.push_str(&plan::run_step(client, step, wait)?);
        }
    }
    Ok(())
}

/// What a consistency check found (see [`check`]).
#[derive(Debug, Default)]
pub struct CheckReport {
    /// One paragraph per region checked.
    pub text: String,
    /// Regions where some replica's digest differs from the leader's.
    pub mismatched: Vec<u64>,
    /// Regions not verified everywhere (a replica did not report in time,
    /// skipped the check, or the check could not start).
    pub unverified: Vec<u64>,
}

impl CheckReport {
    /// True when every replica of every region checked matched its leader.
    pub fn ok(&self) -> bool {
        self.mismatched.is_empty() && self.unverified.is_empty()
    }
}

/// Checks that every replica of `region` (every region when `None`) holds
/// the same data as its leader: a raft entry at whose index each replica
/// computes a digest of its keys, values, versions, expiries and sessions,
/// compared with the leader's (see `corekv_engine::digest`). Starts every
/// region's check, then waits up to `wait` for every replica's verdict in
/// its node's status.
pub fn check(
    client: &mut Client,
    region: Option<u64>,
    wait: std::time::Duration,
) -> anyhow::Result<CheckReport> {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    client.refresh()?;
    let routes: Vec<_> = client
        .routes()
        .iter()
        .filter(|r| region.is_none_or(|id| r.region.id == id))
        .cloned()
        .collect();
    if routes.is_empty() {
        anyhow::bail!(
            "no region {} (see `corekv ctl regions`)",
            region.unwrap_or(0)
        );
    }
    let mut report = CheckReport::default();
    // Started everywhere first: (region, index, its nodes).
    let mut started = Vec::new();
    for route in &routes {
        let id = route.region.id;
        match client.check(id) {
            Ok(index) => {
                let nodes: Vec<u64> = route.region.peers.iter().map(|p| p.node_id).collect();
                started.push((id, index, nodes));
            }
            Err(e) => {
                let _ = writeln!(report.text, "region {id}: not checked: {e}");
                report.unverified.push(id);
            }
        }
    }
    // (region, node) -> the verdict that node shows for that check.
    let mut verdicts: BTreeMap<(u64, u64), CheckStatus> = BTreeMap::new();
    let wanted: usize = started.iter().map(|(_, _, n)| n.len()).sum();
    let deadline = std::time::Instant::now() + wait;
    let nodes: Vec<(u64, String)> = client.nodes_sorted();
    while verdicts.len() < wanted && std::time::Instant::now() < deadline {
        for (node, addr) in &nodes {
            let Ok(doc) = client.status_doc(addr) else {
                continue;
            };
            for row in &doc.regions {
                let Some((_, index, _)) = started.iter().find(|(r, _, _)| *r == row.id) else {
                    continue;
                };
                if let Some(c) = row.check.filter(|c| c.index >= *index) {
                    verdicts.insert((row.id, *node), c);
                }
            }
        }
        if verdicts.len() < wanted {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    for (id, index, peers) in &started {
        let of = |v: Verdict| -> Vec<u64> {
            peers
                .iter()
                .copied()
                .filter(|n| verdicts.get(&(*id, *n)).is_some_and(|c| c.verdict == v))
                .collect()
        };
        let (same, differ, skipped) = (
            of(Verdict::Match),
            of(Verdict::Mismatch),
            of(Verdict::Skipped),
        );
        let silent: Vec<u64> = peers
            .iter()
            .copied()
            .filter(|n| !verdicts.contains_key(&(*id, *n)))
            .collect();
        let leader = peers
            .iter()
            .find_map(|n| verdicts.get(&(*id, *n)))
            .map_or_else(|| "?".to_string(), |c| c.leader.to_string());
        let _ = writeln!(
            report.text,
            "region {id} at index {index}: leader's digest {leader}; match on nodes {same:?}"
        );
        for n in &differ {
            let _ = writeln!(
                report.text,
                "  MISMATCH on node {n}: {}",
                verdicts[&(*id, *n)]
                    .own
                    .map_or_else(|| "?".to_string(), |d| d.to_string())
            );
        }
        if !differ.is_empty() {
            report.mismatched.push(*id);
        }
        if !skipped.is_empty() || !silent.is_empty() {
            let _ = writeln!(
                report.text,
                "  not verified on nodes {skipped:?} (reached that index by snapshot) and \
                 {silent:?} (no verdict within {} ms)",
                wait.as_millis()
            );
            report.unverified.push(*id);
        }
    }
    let _ = writeln!(
        report.text,
        "{}",
        if report.ok() {
            format!(
                "{} regions: every replica matches its leader",
                started.len()
            )
        } else {
            format!(
                "mismatched regions {:?}, unverified regions {:?}",
                report.mismatched, report.unverified
            )
        }
    );
    Ok(report)
}

/// Records a new node `node_id` in the meta region's node list (run before
/// starting it with `--join`) and waits until every node answering has
/// taken it. Idempotent; refuses an id known with another peer address.
/// `client` is marked as the cluster's own ([`Client::set_system`]).
pub fn add_node(
    client: &mut Client,
    node_id: u64,
    peer_addr: &str,
    client_addr: &str,
) -> anyhow::Result<String> {
    if node_id == 0 || node_id > corekv_engine::membership::NODE_ID_MAX {
        anyhow::bail!(
            "node id {node_id} is outside 1..={}",
            corekv_engine::membership::NODE_ID_MAX
        );
    }
    for (what, a) in [("peer", peer_addr), ("client", client_addr)] {
        a.parse::<std::net::SocketAddr>()
            .map_err(|e| anyhow::anyhow!("{what} address {a:?}: {e}"))?;
    }
    client.set_system(true);
    client.refresh()?;
    meta::update_nodes(client, |list| {
        match list.iter_mut().find(|n| n.id == node_id) {
            Some(n) if n.peer_addr != peer_addr => Err(format!(
                "node {node_id} is known with peer address {}, not {peer_addr}",
                n.peer_addr
            )),
            Some(n) => {
                // Added again: its client address may have changed, and it
                // is no longer leaving.
                let changed = n.client_addr != client_addr || n.leaving;
                n.client_addr = client_addr.to_string();
                n.leaving = false;
                Ok(changed)
            }
            None => {
                list.push(NodeRecord {
                    id: node_id,
                    peer_addr: peer_addr.to_string(),
                    client_addr: client_addr.to_string(),
                    leaving: false,
                });
                Ok(true)
            }
        }
    })?;
    let took = wait_for_nodes(client, node_id, |doc| doc.known_nodes.contains(&node_id));
    Ok(format!(
        "node {node_id} (peer {peer_addr}, client {client_addr}) recorded in the meta region; \
         {took}; start it with --join, then the placement driver (or `corekv ctl balance`) \
         moves replicas to it\n"
    ))
}

/// Waits up to 10 s until every node other than `node_id` that answers
/// shows `taken` in its status document; says which did.
fn wait_for_nodes(
    client: &mut Client,
    node_id: u64,
    taken: impl Fn(&NodeStatus) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut pending = Vec::new();
        for (n, addr) in client.nodes_sorted() {
            if n == node_id {
                continue;
            }
            let done = client.status_doc(&addr).is_ok_and(|doc| taken(&doc));
            if !done {
                pending.push(n);
            }
        }
        if pending.is_empty() {
            return "every node has taken it".into();
        }
        if std::time::Instant::now() > deadline {
            return format!("nodes {pending:?} have not taken it yet (they will once they reach the meta region)");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Moves every replica off node `node_id`, each to the node with the
/// fewest replicas that has none of that region. Refuses before moving
/// anything if some region would have nowhere to go (it would lose a
/// replica, and with it fault tolerance or its quorum). Marks the node as
/// leaving in the meta region first (`client` is marked as the cluster's
/// own, [`Client::set_system`]).
pub fn remove_node(
    client: &mut Client,
    node_id: u64,
    dry_run: bool,
    wait: std::time::Duration,
) -> anyhow::Result<String> {
    use std::fmt::Write;
    client.refresh()?;
    let mut others: Vec<u64> = client
        .nodes()
        .keys()
        .copied()
        .filter(|n| *n != node_id)
        .collect();
    others.sort_unstable();
    let routes = client.routes().to_vec();
    let mut count = replica_counts(&routes, &others);
    count.retain(|n, _| *n != node_id);
    let mut plan = Vec::new();
    for r in routes
        .iter()
        .filter(|r| r.region.peer_on_node(node_id).is_some())
    {
        // A learner left by an interrupted move is where the replica goes.
        let learner = r
            .region
            .peers
            .iter()
            .find(|p| p.role == corekv_engine::PeerRole::Learner && p.node_id != node_id)
            .map(|p| p.node_id);
        let to = learner.or_else(|| {
            count
                .iter()
                .filter(|(n, _)| r.region.peer_on_node(**n).is_none())
                .min_by_key(|(n, c)| (**c, **n))
                .map(|(n, _)| *n)
        });
        let Some(to) = to else {
            anyhow::bail!(
                "region {} has a replica on every other node: removing node {node_id} would \
                 leave it with fewer replicas; add a node first",
                r.region.id
            );
        };
        *count.get_mut(&to).unwrap() += 1;
        plan.push(ReplicaMove {
            region_id: r.region.id,
            from: node_id,
            to,
        });
    }
    let mut out = String::new();
    if !dry_run {
        // The placement driver must not move replicas back to it.
        client.set_system(true);
        meta::update_nodes(client, |list| {
            match list.iter_mut().find(|n| n.id == node_id) {
                Some(n) => {
                    let changed = !n.leaving;
                    n.leaving = true;
                    Ok(changed)
                }
                None => Err(format!(
                    "node {node_id} is not in the meta region's node list"
                )),
            }
        })?;
        let took = wait_for_nodes(client, node_id, |doc| doc.leaving.contains(&node_id));
        let _ = writeln!(out, "node {node_id} marked as leaving: {took}");
    }
    if plan.is_empty() {
        let _ = writeln!(out, "node {node_id} holds no replica: it can be stopped");
        return Ok(out);
    }
    let steps: Vec<_> = plan.into_iter().map(Step::Replica).collect();
    run_steps(client, &steps, dry_run, wait, &mut out)?;
    if !dry_run {
        let _ = writeln!(
            out,
            "node {node_id} drained: it holds no replica and can be stopped"
        );
    }
    Ok(out)
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
pub fn gather(
    endpoints: Vec<String>,
    timeout: std::time::Duration,
) -> anyhow::Result<Vec<NodeReport>> {
    let mut cfg = ClientConfig::new(endpoints);
    cfg.request_timeout = timeout;
    gather_with(cfg)
}

/// The status documents of every node reachable with `cfg` (its endpoints,
/// time budget and login).
pub fn gather_with(cfg: ClientConfig) -> anyhow::Result<Vec<NodeReport>> {
    let endpoints = cfg.endpoints.clone();
    let mut client = Client::connect(cfg)?;
    let mut addrs = client.nodes_sorted();
    if addrs.is_empty() {
        addrs = endpoints.into_iter().map(|a| (0, a)).collect();
    }
    let mut docs = Vec::new();
    for (id, addr) in addrs {
        docs.push(match client.status_doc(&addr) {
            Ok(doc) => NodeReport::Up(Box::new(doc)),
            Err(e) => NodeReport::Unreachable {
                node_id: id,
                client_addr: addr,
                error: e.to_string(),
            },
        });
    }
    Ok(docs)
}

/// `ctl status` as a table.
pub fn status_table(docs: &[NodeReport]) -> String {
    let mut s = String::from(
        "node  client address         shards  regions  leaders  fsyncs   entries/fsync  uptime s\n",
    );
    for d in docs {
        let d = match d {
            NodeReport::Up(d) => d,
            NodeReport::Unreachable {
                node_id,
                client_addr,
                error,
            } => {
                s += &format!("{node_id:<5} {client_addr:<22} unreachable: {error}\n");
                continue;
            }
        };
        s += &format!(
            "{:<5} {:<22} {:<7} {:<8} {:<8} {:<8} {:<14} {}\n",
            d.node_id,
            d.client_addr,
            d.shard_count,
            d.regions.len(),
            d.leaders,
            d.log_writer.fsyncs,
            d.log_writer.entries_per_fsync,
            d.uptime_secs,
        );
        for sh in &d.shards {
            let cache = sh.cache_hit_ratio.map_or("no reads".to_string(), |r| {
                format!("{:.1}% cache hits", r * 100.0)
            });
            s += &format!(
                "        shard {}: {} regions, {} leaders, {cache}\n",
                sh.shard, sh.regions, sh.leaders
            );
        }
        if let Some(a) = &d.auth {
            s += &format!("        {}\n", auth_line(a));
        }
        if let Some(r) = &d.resp {
            s += &format!(
                "        redis protocol on {}: {} connections open ({} since start, {} refused), \
                 {} commands ({} answered with an error)\n",
                r.addr, r.connections, r.accepted, r.rejected, r.commands, r.error_replies
            );
        }
    }
    s
}

fn auth_line(a: &AuthStatus) -> String {
    let guard = if a.state == "on" {
        String::new()
    } else if a.insecure {
        ", --insecure: clients from any address".to_string()
    } else {
        ", protected mode: clients from 127.0.0.1 and ::1 only".to_string()
    };
    format!(
        "authentication {} ({} users, node key {}){guard}; {} logins, {} refused, \
         {} requests refused without a login, {} by roles, {} connections by protected mode; {}",
        a.state,
        a.users,
        a.node_key.as_deref().unwrap_or("none"),
        a.logins,
        a.login_failures,
        a.unauthenticated,
        a.denied,
        a.protected_refusals,
        match (a.tls, a.tls_client_auth) {
            (false, _) => "no TLS".to_string(),
            (true, false) => format!("TLS, {} handshakes failed", a.tls_failures),
            (true, true) => format!(
                "TLS with client certificates, {} handshakes failed",
                a.tls_failures
            ),
        }
    )
}

/// One node's authentication status, as `ctl auth status --json` gives it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AuthRow {
    /// Node id.
    pub node_id: u64,
    /// Its status (None: unreachable, or a node without the section).
    pub auth: Option<AuthStatus>,
}

/// Each node's authentication status.
pub fn auth_rows(docs: &[NodeReport]) -> Vec<AuthRow> {
    docs.iter()
        .map(|d| match d {
            NodeReport::Up(d) => AuthRow {
                node_id: d.node_id,
                auth: d.auth.clone(),
            },
            NodeReport::Unreachable { node_id, .. } => AuthRow {
                node_id: *node_id,
                auth: None,
            },
        })
        .collect()
}

/// `ctl auth status` as text.
pub fn auth_table(docs: &[NodeReport]) -> String {
    let mut s = String::new();
    for d in docs {
        match d {
            NodeReport::Up(d) => match &d.auth {
                Some(a) => s += &format!("node {}: {}\n", d.node_id, auth_line(a)),
                None => s += &format!("node {}: no authentication status\n", d.node_id),
            },
            NodeReport::Unreachable { node_id, error, .. } => {
                s += &format!("node {node_id}: unreachable: {error}\n")
            }
        }
    }
    s
}

/// `ctl auth enable`: checks that every node holds the same node key, then
/// turns authentication on; prints root's token if it made root (or
/// writes it to `token_out`, mode 0600).
pub fn auth_enable(
    client: &mut Client,
    docs: &[NodeReport],
    token_out: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let nodes: Vec<(u64, Option<AuthStatus>)> = auth_rows(docs)
        .into_iter()
        .map(|r| (r.node_id, r.auth))
        .collect();
    if let Some(why) = corekv_net::auth::enable_refusal(&nodes) {
        anyhow::bail!("authentication not turned on: {why}");
    }
    let (made, late) = corekv_net::auth::set_enabled(client, true)?;
    warn_late(&late);
    // Users made while authentication was off (by anyone who could reach a
    // node then) log in from now on: say who they are.
    if let Some((table, _)) = corekv_net::auth::read_auth(client)? {
        for u in &table.users {
            eprintln!("user {:<24} {}", u.name, u.roles());
        }
    }
    let Some(token) = made else {
        return Ok("authentication on\n".into());
    };
    match token_out {
        Some(path) => {
            write_secret(path, &token)?;
            Ok(format!(
                "authentication on; made the admin root, its token is in {}\n",
                path.display()
            ))
        }
        None => {
            eprintln!("authentication on; made the admin root, its token is shown once:");
            Ok(format!("{token}\n"))
        }
    }
}

/// Says on stderr which nodes did not confirm a change of the users in time.
pub fn warn_late(nodes: &[u64]) {
    for n in nodes {
        eprintln!(
            "warning: node {n} did not confirm the change within {:?} (down or cut off?); it \
             takes it with its next read of the meta region",
            corekv_net::auth::TAKE_WAIT
        );
    }
}

/// Writes `secret` and a newline to `path`, readable by its owner only.
pub fn write_secret(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // A file that was there keeps its mode when opened: set it.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    writeln!(f, "{secret}").map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    f.sync_all()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(())
}

/// A user as `ctl user list --json` gives it (no token, no hash).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct UserRow {
    /// Name.
    pub name: String,
    /// Roles, as `--role` takes them.
    pub roles: Vec<String>,
    /// When it was made or its token rotated (Unix ms).
    pub changed_unix_ms: u64,
}

/// The users of `table`.
pub fn user_rows(table: &corekv_net::auth::AuthTable) -> Vec<UserRow> {
    table
        .users
        .iter()
        .map(|u| UserRow {
            name: u.name.clone(),
            roles: u.grants.iter().map(|g| g.to_string()).collect(),
            changed_unix_ms: u.changed_unix_ms,
        })
        .collect()
}

/// `ctl user list` as text.
pub fn users_table(table: &corekv_net::auth::AuthTable, rows: &[UserRow]) -> String {
    let mut s = format!(
        "authentication {} in the meta region, {} users\n",
        if table.enabled { "on" } else { "off" },
        rows.len()
    );
    for r in rows {
        s += &format!("{:<24} {}\n", r.name, r.roles.join(","));
    }
    s
}

/// A hot key as `ctl hotkeys` lists it: where it is served.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HotKeyRow {
    /// The key (text, or `0x` and hex).
    pub key: String,
    /// Its region.
    pub region: u64,
    /// The node and shard serving it.
    pub node: u64,
    /// The shard.
    pub shard: usize,
    /// Estimated requests per second over the last second.
    pub ops_per_sec: f64,
}

/// Every shard's hot keys, hottest first; only region `region` if given;
/// at most `limit`.
pub fn hot_keys(docs: &[NodeReport], region: Option<u64>, limit: usize) -> Vec<HotKeyRow> {
    let mut rows: Vec<HotKeyRow> = docs
        .iter()
        .filter_map(|d| match d {
            NodeReport::Up(d) => Some(d),
            NodeReport::Unreachable { .. } => None,
        })
        .flat_map(|d| {
            d.shards.iter().flat_map(move |sh| {
                sh.hot_keys.iter().map(move |h| HotKeyRow {
                    key: h.key.clone(),
                    region: h.region,
                    node: d.node_id,
                    shard: sh.shard,
                    ops_per_sec: h.ops_per_sec,
                })
            })
        })
        .filter(|r| region.is_none_or(|id| r.region == id))
        .collect();
    rows.sort_by(|a, b| {
        b.ops_per_sec
            .total_cmp(&a.ops_per_sec)
            .then_with(|| a.key.cmp(&b.key))
    });
    rows.truncate(limit);
    rows
}

/// `ctl hotkeys` as a table.
pub fn hot_keys_table(rows: &[HotKeyRow]) -> String {
    if rows.is_empty() {
        return "no key was requested often enough in the last second to show\n".into();
    }
    let mut s = String::from("req/s      region  node/shard  key\n");
    for r in rows {
        s += &format!(
            "{:<10} {:<7} {:<11} {}\n",
            r.ops_per_sec,
            r.region,
            format!("{}/{}", r.node, r.shard),
            r.key
        );
    }
    s
}

/// `ctl regions` as a table.
pub fn regions_table(rows: &[RegionReport]) -> String {
    let mut s = String::from(
        "region  hash range                               epoch  peers(nodes)  leader(node/shard)  applied  log  keys  bytes  read/s  write/s\n",
    );
    for RegionReport { region: r, .. } in rows {
        let peers: Vec<String> = r.peers.iter().map(|p| p.node.to_string()).collect();
        let leader = if r.role == Role::Leader {
            format!("{}/{}", r.leader_node, r.shard)
        } else if r.leader_node != 0 {
            format!("{}/?", r.leader_node)
        } else {
            "none".into()
        };
        s += &format!(
            "{:<7} {:016x}-{:016x}  {}/{}    {:<13} {:<19} {:<8} {:<4} {:<5} {:<6} {:<7} {}\n",
            r.id,
            r.start_hash,
            r.end_hash,
            r.epoch.conf_ver,
            r.epoch.version,
            peers.join(","),
            leader,
            r.applied_index,
            r.log_entries,
            r.keys,
            r.bytes,
            r.read_ops_per_sec,
            r.write_ops_per_sec,
        );
    }
    s
}

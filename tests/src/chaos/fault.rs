//! Faults: injecting one (kill, pause, partitions, loss, delay, splits, moves,
//! the lagging-node and kill-loop scenarios), healing, and waiting on the
//! cluster meanwhile.

use super::*;

/// The faults that run their own course until `until`: `lag`,
/// `kill-loop` and `idle` (see the module's documentation). Returns what
/// was done.
pub(super) fn during(
    cluster: &mut LocalCluster,
    base: &[String],
    shared: &Shared,
    kind: FaultKind,
    (victim, choice): (usize, usize),
    until: Instant,
) -> anyhow::Result<String> {
    let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    let id = ids[victim];
    let mut cfg = admin_config(cluster_endpoints(cluster));
    cfg.request_timeout = Duration::from_secs(5);
    match kind {
        FaultKind::Lag => {
            cluster.set_faults(victim, &format!("{}isolate\n", base[victim]))?;
            std::thread::sleep(Duration::from_millis(300));
            let mut done = vec![format!("node {id} cut off")];
            if let Ok(mut c) = Client::connect(cfg) {
                // Led elsewhere: the lagging node must miss it.
                let held: Vec<_> = crate::data_routes(&c)
                    .into_iter()
                    .filter(|r| r.region.peer_on_node(id).is_some() && r.leader_node != id)
                    .collect();
                if !held.is_empty() {
                    let r = held[choice % held.len()].region.id;
                    done.push(match c.split(r, None) {
                        Ok(_) => format!("region {r} split"),
                        Err(e) => format!("region {r} split: {e}"),
                    });
                }
                // A replica of a region the lagging node holds moves
                // between two other nodes, and leads from its new place.
                let _ = c.refresh();
                let movable: Vec<_> = crate::data_routes(&c)
                    .into_iter()
                    .filter(|r| {
                        r.region.peer_on_node(id).is_some()
                            && r.leader_node != id
                            && ids.iter().any(|n| r.region.peer_on_node(*n).is_none())
                    })
                    .collect();
                if !movable.is_empty() {
                    let route = &movable[choice / 7 % movable.len()];
                    let r = route.region.clone();
                    // A follower's replica: the leader stays put meanwhile.
                    let from = r
                        .peers
                        .iter()
                        .map(|p| p.node_id)
                        .find(|n| *n != id && *n != route.leader_node)
                        .unwrap_or(0);
                    let to = ids
                        .iter()
                        .copied()
                        .find(|n| r.peer_on_node(*n).is_none())
                        .unwrap_or(0);
                    done.push(match crate::ctl_move(&mut c, r.id, from, to) {
                        Ok(_) => match c.transfer_leader(r.id, to) {
                            Ok(_) => format!("region {} moved {from} -> {to}, led from {to}", r.id),
                            Err(e) => format!("region {} moved {from} -> {to}; lead: {e}", r.id),
                        },
                        Err(e) => format!("region {} move {from} -> {to}: {e:#}", r.id),
                    });
                }
            }
            sleep_until_or(until, u64::MAX / 4);
            Ok(done.join(", "))
        }
        FaultKind::KillLoop => {
            let stop = Arc::new(AtomicBool::new(false));
            let acked = Arc::new(AtomicU64::new(0));
            let writer = {
                let (stop, acked, cfg) = (stop.clone(), acked.clone(), cfg.clone());
                std::thread::spawn(move || {
                    let Ok(mut c) = Client::connect(cfg) else {
                        return Vec::new();
                    };
                    let mut keys = Vec::new();
                    for i in 0u64.. {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let key = format!("big-{choice}-{}", i % 8);
                        let mut value = format!("{i:020}").into_bytes();
                        value.resize(900 << 10, b'.');
                        if c.put(key.as_bytes(), &value, PutOptions::default()).is_ok() {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        keys.push(key);
                    }
                    keys
                })
            };
            let mut kills = 0;
            let mut rng = StdRng::seed_from_u64(choice as u64);
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(rng.gen_range(200..1000)));
                cluster.kill(victim);
                kills += 1;
                cluster.start_node(victim)?;
                let addr = cluster.nodes[victim].client_addr.clone();
                let deadline = Instant::now() + Duration::from_secs(20);
                let login = cluster.node_login();
                while !corekv_tools::dev::node_answers_with(&addr, login.clone(), super::tls())
                    && Instant::now() < deadline
                {
                    if let Some((n, status)) = cluster.exited() {
                        let log = cluster.nodes[victim].dir.join("server.log");
                        shared.restart_failures.lock().unwrap().push(format!(
                            "node {n} exited ({status}) when started after SIGKILL {kills}: {}",
                            corekv_tools::dev::tail(&log, 3).trim()
                        ));
                        cluster.start_node(victim)?;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            stop.store(true, Ordering::SeqCst);
            let keys = writer.join().unwrap_or_default();
            shared.big_keys.lock().unwrap().extend(keys);
            Ok(format!(
                "node {id} SIGKILLed and restarted {kills} times during 900 KB writes ({} acknowledged)",
                acked.load(Ordering::Relaxed)
            ))
        }
        FaultKind::Idle => {
            // Nothing for the regions to do for 1.5 s: they fall asleep
            // (500 ms without anything new by default).
            shared.idle.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1500));
            let fails = [FaultKind::Kill, FaultKind::Isolate, FaultKind::Pause];
            let kind = fails[choice % fails.len()];
            let other = (victim + 1) % ids.len();
            let failed = inject(cluster, base, kind, (victim, other, choice / 3));
            // The sleeping followers must notice and elect meanwhile.
            std::thread::sleep(Duration::from_millis(600));
            shared.idle.store(false, Ordering::SeqCst);
            let failed = failed?;
            sleep_until_or(until, u64::MAX / 4);
            Ok(format!("clients idle 1.5 s, then while asleep: {failed}"))
        }
        _ => unreachable!("only lag, kill-loop and idle run their own course"),
    }
}

pub(super) fn sleep_until_or(limit: Instant, ms: u64) {
    let until = (Instant::now() + Duration::from_millis(ms)).min(limit);
    if let Some(d) = until.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

pub(super) fn wait_until_node_leads(
    cluster: &LocalCluster,
    node: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let endpoints: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.client_addr.clone())
        .collect();
    loop {
        if let Ok(c) = Client::connect(admin_config(endpoints.clone())) {
            if c.routes().iter().any(|r| r.leader_node == node) {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "node {node} never led a region");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn inject(
    cluster: &mut LocalCluster,
    base: &[String],
    kind: FaultKind,
    (victim, other, choice): (usize, usize, usize),
) -> anyhow::Result<String> {
    let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    let id = |i: usize| ids[i];
    let others: Vec<u64> = (0..ids.len()).filter(|&i| i != victim).map(id).collect();
    let rules = |extra: &str, i: usize| format!("{}{extra}", base[i]);
    Ok(match kind {
        FaultKind::Kill => {
            cluster.kill(victim);
            format!("SIGKILL node {}", id(victim))
        }
        FaultKind::Pause => {
            cluster.signal(victim, libc::SIGSTOP);
            format!("SIGSTOP node {}", id(victim))
        }
        FaultKind::Isolate => {
            cluster.set_faults(victim, &rules("isolate\n", victim))?;
            format!("node {} cut off from the others", id(victim))
        }
        FaultKind::OneWay => {
            let lines: String = others.iter().map(|o| format!("drop-to {o}\n")).collect();
            cluster.set_faults(victim, &rules(&lines, victim))?;
            format!("node {} can hear but not speak", id(victim))
        }
        FaultKind::CutLink => {
            let (a, b) = (id(victim), id(other));
            cluster.set_faults(
                victim,
                &rules(&format!("drop-to {b}\ndrop-from {b}\n"), victim),
            )?;
            cluster.set_faults(
                other,
                &rules(&format!("drop-to {a}\ndrop-from {a}\n"), other),
            )?;
            format!("link {a}-{b} cut")
        }
        FaultKind::Loss => {
            for i in 0..cluster.nodes.len() {
                cluster.set_faults(i, &rules("loss 0.3\n", i))?;
            }
            "30% of raft frames lost".to_string()
        }
        FaultKind::Delay => {
            for i in 0..cluster.nodes.len() {
                cluster.set_faults(i, &rules("delay-ms 40\n", i))?;
            }
            "raft frames delayed 40 ms".to_string()
        }
        FaultKind::Move => {
            let mut cfg = admin_config(cluster_endpoints(cluster));
            cfg.request_timeout = Duration::from_secs(2);
            match Client::connect(cfg) {
                Ok(mut c) => {
                    let routes = c.routes().to_vec();
                    let r = &routes[choice % routes.len()].region;
                    // From the victim if it holds a replica, to a node
                    // without one.
                    let from = r
                        .peer_on_node(id(victim))
                        .or_else(|| r.peers.get(choice % r.peers.len()))
                        .map_or(0, |p| p.node_id);
                    let to = ids.iter().copied().find(|n| r.peer_on_node(*n).is_none());
                    match to {
                        Some(to) => match crate::ctl_move(&mut c, r.id, from, to) {
                            Ok(report) => report.trim().to_string(),
                            Err(e) => format!("region {} move {from} -> {to}: {e:#}", r.id),
                        },
                        None => format!("region {}: a replica on every node", r.id),
                    }
                }
                Err(e) => format!("move: no node answered: {e}"),
            }
        }
        FaultKind::Lag | FaultKind::KillLoop | FaultKind::Idle => {
            unreachable!("run by `during`")
        }
        FaultKind::Split => {
            let mut cfg = admin_config(cluster_endpoints(cluster));
            cfg.request_timeout = Duration::from_secs(2);
            match Client::connect(cfg) {
                Ok(mut c) => {
                    // The meta region owns a single hash: it never splits.
                    let routes = crate::data_routes(&c);
                    let region = routes[choice % routes.len()].region.id;
                    match c.split(region, None) {
                        Ok(_) => format!("region {region} split ({} regions)", routes.len() + 1),
                        Err(e) => format!("region {region} split: {e}"),
                    }
                }
                Err(e) => format!("split: no node answered: {e}"),
            }
        }
    })
}

pub(super) fn cluster_endpoints(cluster: &LocalCluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .map(|n| n.client_addr.clone())
        .collect()
}

pub(super) fn heal(cluster: &mut LocalCluster, base: &[String]) -> anyhow::Result<()> {
    for (i, rules) in base.iter().enumerate() {
        cluster.set_faults(i, rules)?;
        cluster.signal(i, libc::SIGCONT);
        if !cluster.is_running(i) {
            cluster.start_node(i)?;
        }
    }
    // Fault files are re-read every 100 ms.
    std::thread::sleep(Duration::from_millis(150));
    Ok(())
}

//! The clients: each runs operations on its keys and records what it invoked
//! and what came back.

use super::*;

pub(super) fn connect(endpoints: &[String], shared: &Shared) -> anyhow::Result<Client> {
    let mut cfg = login_config(endpoints.to_vec());
    cfg.request_timeout = Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect(cfg.clone()) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline || shared.stop.load(Ordering::SeqCst) => {
                anyhow::bail!("no node answers: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// How an attempted operation ended.
pub(super) enum Done {
    Ok(Output),
    /// Definitely not applied.
    Failed,
    /// May or may not have been applied.
    Unknown,
}

pub(super) fn classify<T>(r: Result<T, ClientError>, ok: impl FnOnce(T) -> Output) -> Done {
    match r {
        Ok(v) => Done::Ok(ok(v)),
        Err(ClientError::ConditionFailed { .. }) => Done::Ok(Output::Cas(false)),
        Err(ClientError::NotANumber) => Done::Ok(Output::NotANumber),
        // The client gives up with `Unavailable` only when no attempt could
        // have been applied; that is a promise this run checks.
        Err(ClientError::Unavailable { .. }) => Done::Failed,
        Err(_) => Done::Unknown,
    }
}

pub(super) fn read(c: &mut Client, key: &str, consistency: Consistency) -> Done {
    match c.get(key.as_bytes(), consistency) {
        Ok(v) => Done::Ok(Output::Value(
            v.map(|v| String::from_utf8_lossy(&v.value).into_owned()),
        )),
        // A read that got no answer constrains nothing.
        Err(_) => Done::Failed,
    }
}

pub(super) fn record(
    shared: &Shared,
    client: u64,
    key: &str,
    input: Input,
    f: impl FnOnce() -> Done,
) {
    let call = shared.now_us();
    let done = f();
    let ret = shared.now_us();
    record_timed(shared, client, key, input, (call, ret), done);
}

/// Records an operation invoked at `call` and answered at `ret` (µs of the
/// run), as [`record`] does.
pub(super) fn record_timed(
    shared: &Shared,
    client: u64,
    key: &str,
    input: Input,
    (call, ret): (u64, u64),
    done: Done,
) {
    let kind = match &input {
        Input::Get => "get",
        Input::Put(_) => "put",
        Input::Delete => "delete",
        Input::Cas { .. } => "cas",
        Input::Incr(_) => "incr",
    };
    let (outcome, op) = match done {
        Done::Ok(out) => (
            "ok",
            Some(Operation {
                client,
                key: key.to_string(),
                call,
                ret: Some(ret),
                input,
                output: Some(out),
            }),
        ),
        Done::Unknown => (
            "unknown",
            Some(Operation {
                client,
                key: key.to_string(),
                call,
                ret: None,
                input,
                output: None,
            }),
        ),
        Done::Failed => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            if let Input::Put(v) | Input::Cas { new: v, .. } = &input {
                shared.failed_values.lock().unwrap().insert(v.clone());
            }
            ("failed", None)
        }
    };
    shared.count(&format!("{kind} {outcome}"));
    if let Some(op) = op {
        shared.ops.lock().unwrap().push(op);
    }
}

/// Scans the page of keys under `prefix` that starts at `at`'s hash and
/// records it as a read of each of `prefix0` .. `prefix{keys-1}` whose hash
/// the page covers: present with its value, or absent. A page is one
/// linearizable read of its region (ReadIndex), so each such read must fit
/// the key's history like a get.
fn scan_page(shared: &Shared, client: u64, c: &mut Client, prefix: &str, at: &str, keys: usize) {
    let from = corekv_engine::route_hash(at.as_bytes());
    let call = shared.now_us();
    let page = c.scan_prefix_page(from, 10_000, false, prefix.as_bytes());
    let ret = shared.now_us();
    let (items, next) = match page {
        Ok(p) => p,
        // A scan that got no answer constrains nothing.
        Err(_) => {
            shared.count("scan failed");
            return;
        }
    };
    if items.iter().any(|(k, _)| !k.starts_with(prefix.as_bytes())) {
        shared.scan_strays.fetch_add(1, Ordering::Relaxed);
    }
    let found: BTreeMap<&[u8], String> = items
        .iter()
        .map(|(k, v)| (&k[..], String::from_utf8_lossy(&v.value).into_owned()))
        .collect();
    let end = next.unwrap_or(u64::MAX);
    let all_to_end = next.is_none();
    shared.count("scan ok");
    for i in 0..keys {
        let key = format!("{prefix}{i}");
        let h = corekv_engine::route_hash(key.as_bytes());
        if h < from || (h >= end && !all_to_end) {
            continue;
        }
        let seen = found.get(key.as_bytes()).cloned();
        shared.ops.lock().unwrap().push(Operation {
            client,
            key,
            call,
            ret: Some(ret),
            input: Input::Get,
            output: Some(Output::Value(seen)),
        });
    }
}

/// One client: random operations until told to stop. Returns the keys used.
pub(super) fn client_loop(
    client: u64,
    shared: &Shared,
    endpoints: Vec<String>,
    opts: &ChaosOptions,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ client);
    let mut used = std::collections::BTreeSet::new();
    let Ok(mut c) = connect(&endpoints, shared) else {
        return Vec::new();
    };
    let mut last_seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.idle.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let generation =
            shared.started.elapsed().as_millis() / opts.key_rotation.as_millis().max(1);
        n += 1;
        let counter = rng.gen_bool(0.2);
        let key = if counter {
            format!("g{generation}-counter-{}", rng.gen_range(0..2))
        } else {
            format!("g{generation}-reg-{}", rng.gen_range(0..opts.keys))
        };
        used.insert(key.clone());
        let consistency = match rng.gen_range(0..10) {
            0..=1 => Consistency::Lease,
            2..=4 => Consistency::Follower,
            _ => Consistency::Linearizable,
        };
        let value = format!("c{client}-{n}");
        let reader = client as usize <= opts.readers;
        let roll = if reader { 0 } else { rng.gen_range(0..100) };
        if counter {
            if roll < 50 {
                record(shared, client, &key, Input::Get, || {
                    read(&mut c, &key, consistency)
                });
            } else {
                record(shared, client, &key, Input::Incr(1), || {
                    classify(c.incr(key.as_bytes(), 1), Output::Counter)
                });
            }
            continue;
        }
        match roll {
            // A page of a prefix scan: one linearizable read of every
            // register key of the generation whose hash the page covers.
            0..=3 if !reader => {
                let prefix = format!("g{generation}-reg-");
                scan_page(shared, client, &mut c, &prefix, &key, opts.keys);
            }
            0..=39 => {
                let mut seen = None;
                record(shared, client, &key, Input::Get, || {
                    let d = read(&mut c, &key, consistency);
                    if let Done::Ok(Output::Value(v)) = &d {
                        seen = Some(v.clone());
                    }
                    d
                });
                if let Some(v) = seen {
                    last_seen.insert(key.clone(), v);
                }
            }
            40..=64 => record(shared, client, &key, Input::Put(value.clone()), || {
                classify(
                    c.put(key.as_bytes(), value.as_bytes(), PutOptions::default()),
                    |_| Output::Written,
                )
            }),
            65..=84 => {
                let expected = last_seen.get(&key).cloned().flatten();
                record(
                    shared,
                    client,
                    &key,
                    Input::Cas {
                        expected: expected.clone(),
                        new: value.clone(),
                    },
                    || {
                        classify(
                            c.cas(
                                key.as_bytes(),
                                expected.as_deref().map(str::as_bytes),
                                value.as_bytes(),
                                None,
                            ),
                            |_| Output::Cas(true),
                        )
                    },
                );
            }
            _ => record(shared, client, &key, Input::Delete, || {
                classify(c.delete(key.as_bytes(), None), Output::Deleted)
            }),
        }
    }
    used.into_iter().collect()
}

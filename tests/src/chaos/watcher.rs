//! The watchers: one follows every generation of keys, another the prefix
//! of all of them; both record each change they are sent, for the watch
//! checker.

use super::*;

/// The keys clients use in `generation`.
pub(super) fn generation_keys(generation: u128, opts: &ChaosOptions) -> Vec<String> {
    (0..opts.keys)
        .map(|i| format!("g{generation}-reg-{i}"))
        .chain((0..2).map(|i| format!("g{generation}-counter-{i}")))
        .collect()
}

pub(super) fn watch_generation(
    c: &mut Client,
    generation: u128,
    opts: &ChaosOptions,
) -> Result<Watch, String> {
    let keys = generation_keys(generation, opts);
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    // Leaders may be changing: try for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.watch(&refs, 0) {
            Ok(w) => return Ok(w),
            Err(e) if Instant::now() > deadline => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Watches each key generation from before it starts until told to stop,
/// gathering the changes into `shared.watched`; leaves the streams' states
/// in `shared.watch_streams`.
pub(super) fn watch_loop(shared: &Shared, c: Client, first: Watch, opts: &ChaosOptions) {
    let mut watches = vec![Some(first)];
    watch_generations(shared, c, &mut watches, opts);
    let mut lines = Vec::new();
    for (g, w) in watches.iter().enumerate() {
        if let Some(w) = w {
            lines.extend(w.streams().iter().map(|s| format!("g{g}: {s}")));
        }
    }
    *shared.watch_streams.lock().unwrap() = lines;
}

pub(super) fn watch_generations(
    shared: &Shared,
    mut c: Client,
    watches: &mut Vec<Option<Watch>>,
    opts: &ChaosOptions,
) {
    let rotation = opts.key_rotation.as_millis().max(1);
    let fail = |m: String| *shared.watch_failure.lock().unwrap() = Some(m);
    loop {
        let current = shared.started.elapsed().as_millis() / rotation;
        let next = watches.len() as u128;
        if next <= current + 2 && !shared.stop.load(Ordering::SeqCst) {
            // Opened up to two generations ahead. A watch that could not be
            // opened before its generation began (the cluster was
            // unavailable that long) would miss the first writes: that
            // generation is left out of the watch check, and said so.
            match watch_generation(&mut c, next, opts) {
                Ok(w) if shared.started.elapsed().as_millis() / rotation < next => {
                    watches.push(Some(w))
                }
                Ok(_) => {
                    shared.watch_unchecked.lock().unwrap().push((
                        next,
                        "its watch was accepted only after its writes began".into(),
                    ));
                    watches.push(None);
                }
                Err(e) => {
                    shared
                        .watch_unchecked
                        .lock()
                        .unwrap()
                        .push((next, format!("its watch could not be opened: {e}")));
                    watches.push(None);
                }
            }
        }
        for w in watches.iter().flatten() {
            loop {
                match w.next(Duration::ZERO) {
                    Ok(Some(ch)) => {
                        let key = String::from_utf8_lossy(&ch.key).into_owned();
                        shared
                            .watched
                            .lock()
                            .unwrap()
                            .entry(key)
                            .or_default()
                            .push(ch);
                    }
                    Ok(None) => break,
                    Err(e) => return fail(format!("a watch ended: {e}")),
                }
            }
        }
        if shared.watch_stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The prefix every generation's keys begin with.
pub(super) const GENERATIONS_PREFIX: &str = "g";

/// A prefix watch of every generation's keys (leaders may be changing:
/// tries for a while).
pub(super) fn watch_prefix_of_all(c: &mut Client) -> Result<Watch, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.watch_prefix(GENERATIONS_PREFIX.as_bytes()) {
            Ok(w) => return Ok(w),
            Err(e) if Instant::now() > deadline => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Gathers the prefix watch's changes into `shared.prefix_watched` until
/// told to stop; returns its streams' states.
pub(super) fn prefix_watch_loop(shared: &Shared, w: Watch) -> Vec<String> {
    while !shared.watch_stop.load(Ordering::SeqCst) {
        match w.next(Duration::from_millis(50)) {
            Ok(Some(ch)) => {
                let key = String::from_utf8_lossy(&ch.key).into_owned();
                shared
                    .prefix_watched
                    .lock()
                    .unwrap()
                    .entry(key)
                    .or_default()
                    .push(ch);
            }
            Ok(None) => {}
            Err(e) => {
                *shared.prefix_failure.lock().unwrap() = Some(format!("it ended: {e}"));
                break;
            }
        }
    }
    w.streams().iter().map(|s| s.to_string()).collect()
}

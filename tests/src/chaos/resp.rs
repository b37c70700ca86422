//! Clients that speak the Redis protocol to the nodes' `--resp-listen`
//! ports: GET, SET, DEL and INCR, recorded in the same history as the
//! native clients, so the checker covers the Redis front too.

use std::io::{Read, Write};
use std::net::TcpStream;

use super::workload::{record, record_timed, Done};
use super::*;

/// One reply, as far as these clients need it.
enum Reply {
    Status,
    Error(String),
    Int(i64),
    Bulk(Option<String>),
}

struct Conn {
    stream: corekv_net::tls::SyncStream,
    buf: Vec<u8>,
}

impl Conn {
    fn connect(addr: &str) -> std::io::Result<Conn> {
        let sa: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
        let stream = TcpStream::connect_timeout(&sa, Duration::from_secs(1))?;
        // Longer than the node's own 5 s request budget: a reply comes
        // first unless the node itself is stuck (paused, cut off).
        stream.set_read_timeout(Some(Duration::from_secs(8)))?;
        stream.set_nodelay(true)?;
        let stream = corekv_net::tls::SyncStream::dial(stream, addr, super::tls().as_ref())
            .map_err(std::io::Error::other)?;
        let mut c = Conn {
            stream,
            buf: Vec::new(),
        };
        if let Some(l) = super::login() {
            match c.call(&["AUTH", &l.user, &l.token])? {
                Reply::Status => {}
                Reply::Error(e) => return Err(std::io::Error::other(format!("AUTH: {e}"))),
                _ => return Err(std::io::Error::other("AUTH: unexpected reply")),
            }
        }
        Ok(c)
    }

    fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..p]).into_owned();
                self.buf.drain(..p + 2);
                return Ok(l);
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn call(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        self.send(&[args])?;
        self.reply()
    }

    /// Sends commands in one write (a pipeline).
    fn send(&mut self, cmds: &[&[&str]]) -> std::io::Result<()> {
        let mut out = String::new();
        for args in cmds {
            out.push_str(&format!("*{}\r\n", args.len()));
            for a in *args {
                out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
        }
        self.stream.write_all(out.as_bytes())
    }

    fn reply(&mut self) -> std::io::Result<Reply> {
        let l = self.line()?;
        let bad = || std::io::Error::other(format!("unexpected reply {l:?}"));
        Ok(match l.as_bytes().first() {
            Some(b'+') => Reply::Status,
            Some(b'-') => Reply::Error(l[1..].to_string()),
            Some(b':') => Reply::Int(l[1..].parse().map_err(|_| bad())?),
            Some(b'$') if l == "$-1" => Reply::Bulk(None),
            Some(b'$') => {
                let n: usize = l[1..].parse().map_err(|_| bad())?;
                while self.buf.len() < n + 2 {
                    self.fill()?;
                }
                let v = String::from_utf8_lossy(&self.buf[..n]).into_owned();
                self.buf.drain(..n + 2);
                Reply::Bulk(Some(v))
            }
            _ => return Err(bad()),
        })
    }
}

/// What a write's reply says about it. `UNCERTAIN` is an unknown outcome;
/// `CLUSTERDOWN` (no replica could answer) and `ERR not applied` failures;
/// anything else unexpected, or a broken connection, is unknown.
fn write_done(r: std::io::Result<Reply>, ok: impl FnOnce(Reply) -> Option<Output>) -> Done {
    match r {
        // No replica answered, or a pipelined write refused and not sent
        // again: not applied, a promise the checker holds the front to.
        Ok(Reply::Error(e)) if e.starts_with("CLUSTERDOWN") || e.starts_with("ERR not applied") => {
            Done::Failed
        }
        Ok(Reply::Error(e)) if e.starts_with("ERR value is not an integer") => {
            Done::Ok(Output::NotANumber)
        }
        Ok(Reply::Error(_)) | Err(_) => Done::Unknown,
        Ok(r) => ok(r).map_or(Done::Unknown, Done::Ok),
    }
}

/// One Redis client: random operations until told to stop, moving to the
/// next node's Redis port when its connection breaks. Returns the keys
/// used.
pub(super) fn resp_client_loop(
    client: u64,
    shared: &Shared,
    addrs: Vec<String>,
    opts: &ChaosOptions,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ client);
    let mut used = std::collections::BTreeSet::new();
    let mut node = client as usize % addrs.len();
    let mut conn: Option<Conn> = None;
    let mut n = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.idle.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if conn.is_none() {
            match Conn::connect(&addrs[node]) {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    node = (node + 1) % addrs.len();
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        if rng.gen_bool(0.25) {
            // A pipeline: several commands in one write, each recorded from
            // the send to its own reply (the server runs runs of one region
            // together).
            n += 1;
            if !burst(c, client, n, shared, opts, &mut rng, &mut used) {
                conn = None;
                node = (node + 1) % addrs.len();
            }
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
        let value = format!("r{client}-{n}");
        let roll = rng.gen_range(0..100);
        let mut broken = false;
        let mut note = |r: &std::io::Result<Reply>| broken |= r.is_err();
        if counter && roll >= 50 {
            record(shared, client, &key, Input::Incr(1), || {
                let r = c.call(&["INCR", &key]);
                note(&r);
                write_done(r, |r| match r {
                    Reply::Int(v) => Some(Output::Counter(v)),
                    _ => None,
                })
            });
        } else if roll < 45 || counter {
            record(shared, client, &key, Input::Get, || {
                let r = c.call(&["GET", &key]);
                note(&r);
                match r {
                    Ok(Reply::Bulk(v)) => Done::Ok(Output::Value(v)),
                    // A read that got no answer constrains nothing.
                    _ => Done::Failed,
                }
            });
        } else if roll < 85 {
            record(shared, client, &key, Input::Put(value.clone()), || {
                let r = c.call(&["SET", &key, &value]);
                note(&r);
                write_done(r, |r| matches!(r, Reply::Status).then_some(Output::Written))
            });
        } else {
            record(shared, client, &key, Input::Delete, || {
                let r = c.call(&["DEL", &key]);
                note(&r);
                write_done(r, |r| match r {
                    Reply::Int(d) => Some(Output::Deleted(d == 1)),
                    _ => None,
                })
            });
        }
        if broken {
            conn = None;
            node = (node + 1) % addrs.len();
        }
    }
    used.into_iter().collect()
}

/// One pipeline of 2 to 6 GETs, SETs or INCRs (on few keys, so that runs of
/// one region occur); false if the connection broke.
fn burst(
    c: &mut Conn,
    client: u64,
    n: u64,
    shared: &Shared,
    opts: &ChaosOptions,
    rng: &mut StdRng,
    used: &mut std::collections::BTreeSet<String>,
) -> bool {
    let generation = shared.started.elapsed().as_millis() / opts.key_rotation.as_millis().max(1);
    let writes = rng.gen_bool(0.5);
    let len = rng.gen_range(2..=6);
    let mut ops: Vec<(String, Input, Vec<String>)> = Vec::new();
    for j in 0..len {
        let counter = rng.gen_bool(0.3);
        let key = if counter {
            format!("g{generation}-counter-{}", rng.gen_range(0..2))
        } else {
            format!("g{generation}-reg-{}", rng.gen_range(0..opts.keys.min(3)))
        };
        used.insert(key.clone());
        let (input, args) = match (writes, counter) {
            (false, _) => (Input::Get, vec!["GET".to_string(), key.clone()]),
            (true, true) => (Input::Incr(1), vec!["INCR".to_string(), key.clone()]),
            (true, false) => {
                let v = format!("p{client}-{n}-{j}");
                (
                    Input::Put(v.clone()),
                    vec!["SET".to_string(), key.clone(), v],
                )
            }
        };
        ops.push((key, input, args));
    }
    let cmds: Vec<Vec<&str>> = ops
        .iter()
        .map(|(_, _, a)| a.iter().map(String::as_str).collect())
        .collect();
    let refs: Vec<&[&str]> = cmds.iter().map(Vec::as_slice).collect();
    let call = shared.now_us();
    let sent = c.send(&refs).is_ok();
    let mut broken = !sent;
    for (key, input, _) in ops {
        let r = if broken {
            Err(std::io::ErrorKind::BrokenPipe.into())
        } else {
            c.reply()
        };
        broken |= r.is_err();
        let ret = shared.now_us();
        let done = match &input {
            Input::Get => match r {
                Ok(Reply::Bulk(v)) => Done::Ok(Output::Value(v)),
                _ => Done::Failed,
            },
            Input::Incr(_) => write_done(r, |r| match r {
                Reply::Int(v) => Some(Output::Counter(v)),
                _ => None,
            }),
            _ => write_done(r, |r| matches!(r, Reply::Status).then_some(Output::Written)),
        };
        record_timed(shared, client, &key, input, (call, ret), done);
    }
    !broken
}

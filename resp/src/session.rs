//! One Redis connection's state and how it answers each command: the
//! connection and server commands, MULTI/EXEC/WATCH, and data commands run
//! against the cluster.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::commands::{self, is, lookup, not_integer, parse_int, wrong_arity, Run, Spec};
use crate::reply::Reply;
use crate::server::Shared;
use crate::store::{now_ms, store_err, Store, StoreError};
use crate::view::{atomically, Attempt};
use corekv_net::auth::{AuthState, Principal};

/// Redis's reply when the keys of one request are in several regions.
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// A MULTI in progress.
struct Multi {
    queue: Vec<Vec<Bytes>>,
    /// A command was refused while queueing: EXEC aborts.
    failed: bool,
}

/// One connection.
pub struct Session {
    /// Connection id (`CLIENT ID`).
    pub id: u64,
    /// Protocol of the replies, 2 or 3.
    pub proto: u8,
    /// Set by QUIT: close after the reply.
    pub closing: bool,
    store: Box<dyn Store + Send>,
    shared: Arc<Shared>,
    multi: Option<Multi>,
    /// WATCHed keys and the versions they had then (None: absent).
    watched: Vec<(Bytes, Option<u64>)>,
    /// Who the client logged in as (AUTH, HELLO AUTH).
    principal: Principal,
    /// The client's address, if known (protected mode).
    remote: Option<std::net::SocketAddr>,
}

/// Commands that may be queued inside MULTI but are not data commands:
/// what they answer depends on their arguments alone.
fn queueable_conn(name: &str) -> bool {
    matches!(
        name,
        "ping" | "echo" | "time" | "select" | "config" | "command" | "info" | "unwatch"
    )
}

/// Keys per page when a command walks the whole key space.
pub const PAGE_KEYS: u32 = 1000;

/// A random routing hash (RANDOMKEY).
fn rand_hash() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Commands one MULTI may queue.
pub const MULTI_QUEUE_MAX: usize = 4096;
/// Keys one connection may WATCH.
pub const WATCHED_KEYS_MAX: usize = 4096;

impl Session {
    /// A new connection from `peer` on `store` (registered with `shared`
    /// until dropped).
    pub fn new(shared: Arc<Shared>, store: Box<dyn Store + Send>, peer: String) -> Session {
        let remote = peer.parse().ok();
        Session {
            remote,
            id: shared.register(peer),
            proto: 2,
            closing: false,
            store,
            shared,
            multi: None,
            watched: Vec::new(),
            principal: Principal::Anonymous,
        }
    }

    /// The store, for tests that play another client.
    #[cfg(test)]
    pub fn store_for_tests(&mut self) -> &mut (dyn Store + Send) {
        self.store.as_mut()
    }

    /// Answers pipelined commands in order, each reply encoded into `out`
    /// in the protocol in force after its command (HELLO and RESET switch
    /// it). Returns how many commands it ran: it stops after a QUIT, and
    /// once `out` holds `budget` bytes or more, so that the caller writes
    /// them before running the rest. Outside MULTI, a run of GETs of one
    /// region is read in one go, in order, none from an older state than
    /// the one before, and a run of writes of one region that need no read
    /// first (SET, SETNX, SETEX, INCR..., DEL of one key) is sent in one go
    /// and applied by the region's log in order: no client can tell either
    /// from one command after another.
    pub fn handle_pipeline(
        &mut self,
        cmds: &[Vec<Bytes>],
        out: &mut Vec<u8>,
        budget: usize,
    ) -> usize {
        let mut i = 0;
        while i < cmds.len() && !self.closing && (i == 0 || out.len() < budget) {
            let writes = self.write_run(&cmds[i..]);
            if writes.len() >= 2 {
                let st = &self.shared.stats;
                st.commands
                    .fetch_add(writes.len() as u64, Ordering::Relaxed);
                self.shared.note_command(self.id, "set");
                let n = writes.len();
                let (ops, kinds): (Vec<_>, Vec<_>) = writes.into_iter().unzip();
                let keys: Vec<Bytes> = ops.iter().map(|w| w.key().clone()).collect();
                let answers = self.store.write_pipelined(ops);
                for (j, (r, kind)) in answers.into_iter().zip(kinds).enumerate() {
                    let key = &keys[j];
                    let look = !keys[j + 1..].contains(key);
                    let reply = commands::write_reply(self.store.as_mut(), key, kind, r, look);
                    if reply.is_error() {
                        self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    reply.encode(self.proto, out);
                }
                i += n;
                continue;
            }
            let run = self.get_run(&cmds[i..]);
            if run < 2 {
                let reply = self.handle(cmds[i].clone());
                reply.encode(self.proto, out);
                i += 1;
                continue;
            }
            let keys: Vec<Bytes> = cmds[i..i + run].iter().map(|c| c[1].clone()).collect();
            let st = &self.shared.stats;
            st.commands.fetch_add(run as u64, Ordering::Relaxed);
            self.shared.note_command(self.id, "get");
            for r in self.store.get_pipelined(&keys) {
                let reply = match r {
                    Ok(v) => Reply::opt(v.map(|s| s.value)),
                    Err(e) => {
                        st.errors.fetch_add(1, Ordering::Relaxed);
                        store_err(e)
                    }
                };
                reply.encode(self.proto, out);
            }
            i += run;
        }
        i
    }

    /// The writes at the start of `cmds` that need no read first and are
    /// all of one region: sent together, the region's log applies them in
    /// this order.
    fn write_run(
        &mut self,
        cmds: &[Vec<Bytes>],
    ) -> Vec<(crate::store::FastWrite, commands::WriteReply)> {
        if self.multi.is_some() || cmds.len() < 2 {
            return Vec::new();
        }
        let mut run = Vec::new();
        let mut region = 0;
        for c in cmds {
            if !self.permitted(c) {
                break;
            }
            let Some(spec) = lookup(&c[0]) else { break };
            let Some(w) = commands::as_fast_write(spec.name, c) else {
                break;
            };
            let r = self.store.region_of(w.0.key());
            if r == 0 || (region != 0 && r != region) {
                break;
            }
            region = r;
            run.push(w);
        }
        run
    }

    /// How many commands at the start of `cmds` are GETs of one region
    /// that can be read together.
    fn get_run(&mut self, cmds: &[Vec<Bytes>]) -> usize {
        if self.multi.is_some() {
            return 0;
        }
        // A GET this login may not run ends the run (it is refused alone).
        let gets = cmds
            .iter()
            .take_while(|c| c.len() == 2 && is(&c[0], "get") && self.permitted(c))
            .count();
        let is_get = |c: &Vec<Bytes>| c.len() == 2 && is(&c[0], "get");
        let cmds = &cmds[..gets];
        if cmds.len() < 2 || !is_get(&cmds[0]) || !is_get(&cmds[1]) {
            return 0;
        }
        let region = self.store.region_of(&cmds[0][1]);
        if region == 0 {
            return 0;
        }
        let mut n = 1;
        while n < cmds.len() && is_get(&cmds[n]) && self.store.region_of(&cmds[n][1]) == region {
            n += 1;
        }
        n
    }

    /// Answers one command (`args[0]` is its name).
    pub fn handle(&mut self, args: Vec<Bytes>) -> Reply {
        self.shared.stats.commands.fetch_add(1, Ordering::Relaxed);
        let reply = self.dispatch(args);
        if reply.is_error() {
            self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        reply
    }

    fn dispatch(&mut self, args: Vec<Bytes>) -> Reply {
        let Some(spec) = lookup(&args[0]) else {
            self.fail_multi();
            return commands::unknown(&args);
        };
        self.shared.note_command(self.id, spec.name);
        if !spec.arity_ok(args.len()) {
            self.fail_multi();
            return wrong_arity(spec.name);
        }
        if let Some(refused) = self.refusal(spec, &args) {
            self.fail_multi();
            return refused;
        }
        if let Some(m) = &mut self.multi {
            match (spec.name, spec.run) {
                ("exec" | "discard" | "multi" | "watch" | "quit" | "reset", _) => {}
                (name, Run::Conn) if !queueable_conn(name) => {
                    m.failed = true;
                    return Reply::err("Command not allowed inside a transaction");
                }
                _ if m.queue.len() >= MULTI_QUEUE_MAX => {
                    m.failed = true;
                    return Reply::err(format!(
                        "a transaction holds at most {MULTI_QUEUE_MAX} commands"
                    ));
                }
                _ => {
                    m.queue.push(args);
                    return Reply::Status("QUEUED".into());
                }
            }
        }
        match spec.run {
            Run::Data(f) => self.data(spec, f, &args),
            Run::Conn => self.conn_command(spec, &args),
        }
    }

    /// Why this connection's login may not run `args`, if it may not: a
    /// login is needed while authentication is on (every command but
    /// AUTH, HELLO, QUIT and RESET), and a user's roles must cover every
    /// key the command names (whole-keyspace commands need `*`).
    fn refusal(&self, spec: &Spec, args: &[Bytes]) -> Option<Reply> {
        self.refusal_counted(spec, args, true)
    }

    /// [`Session::refusal`], counted in the gate's statistics if `count`.
    fn refusal_counted(&self, spec: &Spec, args: &[Bytes], count: bool) -> Option<Reply> {
        let gate = &self.shared.cfg.gate;
        // Authentication may have gone off since the connection came.
        if let Some(remote) = self.remote {
            if let Some(why) = gate.protected_refusal(Some(remote), &self.principal) {
                return Some(Reply::Error(format!("DENIED {why}")));
            }
        }
        let user = match (gate.state(), &self.principal) {
            (AuthState::Off, _) | (_, Principal::Node) => return None,
            _ if matches!(spec.name, "auth" | "hello" | "quit" | "reset") => return None,
            (AuthState::Unknown, Principal::Anonymous) => {
                return Some(Reply::Error(
                    "TRYAGAIN this node has not loaded the cluster's users yet".into(),
                ))
            }
            (AuthState::On, Principal::Anonymous) => {
                if count {
                    gate.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
                }
                return Some(Reply::Error(
                    "NOAUTH Authentication required (AUTH user token).".into(),
                ));
            }
            (_, Principal::User(u)) => u,
        };
        let denied = |what: String| {
            if count {
                gate.stats.denied.fetch_add(1, Ordering::Relaxed);
            }
            Some(Reply::Error(format!(
                "NOPERM user '{}' may not {what}",
                user.name
            )))
        };
        match (spec.name, args.get(1)) {
            // SCAN and KEYS whose pattern starts with a literal prefix
            // need read on that prefix only.
            ("scan" | "keys", _)
                if match_prefix(spec.name, args).is_some_and(|p| user.may_read_prefix(p)) => {}
            ("scan" | "keys" | "dbsize" | "randomkey", _) if !user.may_read_all() => {
                let needs = match spec.name {
                    "scan" | "keys" => "read:*, or a pattern under a prefix it may read",
                    _ => "read:*",
                };
                return denied(format!("run '{}' (it needs {needs})", spec.name));
            }
            ("flushdb" | "flushall", _) if !user.may_write_all() => {
                return denied(format!("run '{}' (it needs write:*)", spec.name));
            }
            // Every connection's address and name.
            ("client", Some(sub)) if is(sub, "list") && !user.is_admin() => {
                return denied("run 'client list' (admin only)".into());
            }
            _ => {}
        }
        let write = spec.is_write();
        for k in spec.keys_of(args) {
            let ok = if write {
                user.may_write(&k)
            } else {
                user.may_read(&k)
            };
            if !ok {
                let verb = if write { "write" } else { "read" };
                let shown = String::from_utf8_lossy(&k[..k.len().min(64)]).into_owned();
                return denied(format!("{verb} '{shown}'"));
            }
        }
        None
    }

    /// True if this connection's login may run `cmd` (a pipelined run
    /// holds only such commands; the rest go one by one and are refused).
    fn permitted(&self, cmd: &[Bytes]) -> bool {
        if self.shared.cfg.gate.state() == AuthState::Off
            || matches!(self.principal, Principal::Node)
        {
            return true;
        }
        lookup(&cmd[0]).is_some_and(|spec| self.refusal_counted(spec, cmd, false).is_none())
    }

    /// True if the connection may sit idle: it logged in, or no login is
    /// needed.
    pub fn may_idle(&self) -> bool {
        self.shared.cfg.gate.state() == AuthState::Off
            || !matches!(self.principal, Principal::Anonymous)
    }

    /// True if the login may see the whole key space (its counts, INFO's
    /// keyspace section).
    fn may_read_all(&self) -> bool {
        match (&self.principal, self.shared.cfg.gate.state()) {
            (_, AuthState::Off) | (Principal::Node, _) => true,
            (Principal::User(u), _) => u.may_read_all(),
            (Principal::Anonymous, _) => false,
        }
    }

    /// Logs in as `user` with `token` (waiting a little for the node to
    /// reread the users when it does not know them yet).
    fn login(&mut self, user: &[u8], token: &[u8]) -> Result<(), Reply> {
        use corekv_net::auth::{LoginAttempt, LoginStep};
        let gate = self.shared.cfg.gate.clone();
        let user = String::from_utf8_lossy(user);
        let started = std::time::Instant::now();
        let mut attempt = LoginAttempt::default();
        loop {
            match gate.login_step(&user, token, started, &mut attempt) {
                LoginStep::Done(Ok(p)) => {
                    self.principal = p;
                    return Ok(());
                }
                LoginStep::Done(Err(e)) if e.code() == corekv_net::wire::ErrorCode::Busy => {
                    return Err(Reply::Error(
                        "TRYAGAIN this node has not loaded the cluster's users yet".into(),
                    ))
                }
                LoginStep::Done(Err(_)) => {
                    return Err(Reply::Error(
                        "WRONGPASS invalid user name or token, or the user does not exist".into(),
                    ))
                }
                LoginStep::Wait(d) => std::thread::sleep(d),
            }
        }
    }

    fn auth(&mut self, a: &[Bytes]) -> Reply {
        if self.shared.cfg.gate.state() == AuthState::Off {
            return auth_refused();
        }
        let (user, token) = match a.len() {
            2 => (corekv_net::auth::DEFAULT_USER.as_bytes(), &a[1][..]),
            3 => (&a[1][..], &a[2][..]),
            _ => return commands::syntax_error(),
        };
        match self.login(user, token) {
            Ok(()) => Reply::Ok,
            Err(r) => r,
        }
    }

    fn fail_multi(&mut self) {
        if let Some(m) = &mut self.multi {
            m.failed = true;
        }
    }

    /// CROSSSLOT unless every key is in one region.
    fn one_region(&mut self, keys: &[Bytes]) -> Result<(), Reply> {
        let distinct: HashSet<&Bytes> = keys.iter().collect();
        if distinct.len() <= 1 {
            return Ok(());
        }
        let regions: HashSet<u64> = distinct
            .into_iter()
            .map(|k| self.store.region_of(k))
            .collect();
        if regions.len() > 1 {
            return Err(Reply::Error(CROSSSLOT.into()));
        }
        Ok(())
    }

    fn data(
        &mut self,
        spec: &Spec,
        f: fn(&mut crate::view::View, &[Bytes]) -> Reply,
        args: &[Bytes],
    ) -> Reply {
        if let Some(r) = commands::fast_path(self.store.as_mut(), spec.name, args) {
            return r;
        }
        let keys = spec.keys_of(args);
        if let Err(r) = self.one_region(&keys) {
            return r;
        }
        let limits = (false, self.shared.cfg.view);
        let result = atomically(self.store.as_mut(), &keys, limits, now_ms, |view| {
            let reply = f(view, args);
            if reply.is_error() {
                Attempt::Abort(reply)
            } else {
                Attempt::Commit(reply)
            }
        });
        result.unwrap_or_else(store_err)
    }

    fn exec(&mut self) -> Reply {
        let Some(m) = self.multi.take() else {
            return Reply::err("EXEC without MULTI");
        };
        let watched = std::mem::take(&mut self.watched);
        if m.failed {
            return Reply::Error(
                "EXECABORT Transaction discarded because of previous errors.".into(),
            );
        }
        // Checked again: authentication may have come on since they queued.
        for args in &m.queue {
            if let Some(refused) = lookup(&args[0]).and_then(|spec| self.refusal(spec, args)) {
                return refused;
            }
        }
        let keyspace = self.may_read_all();
        let mut keys: Vec<Bytes> = watched.iter().map(|(k, _)| k.clone()).collect();
        for args in &m.queue {
            if let Some(spec) = lookup(&args[0]) {
                keys.extend(spec.keys_of(args));
            }
        }
        if let Err(r) = self.one_region(&keys) {
            return r;
        }
        let distinct = keys.iter().collect::<HashSet<_>>().len();
        let validate = distinct > 1 || !watched.is_empty();
        let shared = self.shared.clone();
        let limits = (validate, self.shared.cfg.view);
        let result = atomically(self.store.as_mut(), &keys, limits, now_ms, |view| {
            if watched
                .iter()
                .any(|(k, version)| view.read_version(k) != *version)
            {
                return Attempt::Abort(Reply::NilArray);
            }
            let replies = m
                .queue
                .iter()
                .map(|args| {
                    let spec = lookup(&args[0]).expect("queued commands are known");
                    match spec.run {
                        Run::Data(f) => f(view, args),
                        _ => pure_conn(&shared, spec.name, args, view.now_ms, keyspace),
                    }
                })
                .collect();
            Attempt::Commit(Reply::Array(replies))
        });
        result.unwrap_or_else(store_err)
    }

    fn conn_command(&mut self, spec: &Spec, a: &[Bytes]) -> Reply {
        let name = spec.name;
        match name {
            "info" if Shared::info_wants_keyspace(a.get(1)) && self.may_read_all() => {
                let counts = match self.shared.cached_keyspace() {
                    Some(c) => Some(c),
                    None => self.count_keys().ok(),
                };
                if let Some(c) = counts {
                    self.shared.set_keyspace(c);
                }
                Reply::text(self.shared.info(a.get(1), counts))
            }
            "ping" | "echo" | "time" | "select" | "command" | "info" | "config" => {
                pure_conn(&self.shared, name, a, now_ms(), self.may_read_all())
            }
            "quit" => {
                self.closing = true;
                Reply::Ok
            }
            "reset" => {
                self.multi = None;
                self.watched.clear();
                self.proto = 2;
                self.principal = Principal::Anonymous;
                self.shared.set_client_name(self.id, None);
                Reply::Status("RESET".into())
            }
            "scan" => self.scan(a),
            "keys" => self.keys(a),
            "dbsize" => self.dbsize(),
            "randomkey" => self.randomkey(),
            "flushdb" | "flushall" => self.flush(a),
            "auth" => self.auth(a),
            "hello" => self.hello(a),
            "client" => self.client(a),
            "debug" => Reply::err("DEBUG is not supported by corekv"),
            "multi" => {
                if self.multi.is_some() {
                    return Reply::err("MULTI calls can not be nested");
                }
                self.multi = Some(Multi {
                    queue: Vec::new(),
                    failed: false,
                });
                Reply::Ok
            }
            "exec" => self.exec(),
            "discard" => {
                if self.multi.take().is_none() {
                    return Reply::err("DISCARD without MULTI");
                }
                self.watched.clear();
                Reply::Ok
            }
            "watch" => {
                if self.multi.is_some() {
                    return Reply::err("WATCH inside MULTI is not allowed");
                }
                if self.watched.len() + a.len() - 1 > WATCHED_KEYS_MAX {
                    return Reply::err(format!(
                        "a connection watches at most {WATCHED_KEYS_MAX} keys"
                    ));
                }
                for k in &a[1..] {
                    match self.store.get(k) {
                        Ok(v) => self.watched.push((k.clone(), v.map(|s| s.version))),
                        Err(e) => return store_err(e),
                    }
                }
                Reply::Ok
            }
            "unwatch" => {
                self.watched.clear();
                Reply::Ok
            }
            _ => commands::unknown(a),
        }
    }

    /// Calls `f` with every page of live keys (no values) in hash order,
    /// from the start, until it says stop.
    fn pages(
        &mut self,
        prefix: &[u8],
        mut f: impl FnMut(&mut dyn Store, Vec<Bytes>) -> Result<bool, Reply>,
    ) -> Result<(), Reply> {
        let mut from = 0;
        loop {
            let (items, next) = self
                .store
                .scan_prefix(from, PAGE_KEYS, true, prefix)
                .map_err(store_err)?;
            let keys = items.into_iter().map(|(k, _)| k).collect();
            if !f(self.store.as_mut(), keys)? {
                return Ok(());
            }
            match next {
                Some(n) => from = n,
                None => return Ok(()),
            }
        }
    }

    /// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]. The cursor is
    /// the routing hash to go on from: 0 starts, 0 again means done.
    fn scan(&mut self, a: &[Bytes]) -> Reply {
        let Some(cursor) = std::str::from_utf8(&a[1])
            .ok()
            .and_then(|c| c.parse::<u64>().ok())
        else {
            return Reply::err("invalid cursor");
        };
        let (mut pattern, mut count, mut strings) = (None, 10i64, true);
        let mut i = 2;
        while i < a.len() {
            let Some(v) = a.get(i + 1) else {
                return commands::syntax_error();
            };
            if is(&a[i], "match") {
                pattern = Some(v.clone());
            } else if is(&a[i], "count") {
                match parse_int(v) {
                    Some(n) if n >= 1 => count = n,
                    Some(_) => return commands::syntax_error(),
                    None => return not_integer(),
                }
            } else if is(&a[i], "type") {
                strings = is(v, "string");
            } else {
                return commands::syntax_error();
            }
            i += 2;
        }
        let limit = count.min(PAGE_KEYS as i64) as u32;
        let prefix = pattern.as_deref().map_or(&[][..], literal_prefix);
        let (items, next) = match self.store.scan_prefix(cursor, limit, true, prefix) {
            Ok(r) => r,
            Err(e) => return store_err(e),
        };
        let keys = items
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| strings && pattern.as_ref().is_none_or(|p| glob_case(p, k)))
            .map(Reply::Bulk)
            .collect();
        Reply::Array(vec![
            Reply::text(next.unwrap_or(0).to_string()),
            Reply::Array(keys),
        ])
    }

    fn keys(&mut self, a: &[Bytes]) -> Reply {
        let pattern = a[1].clone();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let r = self.pages(literal_prefix(&pattern), |_, keys| {
            for k in keys {
                if glob_case(&pattern, &k) {
                    bytes += k.len();
                    if bytes > crate::view::READ_BYTES_MAX {
                        return Err(Reply::err(format!(
                            "KEYS would answer more than {} MiB: use SCAN",
                            crate::view::READ_BYTES_MAX >> 20
                        )));
                    }
                    out.push(Reply::Bulk(k));
                }
            }
            Ok(true)
        });
        match r {
            Ok(()) => Reply::Array(out),
            Err(e) => e,
        }
    }

    fn dbsize(&mut self) -> Reply {
        match self.count_keys() {
            Ok((n, _)) => Reply::Int(n as i64),
            Err(e) => e,
        }
    }

    /// Live keys, and of those with an expiry, over every region.
    fn count_keys(&mut self) -> Result<(u64, u64), Reply> {
        let (mut keys, mut expires) = (0u64, 0u64);
        let mut from = 0;
        loop {
            let (items, next) = self.store.scan(from, PAGE_KEYS, true).map_err(store_err)?;
            keys += items.len() as u64;
            expires += items.iter().filter(|(_, s)| s.expire_at_ms != 0).count() as u64;
            match next {
                Some(n) => from = n,
                None => return Ok((keys, expires)),
            }
        }
    }

    /// A key chosen at random: the first one at or after a random hash
    /// (wrapping around once).
    fn randomkey(&mut self) -> Reply {
        let start = rand_hash();
        for from in [start, 0] {
            let mut at = from;
            loop {
                let (items, next) = match self.store.scan(at, 1, true) {
                    Ok(r) => r,
                    Err(e) => return store_err(e),
                };
                if let Some((k, _)) = items.into_iter().next() {
                    return Reply::Bulk(k);
                }
                match next {
                    Some(n) if from == 0 && n > start => break,
                    Some(n) => at = n,
                    None => break,
                }
            }
        }
        Reply::Nil
    }

    /// FLUSHDB / FLUSHALL [ASYNC|SYNC]: every key deleted through raft,
    /// page by page (a page is one region's; its deletes go together).
    fn flush(&mut self, a: &[Bytes]) -> Reply {
        match a.get(1) {
            None => {}
            Some(m) if a.len() == 2 && (is(m, "async") || is(m, "sync")) => {}
            Some(_) => return commands::syntax_error(),
        }
        let r = self.pages(&[], |store, keys| {
            for chunk in keys.chunks(16) {
                let writes = chunk
                    .iter()
                    .map(|k| crate::store::FastWrite::Delete { key: k.clone() })
                    .collect();
                for r in store.write_pipelined(writes) {
                    if let Err(e) = r {
                        return Err(store_err(StoreError::Unknown(format!(
                            "flush stopped part way: {}",
                            e.reply_text()
                        ))));
                    }
                }
            }
            Ok(true)
        });
        match r {
            Ok(()) => Reply::Ok,
            Err(e) => e,
        }
    }

    fn hello(&mut self, a: &[Bytes]) -> Reply {
        let mut proto = self.proto;
        if let Some(v) = a.get(1) {
            match parse_int(v) {
                Some(2) => proto = 2,
                Some(3) => proto = 3,
                Some(_) => return Reply::Error("NOPROTO unsupported protocol version".into()),
                None => return Reply::err("Protocol version is not an integer or out of range"),
            }
        }
        let mut i = 2;
        let mut name = None;
        while i < a.len() {
            if is(&a[i], "auth") && i + 2 < a.len() {
                if self.shared.cfg.gate.state() == AuthState::Off {
                    return auth_refused();
                }
                if let Err(r) = self.login(&a[i + 1], &a[i + 2]) {
                    return r;
                }
                i += 3;
            } else if is(&a[i], "setname") && i + 1 < a.len() {
                name = Some(a[i + 1].clone());
                i += 2;
            } else {
                return Reply::err(format!(
                    "Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&a[i])
                ));
            }
        }
        let gate = &self.shared.cfg.gate;
        if gate.state() != AuthState::Off && matches!(self.principal, Principal::Anonymous) {
            return Reply::Error(
                "NOAUTH HELLO needs a login first, or its AUTH option (HELLO 3 AUTH user token)"
                    .into(),
            );
        }
        if let Some(n) = name {
            if let Err(r) = self.set_name(&n) {
                return r;
            }
        }
        self.proto = proto;
        self.shared.set_proto(self.id, proto);
        Reply::Map(vec![
            (Reply::text("server"), Reply::text("redis")),
            (Reply::text("version"), Reply::text(crate::REDIS_VERSION)),
            (Reply::text("proto"), Reply::Int(i64::from(proto))),
            (Reply::text("id"), Reply::Int(self.id as i64)),
            (Reply::text("mode"), Reply::text("standalone")),
            (Reply::text("role"), Reply::text("master")),
            (Reply::text("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn set_name(&mut self, n: &[u8]) -> Result<(), Reply> {
        if n.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
            return Err(Reply::err(
                "Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        let name = (!n.is_empty()).then(|| String::from_utf8_lossy(n).into_owned());
        self.shared.set_client_name(self.id, name);
        Ok(())
    }

    fn client(&mut self, a: &[Bytes]) -> Reply {
        let sub = a[1].to_ascii_lowercase();
        match (&sub[..], a.len()) {
            (b"id", 2) => Reply::Int(self.id as i64),
            (b"setname", 3) => match self.set_name(&a[2]) {
                Ok(()) => Reply::Ok,
                Err(r) => r,
            },
            (b"getname", 2) => match self.shared.client_name(self.id) {
                Some(n) => Reply::text(n),
                None => Reply::Nil,
            },
            (b"setinfo", 4) => {
                let value = String::from_utf8_lossy(&a[3]).into_owned();
                if is(&a[2], "lib-name") {
                    self.shared.set_lib(self.id, Some(value), None);
                } else if is(&a[2], "lib-ver") {
                    self.shared.set_lib(self.id, None, Some(value));
                } else {
                    return Reply::err(format!(
                        "Unrecognized option '{}'",
                        String::from_utf8_lossy(&a[2])
                    ));
                }
                Reply::Ok
            }
            (b"info", 2) => Reply::text(self.shared.client_line(self.id)),
            (b"list", _) => Reply::text(self.shared.client_list()),
            (b"id" | b"setname" | b"getname" | b"setinfo" | b"info", _) => Reply::err(format!(
                "wrong number of arguments for 'client|{}' command",
                String::from_utf8_lossy(&sub)
            )),
            _ => Reply::err(format!(
                "unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&a[1])
            )),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
    }
}

fn auth_refused() -> Reply {
    Reply::err(
        "AUTH <password> called without any password configured for the default user. \
         Are you sure your configuration is correct?",
    )
}

/// Commands whose answer depends on their arguments alone (and the
/// listener's counters): served alike inside MULTI and outside.
fn pure_conn(shared: &Shared, name: &str, a: &[Bytes], now_ms: u64, keyspace: bool) -> Reply {
    match name {
        "select" => match parse_int(&a[1]) {
            Some(0) => Reply::Ok,
            Some(_) => Reply::err("DB index is out of range"),
            None => not_integer(),
        },
        "command" => command_info(&a[1..]),
        // Inside MULTI: the keyspace as INFO last counted it.
        "info" => {
            let counts = if keyspace {
                shared.cached_keyspace()
            } else {
                None
            };
            Reply::text(shared.info(a.get(1), counts))
        }
        "config" => config(a),
        // Queued inside MULTI, where it changes nothing (Redis alike).
        "unwatch" => Reply::Ok,
        "ping" => match a.len() {
            1 => Reply::Status("PONG".into()),
            2 => Reply::Bulk(a[1].clone()),
            _ => wrong_arity("ping"),
        },
        "echo" => Reply::Bulk(a[1].clone()),
        "time" => Reply::Array(vec![
            Reply::text((now_ms / 1000).to_string()),
            Reply::text(((now_ms % 1000) * 1000).to_string()),
        ]),
        _ => Reply::err("Command not allowed inside a transaction"),
    }
}

fn command_entry(s: &Spec) -> Reply {
    let (first, last, step) = s.keys;
    Reply::Array(vec![
        Reply::text(s.name),
        Reply::Int(i64::from(s.arity)),
        Reply::Array(s.flags.iter().map(|f| Reply::Status((*f).into())).collect()),
        Reply::Int(i64::from(first)),
        Reply::Int(i64::from(last)),
        Reply::Int(i64::from(step)),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

/// COMMAND, COMMAND COUNT|INFO|DOCS|LIST.
fn command_info(a: &[Bytes]) -> Reply {
    let all = commands::COMMANDS;
    let Some(sub) = a.first() else {
        return Reply::Array(all.iter().map(command_entry).collect());
    };
    if is(sub, "count") {
        Reply::Int(all.len() as i64)
    } else if is(sub, "info") {
        if a.len() == 1 {
            return Reply::Array(all.iter().map(command_entry).collect());
        }
        Reply::Array(
            a[1..]
                .iter()
                .map(|n| lookup(n).map_or(Reply::Nil, command_entry))
                .collect(),
        )
    } else if is(sub, "docs") {
        let wanted: Vec<&Spec> = if a.len() == 1 {
            all.iter().collect()
        } else {
            a[1..].iter().filter_map(|n| lookup(n)).collect()
        };
        Reply::Map(
            wanted
                .into_iter()
                .map(|s| {
                    (
                        Reply::text(s.name),
                        Reply::Map(vec![
                            (Reply::text("summary"), Reply::text("")),
                            (Reply::text("since"), Reply::text("1.0.0")),
                            (Reply::text("group"), Reply::text(group_of(s))),
                        ]),
                    )
                })
                .collect(),
        )
    } else if is(sub, "list") {
        Reply::Array(all.iter().map(|s| Reply::text(s.name)).collect())
    } else {
        Reply::err(format!(
            "unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(sub)
        ))
    }
}

fn group_of(s: &Spec) -> &'static str {
    match s.run {
        Run::Conn => "connection",
        _ if s.keys.0 == 0 => "server",
        _ if matches!(
            s.name,
            "del" | "unlink" | "exists" | "type" | "rename" | "renamenx" | "copy" | "persist"
        ) || s.name.contains("expire")
            || s.name.ends_with("ttl") =>
        {
            "generic"
        }
        _ => "string",
    }
}

/// Settings CONFIG GET answers (read-only; corekv's settings are flags).
const CONFIG: &[(&str, &str)] = &[
    ("appendonly", "yes"),
    ("databases", "1"),
    ("maxclients", "10000"),
    ("maxmemory", "0"),
    ("maxmemory-policy", "noeviction"),
    ("proto-max-bulk-len", "1048576"),
    ("save", ""),
    ("timeout", "0"),
];

/// Glob match with `*` and `?` (ASCII case ignored), as CONFIG GET
/// patterns use.
pub fn glob(pattern: &[u8], s: &[u8]) -> bool {
    glob_with(pattern, s, true)
}

/// The literal start of a glob pattern: what every key it matches begins
/// with (up to the first `*`, `?`, `[` or `\\`).
pub fn literal_prefix(pattern: &[u8]) -> &[u8] {
    let end = pattern
        .iter()
        .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(pattern.len());
    &pattern[..end]
}

/// The literal prefix of a SCAN's MATCH or a KEYS pattern, when it has one.
fn match_prefix<'a>(name: &str, args: &'a [Bytes]) -> Option<&'a [u8]> {
    let pattern = match name {
        "keys" => args.get(1)?,
        _ => {
            // As SCAN reads its options: pairs from the third argument on,
            // the last MATCH winning.
            let mut pattern = None;
            let mut i = 2;
            while let (Some(k), Some(v)) = (args.get(i), args.get(i + 1)) {
                if is(k, "match") {
                    pattern = Some(v);
                }
                i += 2;
            }
            pattern?
        }
    };
    Some(literal_prefix(pattern)).filter(|p| !p.is_empty())
}

/// Glob match with `*` and `?`, case-sensitive, as KEYS and SCAN MATCH
/// use.
pub fn glob_case(pattern: &[u8], s: &[u8]) -> bool {
    glob_with(pattern, s, false)
}

/// Iterative, in O(pattern × text) at worst: a hostile pattern of many
/// stars costs no stack and no exponential time.
fn glob_with(pattern: &[u8], s: &[u8], nocase: bool) -> bool {
    let same = |p: u8, c: u8| {
        if nocase {
            p.eq_ignore_ascii_case(&c)
        } else {
            p == c
        }
    };
    let (mut p, mut i) = (0, 0);
    // The last star seen, and where in `s` its match now ends.
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if p < pattern.len() && (pattern[p] == b'?' || same(pattern[p], s[i])) {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            // Let the star take one more byte and try again after it.
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

fn config(a: &[Bytes]) -> Reply {
    if is(&a[1], "get") {
        if a.len() < 3 {
            return wrong_arity("config|get");
        }
        let pairs = CONFIG
            .iter()
            .filter(|(k, _)| a[2..].iter().any(|p| glob(p, k.as_bytes())))
            .map(|(k, v)| (Reply::text(k), Reply::text(v)))
            .collect();
        Reply::Map(pairs)
    } else if is(&a[1], "set") {
        Reply::err("CONFIG SET is not supported: corekv's settings are corekv-server's flags")
    } else if is(&a[1], "resetstat") {
        Reply::Ok
    } else {
        Reply::err(format!(
            "unknown subcommand '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(&a[1])
        ))
    }
}

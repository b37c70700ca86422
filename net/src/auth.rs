//! Users, their grants, and the checks that keep every connection to what
//! its identity may do.
//!
//! # The record
//! The cluster's users live in the meta region under one key
//! ([`auth_key`]): whether authentication is on, and for each user a name,
//! grants and a salted SHA-256 hash of its token. A token is 32 random bytes
//! (64 hex digits) shown once when made; only its hash is stored. Because a
//! token is random, not chosen by a person, one hash is as hard to reverse
//! as the token is to guess (2^256), and checking one costs about a
//! microsecond: a flood of wrong tokens cannot make a node slow.
//!
//! # Identities
//! A connection authenticates once, in its first frame (native protocol:
//! `Hello`; Redis protocol: `AUTH`/`HELLO`). It is then
//! - a **node** of the cluster: it showed the cluster's node key (the
//!   content of `--auth-key-file`, the same file on every node), may do
//!   everything, and is the only identity besides an admin whose requests
//!   may carry the system mark;
//! - a **user**, with its grants: `read:PREFIX` (gets, watches),
//!   `write:PREFIX` (writes, and the reads of `read`), a prefix of `*` for
//!   every key, and `admin` (every key, placement operations, the system
//!   mark that user management and `corekv ctl` need);
//! - **anonymous**: no credentials.
//!
//! While authentication is off every identity may do everything (the
//! cluster behaves as it did before it had users); protected mode (see
//! [`Gate::protected_refusal`]) then keeps it to its own machine.
//!
//! # The copy on each node
//! [`Gate`] holds the node's copy of the record, refreshed by its meta
//! thread twice a second and, when a login fails against the copy, at once
//! (a user just added can log in straight away). Grants are taken at login:
//! a changed or removed user keeps its open connections until they close;
//! new connections see the change.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use corekv_engine::codec::{Decoder, Encoder};
use corekv_engine::{Consistency, META_PREFIX};
use sha2::{Digest, Sha256};

use crate::client::{Client, ClientError, Result};
use crate::message::{Op, Request, WireError};
use crate::wire::ErrorCode;

/// The user name nodes log in with; `@` is not allowed in user names, so no
/// user can take it.
pub const NODE_USER: &str = "@node";
/// The admin that `corekv ctl auth enable` creates if there is none.
pub const ROOT_USER: &str = "root";
/// The user a one-argument Redis `AUTH token` logs in as (Redis's name).
pub const DEFAULT_USER: &str = "default";
/// Users at most (the record is one value of the meta region).
pub const USERS_MAX: usize = 1000;
/// Grants per user at most.
pub const GRANTS_MAX: usize = 64;
/// Longest user name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Random bytes of a token (shown as twice as many hex digits).
pub const TOKEN_BYTES: usize = 32;
/// Longest credential (user name or token) a login may present; anything
/// longer is refused before it is hashed.
pub const CREDENTIAL_BYTES_MAX: usize = 1024;

/// Key of the record (users and whether authentication is on).
pub fn auth_key() -> Vec<u8> {
    [META_PREFIX, b"auth"].concat()
}

/// What a grant allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Reads of keys beginning with the prefix (empty: every key).
    Read(Vec<u8>),
    /// Writes and reads of keys beginning with the prefix (empty: every key).
    Write(Vec<u8>),
    /// Everything.
    Admin,
}

impl Grant {
    /// Parses `admin`, `read`, `write`, `read:PREFIX`, `write:PREFIX`
    /// (`read:*` is `read`).
    pub fn parse(s: &str) -> std::result::Result<Grant, String> {
        let (kind, prefix) = match s.split_once(':') {
            Some((k, p)) => (k, Some(p)),
            None => (s, None),
        };
        let prefix = match prefix {
            None | Some("*") => Vec::new(),
            Some("") => return Err(format!("role {s:?}: empty prefix (use * for every key)")),
            Some(p) => p.as_bytes().to_vec(),
        };
        if prefix.len() > corekv_engine::config::KEY_BYTES_MAX {
            return Err(format!(
                "role {s:?}: the prefix is longer than a key may be"
            ));
        }
        match kind {
            "read" => Ok(Grant::Read(prefix)),
            "write" => Ok(Grant::Write(prefix)),
            "admin" if prefix.is_empty() => Ok(Grant::Admin),
            "admin" => Err("role admin takes no prefix".into()),
            _ => Err(format!(
                "role {s:?}: expected admin, read[:PREFIX] or write[:PREFIX]"
            )),
        }
    }

    fn covers(prefix: &[u8], key: &[u8]) -> bool {
        key.starts_with(prefix)
    }
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, p) = match self {
            Grant::Admin => return f.write_str("admin"),
            Grant::Read(p) => ("read", p),
            Grant::Write(p) => ("write", p),
        };
        if p.is_empty() {
            write!(f, "{kind}:*")
        } else {
            write!(f, "{kind}:{}", String::from_utf8_lossy(p))
        }
    }
}

/// One user as the record keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Name.
    pub name: String,
    /// What it may do.
    pub grants: Vec<Grant>,
    /// Salt of the token hash.
    pub salt: [u8; 16],
    /// SHA-256 of salt and token.
    pub token_hash: [u8; 32],
    /// When the user was made or its token last rotated (Unix ms).
    pub changed_unix_ms: u64,
}

impl User {
    /// A user with a fresh token; returns it and the token (shown once).
    pub fn new(name: &str, grants: Vec<Grant>) -> std::result::Result<(User, String), String> {
        check_name(name)?;
        if grants.is_empty() {
            return Err(format!("user {name:?}: at least one role"));
        }
        if grants.len() > GRANTS_MAX {
            return Err(format!("user {name:?}: at most {GRANTS_MAX} roles"));
        }
        let mut user = User {
            name: name.to_string(),
            grants,
            salt: [0; 16],
            token_hash: [0; 32],
            changed_unix_ms: 0,
        };
        let token = user.rotate();
        Ok((user, token))
    }

    /// Gives the user a new token (the old one stops working on new
    /// connections); returns it.
    pub fn rotate(&mut self) -> String {
        use rand::RngCore;
        let mut raw = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        rand::rngs::OsRng.fill_bytes(&mut self.salt);
        let token = hex(&raw);
        self.token_hash = digest(&self.salt, token.as_bytes());
        self.changed_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        token
    }

    /// True if `token` is this user's (constant time in the token's hash).
    pub fn token_matches(&self, token: &[u8]) -> bool {
        ct_eq(&digest(&self.salt, token), &self.token_hash)
    }

    /// True for an admin.
    pub fn is_admin(&self) -> bool {
        self.grants.contains(&Grant::Admin)
    }

    /// True if the user may read `key`.
    pub fn may_read(&self, key: &[u8]) -> bool {
        if corekv_engine::is_meta_key(key) {
            return self.is_admin();
        }
        self.grants.iter().any(|g| match g {
            Grant::Admin => true,
            Grant::Read(p) | Grant::Write(p) => Grant::covers(p, key),
        })
    }

    /// True if the user may write `key`.
    pub fn may_write(&self, key: &[u8]) -> bool {
        if corekv_engine::is_meta_key(key) {
            return self.is_admin();
        }
        self.grants.iter().any(|g| match g {
            Grant::Admin => true,
            Grant::Write(p) => Grant::covers(p, key),
            Grant::Read(_) => false,
        })
    }

    /// True if the user may read every key (whole-keyspace scans).
    pub fn may_read_all(&self) -> bool {
        self.grants.iter().any(|g| match g {
            Grant::Admin => true,
            Grant::Read(p) | Grant::Write(p) => p.is_empty(),
        })
    }

    /// True if the user may read every key beginning with `prefix` (a
    /// prefix scan); the empty prefix is every key.
    pub fn may_read_prefix(&self, prefix: &[u8]) -> bool {
        if prefix.is_empty() {
            return self.may_read_all();
        }
        if corekv_engine::is_meta_key(prefix) {
            return self.is_admin();
        }
        self.grants.iter().any(|g| match g {
            Grant::Admin => true,
            Grant::Read(p) | Grant::Write(p) => prefix.starts_with(p),
        })
    }

    /// True if the user may write every key (FLUSHDB).
    pub fn may_write_all(&self) -> bool {
        self.grants.iter().any(|g| match g {
            Grant::Admin => true,
            Grant::Write(p) => p.is_empty(),
            Grant::Read(_) => false,
        })
    }

    /// The grants as shown (`read:/app/, write:*`).
    pub fn roles(&self) -> String {
        let v: Vec<String> = self.grants.iter().map(|g| g.to_string()).collect();
        v.join(",")
    }
}

/// A user name: 1..=64 bytes of letters, digits, `_`, `-`, `.`.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!("user name {name:?}: 1 to {NAME_BYTES_MAX} bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        return Err(format!(
            "user name {name:?}: letters, digits, '_', '-' and '.' only"
        ));
    }
    Ok(())
}

/// The record: whether authentication is on, and the users.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthTable {
    /// Every client connection must authenticate.
    pub enabled: bool,
    /// Users, by name.
    pub users: Vec<User>,
}

const TABLE_VERSION: u8 = 1;

impl AuthTable {
    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The user named `name`, to change.
    pub fn user_mut(&mut self, name: &str) -> Option<&mut User> {
        self.users.iter_mut().find(|u| u.name == name)
    }

    /// Checks what a write of the record must hold: valid names, once
    /// each, at most [`USERS_MAX`], and an admin while authentication is
    /// on (so the cluster cannot lock everyone out).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.users.len() > USERS_MAX {
            return Err(format!("at most {USERS_MAX} users"));
        }
        let mut names: Vec<&str> = self.users.iter().map(|u| u.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err("a user name twice".into());
        }
        for u in &self.users {
            check_name(&u.name)?;
            if u.grants.is_empty() || u.grants.len() > GRANTS_MAX {
                return Err(format!("user {:?}: 1 to {GRANTS_MAX} roles", u.name));
            }
        }
        if self.enabled && !self.users.iter().any(User::is_admin) {
            return Err("authentication on without an admin user".into());
        }
        Ok(())
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        e.u8(TABLE_VERSION);
        e.u8(self.enabled as u8);
        e.u32(self.users.len() as u32);
        for u in &self.users {
            e.bytes(u.name.as_bytes());
            e.u32(u.grants.len() as u32);
            for g in &u.grants {
                match g {
                    Grant::Read(p) => e.u8(1).bytes(p),
                    Grant::Write(p) => e.u8(2).bytes(p),
                    Grant::Admin => e.u8(3).bytes(&[]),
                };
            }
            e.bytes(&u.salt);
            e.bytes(&u.token_hash);
            e.u64(u.changed_unix_ms);
        }
        e.finish()
    }

    /// Reads the stored form (garbage is an error).
    pub fn decode(bytes: &[u8]) -> std::result::Result<AuthTable, String> {
        let err = |e: corekv_engine::Error| e.to_string();
        let mut d = Decoder::new(bytes, "auth record");
        d.version(TABLE_VERSION).map_err(err)?;
        let enabled = match d.u8().map_err(err)? {
            0 => false,
            1 => true,
            b => return Err(format!("auth record: enabled flag {b}")),
        };
        let count = d.u32().map_err(err)? as usize;
        if count > USERS_MAX {
            return Err(format!("auth record: {count} users"));
        }
        let mut users = Vec::with_capacity(count);
        for _ in 0..count {
            let name = String::from_utf8(d.bytes().map_err(err)?.to_vec())
                .map_err(|_| "auth record: a user name is not UTF-8".to_string())?;
            let n = d.u32().map_err(err)? as usize;
            if n > GRANTS_MAX {
                return Err(format!("auth record: {n} roles"));
            }
            let mut grants = Vec::with_capacity(n);
            for _ in 0..n {
                let kind = d.u8().map_err(err)?;
                let p = d.bytes().map_err(err)?.to_vec();
                grants.push(match kind {
                    1 => Grant::Read(p),
                    2 => Grant::Write(p),
                    3 => Grant::Admin,
                    k => return Err(format!("auth record: role kind {k}")),
                });
            }
            let salt: [u8; 16] = d
                .bytes()
                .map_err(err)?
                .try_into()
                .map_err(|_| "auth record: a salt is not 16 bytes".to_string())?;
            let token_hash: [u8; 32] = d
                .bytes()
                .map_err(err)?
                .try_into()
                .map_err(|_| "auth record: a token hash is not 32 bytes".to_string())?;
            let changed_unix_ms = d.u64().map_err(err)?;
            users.push(User {
                name,
                grants,
                salt,
                token_hash,
                changed_unix_ms,
            });
        }
        d.finish().map_err(err)?;
        Ok(AuthTable { enabled, users })
    }
}

fn digest(salt: &[u8], token: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(token);
    h.finalize().into()
}

/// Compares in time that depends on the length only.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The record and its version (None: never written: authentication off,
/// no users).
pub fn read_auth(client: &mut Client) -> Result<Option<(AuthTable, u64)>> {
    match client.get(&auth_key(), Consistency::Linearizable)? {
        Some(v) => Ok(Some((
            AuthTable::decode(&v.value).map_err(ClientError::Protocol)?,
            v.version,
        ))),
        None => Ok(None),
    }
}

/// Changes the record with `change` (which returns what to give back, or
/// an error that leaves it unchanged) until the write lands unopposed;
/// returns that and the version written. Needs a client with the system
/// mark and an admin identity (or auth off).
pub fn update_auth<T>(
    client: &mut Client,
    mut change: impl FnMut(&mut AuthTable) -> std::result::Result<T, String>,
) -> Result<(T, u64)> {
    let (out, version) = crate::meta::update_versioned(client, &auth_key(), |old| {
        let mut table = match old {
            Some(b) => AuthTable::decode(b)?,
            None => AuthTable::default(),
        };
        let out = change(&mut table)?;
        table.validate()?;
        Ok((Some(table.encode()), out))
    })?;
    Ok((out, version.expect("the record is always written")))
}

/// Adds user `name` with `grants`; returns its token (shown once).
pub fn add_user(client: &mut Client, name: &str, grants: Vec<Grant>) -> Result<String> {
    let (user, token) = User::new(name, grants).map_err(|message| ClientError::Invalid {
        code: ErrorCode::InvalidRequest,
        message,
    })?;
    update_auth(client, |t| {
        if t.user(name).is_some() {
            return Err(format!(
                "user {name:?} exists (rotate its token, or remove it first)"
            ));
        }
        t.users.push(user.clone());
        t.users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    })?;
    Ok(token)
}

/// How long a change of the record waits for the nodes to take it.
pub const TAKE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits (up to `wait`) until every node `client` knows has taken the
/// record at `version` or later; returns the nodes that did not say so
/// (down, cut off: they take it with their next read of the meta region).
pub fn wait_taken(client: &mut Client, version: u64, wait: std::time::Duration) -> Vec<u64> {
    let deadline = std::time::Instant::now() + wait;
    let mut left = client.nodes_sorted();
    loop {
        left.retain(|(_, addr)| {
            client
                .status_doc(addr)
                .ok()
                .and_then(|d| d.auth)
                .is_none_or(|a| a.version < version)
        });
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return left.into_iter().map(|(id, _)| id).collect();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Removes user `name` (refused for the last admin while authentication
/// is on); returns once every node has taken it (or the nodes that did
/// not, see [`wait_taken`]). Its open connections keep their login until
/// they close; new ones are refused.
pub fn remove_user(client: &mut Client, name: &str) -> Result<Vec<u64>> {
    let ((), version) = update_auth(client, |t| {
        let before = t.users.len();
        t.users.retain(|u| u.name != name);
        if t.users.len() == before {
            return Err(format!("no user {name:?}"));
        }
        Ok(())
    })?;
    Ok(wait_taken(client, version, TAKE_WAIT))
}

/// Gives user `name` a new token; returns it once every node has taken it
/// (and the nodes that did not, see [`wait_taken`]): from then on the old
/// one logs in nowhere.
pub fn rotate_token(client: &mut Client, name: &str) -> Result<(String, Vec<u64>)> {
    let mut token = String::new();
    let ((), version) = update_auth(client, |t| {
        let u = t
            .user_mut(name)
            .ok_or_else(|| format!("no user {name:?}"))?;
        token = u.rotate();
        Ok(())
    })?;
    let unconfirmed = wait_taken(client, version, TAKE_WAIT);
    Ok((token, unconfirmed))
}

/// Turns authentication on or off, and returns once every node has taken
/// it (with the nodes that did not, see [`wait_taken`]). Turning it on
/// makes the admin [`ROOT_USER`] if there is no admin, and returns its
/// token.
pub fn set_enabled(client: &mut Client, on: bool) -> Result<(Option<String>, Vec<u64>)> {
    let mut made = None;
    let ((), version) = update_auth(client, |t| {
        made = None;
        if on && !t.users.iter().any(User::is_admin) {
            if t.user(ROOT_USER).is_some() {
                return Err(format!(
                    "user {ROOT_USER:?} exists and is not an admin: add an admin first"
                ));
            }
            let (root, token) = User::new(ROOT_USER, vec![Grant::Admin])?;
            t.users.push(root);
            t.users.sort_by(|a, b| a.name.cmp(&b.name));
            made = Some(token);
        }
        t.enabled = on;
        Ok(())
    })?;
    Ok((made, wait_taken(client, version, TAKE_WAIT)))
}

/// Why authentication cannot be turned on for nodes that reported these
/// states, if it cannot: every node must hold the same node key, or the
/// nodes would lock each other out of the meta region.
pub fn enable_refusal(nodes: &[(u64, Option<crate::status::AuthStatus>)]) -> Option<String> {
    let mut keys = std::collections::BTreeSet::new();
    for (id, st) in nodes {
        match st.as_ref().and_then(|s| s.node_key.clone()) {
            Some(k) => {
                keys.insert(k);
            }
            None => {
                return Some(format!(
                    "node {id} has no --auth-key-file: with authentication on it could not \
                     reach the meta region. Give every node the same key file and restart it"
                ))
            }
        }
    }
    if keys.len() > 1 {
        return Some(
            "the nodes hold different node keys (--auth-key-file): give every node the same \
             one and restart it"
                .into(),
        );
    }
    None
}

/// Who a connection authenticated as.
#[derive(Clone, Debug)]
pub enum Principal {
    /// No credentials (or authentication was off when it logged in and it
    /// gave none).
    Anonymous,
    /// A node of the cluster (it showed the node key).
    Node,
    /// A user, with the grants it had at login.
    User(Arc<User>),
}

impl Principal {
    /// The name shown in logs and `CLIENT LIST`.
    pub fn name(&self) -> &str {
        match self {
            Principal::Anonymous => "",
            Principal::Node => NODE_USER,
            Principal::User(u) => &u.name,
        }
    }
}

/// How a login went.
#[derive(Clone, Debug)]
pub enum Login {
    /// Credentials accepted.
    Ok(Principal),
    /// Unknown user or wrong token, against the copy this node has.
    Wrong,
    /// This node has not loaded the record yet.
    NotLoaded,
}

/// Longest a login waits for the node to reread the users.
pub const LOGIN_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// What a login that waits remembers between its steps.
#[derive(Debug, Default)]
pub struct LoginAttempt {
    asked_at: Option<u64>,
}

/// What to do next in a login.
#[derive(Debug)]
pub enum LoginStep {
    /// Finished: the identity, or why not.
    Done(std::result::Result<Principal, WireError>),
    /// Sleep this long and take another step.
    Wait(std::time::Duration),
}

/// Whether authentication is on, as this node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthState {
    /// Off: every identity may do everything.
    Off,
    /// On.
    On,
    /// Not known yet (a node that joined and has not read the record):
    /// anonymous requests are refused with `Busy` until it is.
    Unknown,
}

/// Counters of the gate.
#[derive(Debug, Default)]
pub struct GateStats {
    /// Logins accepted.
    pub logins: AtomicU64,
    /// Logins refused (unknown user, wrong token, too long).
    pub login_failures: AtomicU64,
    /// Requests refused: not authenticated.
    pub unauthenticated: AtomicU64,
    /// Requests refused: not permitted.
    pub denied: AtomicU64,
    /// Connections refused by protected mode.
    pub protected_refusals: AtomicU64,
    /// TLS handshakes that failed or timed out (plain TCP to a TLS port,
    /// an untrusted certificate, garbage).
    pub tls_failures: AtomicU64,
}

/// A node's copy of the auth record, its node key and its protected-mode
/// setting: what every listener of the node checks connections against.
pub struct Gate {
    table: RwLock<Option<Arc<AuthTable>>>,
    /// Version of the record in the meta region when last read (0: never
    /// read, or never written).
    version: AtomicU64,
    state: AtomicU8,
    /// Bumped each time the meta thread finished reading the record.
    generation: AtomicU64,
    refresh_wanted: AtomicBool,
    /// SHA-256 of the node key, if the node has one.
    node_key_hash: Option<[u8; 32]>,
    node_key: Option<String>,
    insecure: bool,
    /// Every client connection presents a certificate from the cluster's
    /// CA (`--tls-client-auth`): protected mode has nothing to add.
    client_certs: AtomicBool,
    /// The node serves TLS (status only).
    tls: AtomicBool,
    /// Addresses of the cluster's nodes: served by protected mode like the
    /// local host (the nodes' own clients come from them).
    trusted: RwLock<Vec<std::net::IpAddr>>,
    /// Counters.
    pub stats: GateStats,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("state", &self.state())
            .field("node_key", &self.node_key.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

const OFF: u8 = 0;
const ON: u8 = 1;
const UNKNOWN: u8 = 2;

impl Gate {
    /// A gate with the node key (None: this node cannot log in to a
    /// cluster with authentication on), protected mode off if `insecure`,
    /// and the record as last known (`None`: not known yet).
    pub fn new(node_key: Option<String>, insecure: bool, known: Option<AuthTable>) -> Gate {
        let gate = Gate {
            table: RwLock::new(None),
            version: AtomicU64::new(0),
            state: AtomicU8::new(UNKNOWN),
            generation: AtomicU64::new(0),
            refresh_wanted: AtomicBool::new(false),
            node_key_hash: node_key
                .as_ref()
                .map(|k| digest(b"corekv node key", k.as_bytes())),
            node_key,
            insecure,
            client_certs: AtomicBool::new(false),
            tls: AtomicBool::new(false),
            trusted: RwLock::new(Vec::new()),
            stats: GateStats::default(),
        };
        if let Some(t) = known {
            gate.set(t);
        }
        gate
    }

    /// A gate with authentication off and no node key (tests, tools).
    pub fn open() -> Arc<Gate> {
        Arc::new(Gate::new(None, false, Some(AuthTable::default())))
    }

    /// Takes the record as read from the meta region.
    pub fn set(&self, table: AuthTable) {
        let on = table.enabled;
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(table));
        self.state
            .store(if on { ON } else { OFF }, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes the record as read from the meta region, at `version`.
    pub fn set_read(&self, table: AuthTable, version: u64) {
        // The table before its version: whoever sees the version sees it.
        self.set(table);
        self.version.store(version, Ordering::Release);
    }

    /// The version of the record last read from the meta region.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The record this node has, if loaded.
    pub fn table(&self) -> Option<Arc<AuthTable>> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether authentication is on.
    pub fn state(&self) -> AuthState {
        match self.state.load(Ordering::Acquire) {
            OFF => AuthState::Off,
            ON => AuthState::On,
            _ => AuthState::Unknown,
        }
    }

    /// Refreshes of the record so far (see [`Gate::want_refresh`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Asks the meta thread to read the record now.
    pub fn want_refresh(&self) {
        self.refresh_wanted.store(true, Ordering::Release);
    }

    /// True (once) if a refresh was asked for.
    pub fn take_refresh_wanted(&self) -> bool {
        self.refresh_wanted.swap(false, Ordering::AcqRel)
    }

    /// The credentials this node's own clients log in with.
    pub fn node_credentials(&self) -> Option<crate::client::Credentials> {
        self.node_key.as_ref().map(|k| crate::client::Credentials {
            user: NODE_USER.to_string(),
            token: k.clone(),
        })
    }

    /// First hex digits of the node key's hash: equal on nodes that share
    /// the key (`corekv ctl auth enable` checks it), and nothing about the
    /// key itself.
    pub fn node_key_fingerprint(&self) -> Option<String> {
        self.node_key_hash.map(|h| hex(&h[..8]))
    }

    /// Takes the addresses of the cluster's nodes (see
    /// [`Gate::protected_refusal`]).
    pub fn trust_nodes(&self, mut ips: Vec<std::net::IpAddr>) {
        ips.sort_unstable();
        ips.dedup();
        *self.trusted.write().unwrap_or_else(|e| e.into_inner()) = ips;
    }

    /// Records that client ports require certificates from the cluster's
    /// CA (mutual TLS), which lifts protected mode.
    pub fn require_client_certs(&self) {
        self.client_certs.store(true, Ordering::Relaxed);
    }

    /// Records that the node serves TLS (shown in its status).
    pub fn set_tls(&self) {
        self.tls.store(true, Ordering::Relaxed);
    }

    /// The node serves TLS.
    pub fn tls(&self) -> bool {
        self.tls.load(Ordering::Relaxed)
    }

    /// Client ports require certificates from the CA.
    pub fn client_certs(&self) -> bool {
        self.client_certs.load(Ordering::Relaxed)
    }

    /// Protected mode is off (`--insecure`).
    pub fn insecure(&self) -> bool {
        self.insecure
    }

    /// One step of a login that may wait for the node to reread the users
    /// (at most `wait_max` from `started`): a login that does not match the
    /// copy asks for a reread and is tried again once the meta thread has
    /// read the record twice since (so at least one read began after the
    /// ask), before it is refused.
    pub fn login_step(
        &self,
        user: &str,
        token: &[u8],
        started: std::time::Instant,
        attempt: &mut LoginAttempt,
    ) -> LoginStep {
        let wrong = || {
            WireError::new(
                ErrorCode::Unauthenticated,
                "wrong user name or token (or the user does not exist)",
            )
        };
        let out = self.login(user, token);
        let outcome = match out {
            Login::Ok(p) => Ok(p),
            // A node key is checked against this node's own: no reread
            // changes it.
            Login::Wrong if user == NODE_USER => Err(wrong()),
            _ if started.elapsed() >= LOGIN_WAIT_MAX => Err(match out {
                Login::NotLoaded => WireError::new(
                    ErrorCode::Busy,
                    "this node has not loaded the cluster's users yet; retry",
                ),
                _ => wrong(),
            }),
            _ => {
                let now = self.generation();
                let first = *attempt.asked_at.get_or_insert(now);
                if now >= first + 2 {
                    Err(wrong())
                } else {
                    self.want_refresh();
                    return LoginStep::Wait(std::time::Duration::from_millis(20));
                }
            }
        };
        match &outcome {
            Ok(_) => self.stats.logins.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.login_failures.fetch_add(1, Ordering::Relaxed),
        };
        LoginStep::Done(outcome)
    }

    /// Checks credentials against this node's copy as it is now.
    pub fn login(&self, user: &str, token: &[u8]) -> Login {
        if user.len() > CREDENTIAL_BYTES_MAX || token.len() > CREDENTIAL_BYTES_MAX {
            return Login::Wrong;
        }
        if user == NODE_USER {
            return match &self.node_key_hash {
                Some(h) if ct_eq(&digest(b"corekv node key", token), h) => {
                    Login::Ok(Principal::Node)
                }
                _ => Login::Wrong,
            };
        }
        let Some(table) = self.table() else {
            return Login::NotLoaded;
        };
        match table.user(user) {
            Some(u) if u.token_matches(token) => Login::Ok(Principal::User(Arc::new(u.clone()))),
            Some(_) => Login::Wrong,
            None => {
                // As long as a known user's check: the time does not tell
                // which names exist.
                let _ = ct_eq(&digest(&[0; 16], token), &[0; 32]);
                Login::Wrong
            }
        }
    }

    /// Why a connection from `peer` with `principal` is not served by
    /// protected mode, if it is not: while authentication is off (or not
    /// known) and client certificates are not required, only connections from 127.0.0.1 and ::1, from the cluster's
    /// nodes' addresses ([`Gate::trust_nodes`]) and those that logged in
    /// with the node key are, unless the node runs with `--insecure`.
    pub fn protected_refusal(
        &self,
        peer: Option<std::net::SocketAddr>,
        principal: &Principal,
    ) -> Option<String> {
        if self.insecure
            || self.client_certs()
            || self.state() == AuthState::On
            || matches!(principal, Principal::Node)
        {
            return None;
        }
        let local = peer.is_some_and(|p| match p.ip() {
            std::net::IpAddr::V4(a) => a == std::net::Ipv4Addr::LOCALHOST,
            std::net::IpAddr::V6(a) => {
                a.is_loopback() || a.to_ipv4_mapped() == Some(std::net::Ipv4Addr::LOCALHOST)
            }
        });
        let trusted = || {
            peer.is_some_and(|p| {
                self.trusted
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&p.ip())
            })
        };
        if local || trusted() {
            return None;
        }
        self.stats
            .protected_refusals
            .fetch_add(1, Ordering::Relaxed);
        Some(format!(
            "corekv is in protected mode: authentication is off, so it serves clients on \
             127.0.0.1 and ::1 only (this connection is from {}). Either turn authentication \
             on (corekv ctl auth enable, from this machine; every node needs the same \
             --auth-key-file), or restart the nodes with --insecure to serve everyone who \
             can reach the port",
            peer.map_or("an unknown address".into(), |p| p.ip().to_string())
        ))
    }

    /// Checks one request of a connection logged in as `principal`.
    pub fn authorize(
        &self,
        principal: &Principal,
        req: &Request,
    ) -> std::result::Result<(), WireError> {
        let user = match (self.state(), principal) {
            (_, Principal::Node) | (AuthState::Off, _) => return Ok(()),
            (AuthState::Unknown, Principal::Anonymous) => {
                return Err(WireError::new(
                    ErrorCode::Busy,
                    "this node has not loaded the cluster's users yet; retry",
                ))
            }
            (AuthState::On, Principal::Anonymous) => {
                self.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
                return Err(WireError::new(
                    ErrorCode::Unauthenticated,
                    "authentication required: log in with a user and token \
                     (corekv --user NAME --token TOKEN, or COREKV_TOKEN)",
                ));
            }
            (_, Principal::User(u)) => u,
        };
        match check_user(user, req) {
            Ok(()) => Ok(()),
            Err(why) => {
                self.stats.denied.fetch_add(1, Ordering::Relaxed);
                Err(WireError::new(
                    ErrorCode::PermissionDenied,
                    format!("user {:?} may not {why}", user.name),
                ))
            }
        }
    }
}

fn show(key: &[u8]) -> String {
    let s = String::from_utf8_lossy(&key[..key.len().min(64)]).to_string();
    if key.len() > 64 {
        format!("{s:?}...")
    } else {
        format!("{s:?}")
    }
}

/// What `user` may not do of `req`, if anything.
fn check_user(user: &User, req: &Request) -> std::result::Result<(), String> {
    if req.system && !user.is_admin() {
        return Err("send requests with the system mark (admin only)".into());
    }
    match &req.op {
        Op::Get { key, .. } => {
            if !user.may_read(key) {
                return Err(format!("read {}", show(key)));
            }
        }
        Op::Watch {
            prefix: Some(r), ..
        } => {
            if !user.may_read_prefix(&r.prefix) {
                return Err(format!("watch the prefix {}", show(&r.prefix)));
            }
        }
        Op::Watch { keys, .. } => {
            if let Some(k) = keys.iter().find(|k| !user.may_read(k)) {
                return Err(format!("watch {}", show(k)));
            }
        }
        Op::Write(w) => {
            use corekv_engine::WriteRequest;
            if let WriteRequest::Txn { checks, ops } = w {
                // Checked keys are read, changed keys written.
                if let Some(c) = checks.iter().find(|c| !user.may_read(&c.key)) {
                    return Err(format!("read {}", show(&c.key)));
                }
                if let Some(k) = ops.iter().map(|o| o.key()).find(|k| !user.may_write(k)) {
                    return Err(format!("write {}", show(k)));
                }
            } else if let Some(k) = w.keys().find(|k| !user.may_write(k)) {
                return Err(format!("write {}", show(k)));
            }
        }
        Op::Scan { prefix, .. } => {
            // A page of a region holds keys of any prefix, unless the scan
            // names one: then read on that prefix is enough.
            if !user.may_read_prefix(prefix) {
                return Err(if prefix.is_empty() {
                    "scan (it needs read on every key: read:*)".into()
                } else {
                    format!("scan of prefix {}", show(prefix))
                });
            }
        }
        Op::Routes | Op::CancelWatch { .. } => {}
        // Hot keys of every prefix, node addresses: for admins.
        Op::Status => {
            if !user.is_admin() {
                return Err("read a node's status (admin only)".into());
            }
        }
        Op::TransferLeader { .. }
        | Op::Split { .. }
        | Op::ChangePeer(_)
        | Op::MoveShard { .. }
        | Op::Check => {
            if !user.is_admin() {
                return Err("change placement (admin only)".into());
            }
        }
        Op::Backup { .. } => {
            if !user.is_admin() {
                return Err("back up a region (admin only)".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use corekv_engine::{Epoch, WriteRequest};

    fn req(op: Op) -> Request {
        Request {
            id: 1,
            region_id: 0,
            epoch: Epoch::default(),
            op,
            session: None,
            system: false,
        }
    }

    fn get(k: &str) -> Request {
        req(Op::Get {
            key: Bytes::copy_from_slice(k.as_bytes()),
            consistency: Consistency::Linearizable,
        })
    }

    fn put(k: &str) -> Request {
        req(Op::Write(WriteRequest::Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::new(),
            ttl_ms: None,
            condition: corekv_engine::Condition::None,
        }))
    }

    fn table_with(users: &[(&str, &[&str])]) -> (AuthTable, Vec<String>) {
        let mut t = AuthTable {
            enabled: true,
            users: Vec::new(),
        };
        let mut tokens = Vec::new();
        for (name, roles) in users {
            let grants = roles.iter().map(|r| Grant::parse(r).unwrap()).collect();
            let (u, tok) = User::new(name, grants).unwrap();
            t.users.push(u);
            tokens.push(tok);
        }
        (t, tokens)
    }

    #[test]
    fn grants_parse_and_show() {
        assert_eq!(Grant::parse("admin").unwrap(), Grant::Admin);
        assert_eq!(Grant::parse("read").unwrap(), Grant::Read(vec![]));
        assert_eq!(Grant::parse("read:*").unwrap(), Grant::Read(vec![]));
        assert_eq!(
            Grant::parse("write:/app/").unwrap(),
            Grant::Write(b"/app/".to_vec())
        );
        assert_eq!(
            Grant::parse("write:/app/").unwrap().to_string(),
            "write:/app/"
        );
        assert!(Grant::parse("admin:/x").is_err());
        assert!(Grant::parse("read:").is_err());
        assert!(Grant::parse("delete").is_err());
    }

    #[test]
    fn the_record_round_trips_and_garbage_is_refused() {
        let (t, _) = table_with(&[("root", &["admin"]), ("app", &["read:/a/", "write:/b/"])]);
        let bytes = t.encode();
        assert_eq!(AuthTable::decode(&bytes).unwrap(), t);
        for cut in 0..bytes.len() {
            assert!(AuthTable::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut more = bytes.clone();
        more.push(0);
        assert!(AuthTable::decode(&more).is_err());
    }

    #[test]
    fn a_record_on_without_an_admin_is_invalid() {
        let (mut t, _) = table_with(&[("app", &["read"])]);
        assert!(t.validate().is_err());
        t.enabled = false;
        assert!(t.validate().is_ok());
        let (mut twice, _) = table_with(&[("a", &["admin"]), ("a", &["read"])]);
        assert!(twice.validate().is_err());
        twice.users.pop();
        assert!(twice.validate().is_ok());
        assert!(check_name("@node").is_err());
        assert!(check_name("a b").is_err());
    }

    #[test]
    fn logins_check_the_token_and_rotation_replaces_it() {
        let (mut t, tokens) = table_with(&[("root", &["admin"]), ("app", &["read"])]);
        let gate = Gate::new(Some("node-secret".into()), false, Some(t.clone()));
        assert!(matches!(
            gate.login("app", tokens[1].as_bytes()),
            Login::Ok(_)
        ));
        assert!(matches!(
            gate.login("app", tokens[0].as_bytes()),
            Login::Wrong
        ));
        assert!(matches!(
            gate.login("nobody", tokens[0].as_bytes()),
            Login::Wrong
        ));
        assert!(matches!(
            gate.login(NODE_USER, b"node-secret"),
            Login::Ok(Principal::Node)
        ));
        assert!(matches!(
            gate.login(NODE_USER, b"node-secreT"),
            Login::Wrong
        ));
        let long = vec![b'a'; CREDENTIAL_BYTES_MAX + 1];
        assert!(matches!(gate.login("app", &long), Login::Wrong));
        let new = t.user_mut("app").unwrap().rotate();
        gate.set(t);
        assert!(matches!(
            gate.login("app", tokens[1].as_bytes()),
            Login::Wrong
        ));
        assert!(matches!(gate.login("app", new.as_bytes()), Login::Ok(_)));
        let unloaded = Gate::new(None, false, None);
        assert!(matches!(
            unloaded.login("app", new.as_bytes()),
            Login::NotLoaded
        ));
        assert!(matches!(
            unloaded.login(NODE_USER, b"node-secret"),
            Login::Wrong
        ));
    }

    #[test]
    fn a_login_the_copy_does_not_know_waits_for_two_rereads() {
        let (t, tokens) = table_with(&[("root", &["admin"])]);
        let gate = Gate::new(None, false, Some(AuthTable::default()));
        let started = std::time::Instant::now();
        let mut attempt = LoginAttempt::default();
        let step = |a: &mut LoginAttempt| gate.login_step("root", tokens[0].as_bytes(), started, a);
        assert!(matches!(step(&mut attempt), LoginStep::Wait(_)));
        assert!(gate.take_refresh_wanted());
        gate.set(AuthTable::default());
        assert!(matches!(step(&mut attempt), LoginStep::Wait(_)));
        // The second reread brings the user.
        gate.set(t);
        assert!(matches!(
            step(&mut attempt),
            LoginStep::Done(Ok(Principal::User(_)))
        ));
        // A wrong token is refused after two rereads that do not help.
        let mut attempt = LoginAttempt::default();
        let wrong = |a: &mut LoginAttempt| gate.login_step("root", b"nope", started, a);
        assert!(matches!(wrong(&mut attempt), LoginStep::Wait(_)));
        gate.set(gate.table().unwrap().as_ref().clone());
        gate.set(gate.table().unwrap().as_ref().clone());
        match wrong(&mut attempt) {
            LoginStep::Done(Err(e)) => assert_eq!(e.code(), ErrorCode::Unauthenticated),
            other => panic!("{other:?}"),
        }
        assert_eq!(gate.stats.login_failures.load(Ordering::Relaxed), 1);
        assert_eq!(gate.stats.logins.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn requests_are_checked_against_the_grants() {
        let (t, _) = table_with(&[
            ("root", &["admin"]),
            ("reader", &["read"]),
            ("app", &["write:/app/"]),
            ("mixed", &["write:/app/", "read:/conf/"]),
        ]);
        let gate = Gate::new(None, false, Some(t.clone()));
        let user = |n: &str| Principal::User(Arc::new(t.user(n).unwrap().clone()));
        let code = |p: &Principal, r: &Request| gate.authorize(p, r).err().map(|e| e.code());
        let (root, reader, app) = (user("root"), user("reader"), user("app"));
        let anon = Principal::Anonymous;
        assert_eq!(
            code(&anon, &get("/app/x")),
            Some(ErrorCode::Unauthenticated)
        );
        assert_eq!(code(&reader, &get("/other")), None);
        assert_eq!(
            code(&reader, &put("/other")),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(code(&app, &put("/app/x")), None);
        assert_eq!(code(&app, &get("/app/x")), None);
        assert_eq!(
            code(&app, &put("/other")),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            code(&app, &get("/other")),
            Some(ErrorCode::PermissionDenied)
        );
        let meta = String::from_utf8_lossy(&auth_key()).to_string();
        let meta_get = req(Op::Get {
            key: Bytes::from(auth_key()),
            consistency: Consistency::Linearizable,
        });
        assert_eq!(
            code(&reader, &meta_get),
            Some(ErrorCode::PermissionDenied),
            "{meta}"
        );
        assert_eq!(code(&root, &meta_get), None);
        let split = req(Op::Split { split_hash: 0 });
        assert_eq!(code(&app, &split), Some(ErrorCode::PermissionDenied));
        assert_eq!(code(&root, &split), None);
        let mut sys = put("/app/x");
        sys.system = true;
        assert_eq!(code(&app, &sys), Some(ErrorCode::PermissionDenied));
        assert_eq!(code(&root, &sys), None);
        assert_eq!(code(&Principal::Node, &sys), None);
        // A transaction reads what it checks and writes what it changes.
        let txn = |check: &str, change: &str| {
            req(Op::Write(WriteRequest::Txn {
                checks: vec![corekv_engine::TxnCheck {
                    key: Bytes::copy_from_slice(check.as_bytes()),
                    version: None,
                }],
                ops: vec![corekv_engine::TxnOp::Delete {
                    key: Bytes::copy_from_slice(change.as_bytes()),
                }],
            }))
        };
        let mixed = user("mixed");
        assert_eq!(code(&mixed, &txn("/conf/a", "/app/b")), None);
        assert_eq!(
            code(&mixed, &txn("/app/a", "/conf/b")),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            code(&mixed, &txn("/other", "/app/b")),
            Some(ErrorCode::PermissionDenied)
        );
        // Status (hot keys of every prefix) is for admins.
        assert_eq!(
            code(&reader, &req(Op::Status)),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(code(&root, &req(Op::Status)), None);
        assert_eq!(code(&reader, &req(Op::Routes)), None);
        let scan_of = |prefix: &str| {
            req(Op::Scan {
                from_hash: 0,
                limit: 10,
                keys_only: true,
                consistency: Consistency::Linearizable,
                prefix: Bytes::copy_from_slice(prefix.as_bytes()),
            })
        };
        let scan = scan_of("");
        assert_eq!(code(&app, &scan), Some(ErrorCode::PermissionDenied));
        assert_eq!(code(&reader, &scan), None);
        // A prefix scan needs read on that prefix only.
        assert_eq!(code(&app, &scan_of("/app/")), None);
        assert_eq!(code(&app, &scan_of("/app/payments/")), None);
        assert_eq!(
            code(&app, &scan_of("/ap")),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            code(&app, &scan_of("/other/")),
            Some(ErrorCode::PermissionDenied)
        );
        // Off: everyone may do everything.
        let mut off = t.clone();
        off.enabled = false;
        gate.set(off);
        assert_eq!(code(&anon, &sys), None);
        // Not loaded: anonymous requests wait.
        let unloaded = Gate::new(None, false, None);
        let busy = unloaded.authorize(&anon, &get("k")).unwrap_err();
        assert_eq!(busy.code(), ErrorCode::Busy);
    }

    #[test]
    fn protected_mode_serves_only_the_local_host_while_auth_is_off() {
        let gate = Gate::new(None, false, Some(AuthTable::default()));
        let at = |s: &str| Some(s.parse::<std::net::SocketAddr>().unwrap());
        let anon = Principal::Anonymous;
        assert!(gate
            .protected_refusal(at("127.0.0.1:5000"), &anon)
            .is_none());
        assert!(gate.protected_refusal(at("[::1]:5000"), &anon).is_none());
        assert!(gate
            .protected_refusal(at("127.0.0.2:5000"), &anon)
            .is_some());
        assert!(gate.protected_refusal(at("10.1.2.3:5000"), &anon).is_some());
        assert!(gate
            .protected_refusal(at("10.1.2.3:5000"), &Principal::Node)
            .is_none());
        gate.trust_nodes(vec!["10.1.2.3".parse().unwrap()]);
        assert!(gate.protected_refusal(at("10.1.2.3:5000"), &anon).is_none());
        assert!(gate.protected_refusal(at("10.1.2.4:5000"), &anon).is_some());
        let insecure = Gate::new(None, true, Some(AuthTable::default()));
        assert!(insecure
            .protected_refusal(at("10.1.2.3:5000"), &anon)
            .is_none());
        let (t, _) = table_with(&[("root", &["admin"])]);
        let on = Gate::new(None, false, Some(t));
        assert!(on.protected_refusal(at("10.1.2.3:5000"), &anon).is_none());
    }
}

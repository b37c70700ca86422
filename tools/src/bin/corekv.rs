//! `corekv`: read and write a corekv cluster, or run a local one.
//!
//! Exit codes: 0 success; 1 key not found; 2 condition failed; 3 error;
//! 4 outcome unknown (the write may or may not have been applied); 5 a watch
//! asked for changes no longer kept (the current values are printed).

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use corekv_engine::Consistency;
use corekv_net::{ChangeKind, Client, ClientConfig, ClientError, Credentials, PutOptions};
use corekv_tools::dev::{run_dev, DevOptions};

#[derive(Parser)]
#[command(name = "corekv", version, about = "corekv command-line client")]
struct Cli {
    /// Client addresses of cluster nodes, comma-separated.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:7101",
        env = "COREKV_ENDPOINTS"
    )]
    endpoints: String,
    /// Time budget of one command, ms.
    #[arg(long, global = true, default_value_t = 5000)]
    timeout_ms: u64,
    /// User to log in as (with --token or --token-file). Default: root.
    #[arg(long, global = true, env = "COREKV_USER")]
    user: Option<String>,
    /// Token to log in with (a cluster with authentication on refuses
    /// requests without one).
    #[arg(long, global = true, env = "COREKV_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the token (as `corekv dev --auth` writes it).
    #[arg(
        long,
        global = true,
        env = "COREKV_TOKEN_FILE",
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
    /// Speak TLS to the nodes, trusting this CA bundle (PEM). `corekv dev
    /// --tls` names its CA on the ready line (`ca=`).
    #[arg(long, global = true, env = "COREKV_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for nodes that require one
    /// (`--tls-client-auth`); with --tls-key.
    #[arg(long, global = true, env = "COREKV_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, global = true, env = "COREKV_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// TLS of every client this process makes (from --tls-ca, --tls-cert,
/// --tls-key), set once in `main`.
static TLS: std::sync::OnceLock<Option<corekv_net::tls::ClientTls>> = std::sync::OnceLock::new();

fn client_tls(cli: &Cli) -> Result<Option<corekv_net::tls::ClientTls>, String> {
    match (&cli.tls_ca, &cli.tls_cert, &cli.tls_key) {
        (None, None, None) => Ok(None),
        (None, _, _) => Err("--tls-cert and --tls-key need --tls-ca".into()),
        (Some(ca), cert, key) => {
            let identity = cert.as_deref().zip(key.as_deref());
            corekv_net::tls::client_tls(ca, identity).map(Some)
        }
    }
}

/// Credentials of every client this process makes (from --user, --token,
/// --token-file), set once in `main`.
static CREDENTIALS: std::sync::OnceLock<Option<Credentials>> = std::sync::OnceLock::new();

fn credentials(cli: &Cli) -> Result<Option<Credentials>, String> {
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("--token-file {}: {e}", path.display()))?
            .trim()
            .to_string(),
        (None, None) if cli.user.is_some() => {
            return Err("--user needs --token or --token-file".into())
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(Credentials {
        user: cli
            .user
            .clone()
            .unwrap_or_else(|| corekv_net::auth::ROOT_USER.into()),
        token,
    }))
}

/// Client settings: `endpoints`, the time budget, the login.
fn client_config(endpoints: Vec<String>, timeout_ms: u64) -> ClientConfig {
    let mut cfg = ClientConfig::new(endpoints);
    cfg.request_timeout = Duration::from_millis(timeout_ms);
    cfg.credentials = CREDENTIALS.get().cloned().flatten();
    cfg.tls = TLS.get().cloned().flatten();
    cfg
}

#[derive(Clone, Copy, ValueEnum)]
enum ConsistencyArg {
    Linearizable,
    Lease,
    Stale,
    Follower,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputArg {
    Raw,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a key; prints the new version. Without VALUE (or with
    /// --file), the value is read from stdin (or the file), byte for byte.
    Put {
        /// Key.
        key: String,
        /// Value; omit it to read the value from stdin (binary-safe; an empty
        /// stdin is refused: give '' for an empty value).
        #[arg(conflicts_with = "file")]
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Expire after this many seconds.
        #[arg(long)]
        ttl: Option<u64>,
        /// Only if the key has no live value.
        #[arg(long, conflicts_with = "if_version")]
        if_absent: bool,
        /// Only if the key's current version is V.
        #[arg(long, value_name = "V")]
        if_version: Option<u64>,
    },
    /// Read a key; prints the value's bytes unchanged, with a newline after
    /// them only when stdout is a terminal.
    Get {
        /// Key.
        key: String,
        /// Consistency of the read.
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: ConsistencyArg,
        /// `raw`: the value's bytes; `json`: one object with key, value
        /// (or value_base64 when not UTF-8), version and ttl_ms.
        #[arg(long, value_enum, default_value = "raw")]
        output: OutputArg,
    },
    /// List the keys beginning with PREFIX, in key order: `KEY VALUE` per
    /// line (values as stored; --json for binary ones). Reads every
    /// region's part of the prefix linearizably; together they are not one
    /// snapshot. Its cost is the number of keys in the cluster.
    List {
        /// Key prefix ("" for every key, which needs read on every key).
        prefix: String,
        /// Print only the keys.
        #[arg(long)]
        keys_only: bool,
        /// At most N keys; when more follow, stderr says which --after
        /// continues.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Start after this key (the last one of the previous page).
        #[arg(long, value_name = "KEY")]
        after: Option<String>,
        /// One JSON object per line, as `get --output json` prints.
        #[arg(long)]
        json: bool,
    },
    /// Delete a key; prints 1 if a live value was removed, else 0.
    Del {
        /// Key.
        key: String,
    },
    /// Add to an integer value (absent = 0); prints the new value.
    Incr {
        /// Key.
        key: String,
        /// Amount to add.
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
    },
    /// Print every change to the keys, or to every key under a prefix, one
    /// line each, as it happens: `VERSION put KEY VALUE`, `VERSION delete
    /// KEY` or `VERSION expire KEY`. Survives leader changes, splits and
    /// node restarts without missing or repeating a change. Runs until
    /// Ctrl-C, --count or --for-secs; a prefix watch that ends by --count or
    /// --for-secs prints `resume TOKEN` on stderr, for --resume.
    Watch {
        /// Keys to watch.
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        keys: Vec<String>,
        /// Watch every key beginning with this instead (across every
        /// region; keys created later too).
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// With --prefix: go on from where a previous prefix watch stopped
        /// (the token it printed).
        #[arg(long, value_name = "TOKEN", requires = "prefix")]
        resume: Option<String>,
        /// Start after this version (the last one a previous watch printed)
        /// instead of from now. Versions are per region: give it for keys of
        /// one region.
        #[arg(long, value_name = "V", conflicts_with = "prefix")]
        from_version: Option<u64>,
        /// Exit after this many changes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long, value_name = "S")]
        for_secs: Option<u64>,
    },
    /// Inspect the cluster.
    Ctl {
        #[command(subcommand)]
        cmd: CtlCmd,
    },
    /// Start a local cluster on loopback and keep it running until Ctrl-C.
    Dev {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Data directory (default: a temporary directory, removed at exit).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Clients on BASE+1.., peers on BASE+101...
        #[arg(long, default_value_t = 7100)]
        base_port: u16,
        /// Shards per node (default: number of cores).
        #[arg(long)]
        shards: Option<usize>,
        /// Regions of the new cluster (default 8).
        #[arg(long)]
        regions: Option<u64>,
        /// Turn authentication on: the nodes get a node key, root's token
        /// goes to <data dir>/root.token, named on the ready line (`token=`);
        /// log in with `--token-file PATH`.
        #[arg(long)]
        auth: bool,
        /// TLS on every port: a throwaway CA and node certificates go to
        /// <data dir>/tls; the ready line names the CA (`ca=`), which the
        /// CLI takes with `--tls-ca PATH` (and redis-cli with `--tls
        /// --cacert PATH`).
        #[arg(long)]
        tls: bool,
        /// Flags for every server, after `--` (e.g. `-- --split-load-ops 20000`).
        #[arg(last = true)]
        server_args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Make a user; prints its token, once (only its hash is kept).
    Add {
        /// Name: letters, digits, '_', '-', '.'.
        name: String,
        /// What it may do: admin, read[:PREFIX], write[:PREFIX] (write
        /// includes read; no prefix or * is every key). Repeat for more.
        #[arg(long = "role", required = true, value_name = "ROLE")]
        roles: Vec<String>,
    },
    /// The users and their roles.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a user (its open connections keep their login until they
    /// close).
    Remove {
        /// Name.
        name: String,
    },
    /// Give a user a new token and print it; the old one stops working for
    /// new connections.
    Rotate {
        /// Name.
        name: String,
    },
}

#[derive(Subcommand)]
enum AuthCmd {
    /// Require a login on every client connection. Makes the admin `root`
    /// if there is no admin and prints its token (once). Refused unless
    /// every node has the same --auth-key-file.
    Enable {
        /// Write root's token to this file (mode 0600) instead of stdout.
        #[arg(long, value_name = "FILE")]
        token_out: Option<PathBuf>,
    },
    /// Serve clients without a login again (protected mode then limits
    /// them to each node's own machine, unless --insecure).
    Disable,
    /// Each node's view: on/off, users, node key, protected mode, counters.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CtlCmd {
    /// Users and their roles (admin).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Authentication on or off (admin).
    Auth {
        #[command(subcommand)]
        cmd: AuthCmd,
    },
    /// Nodes, shards, regions and leaders per node, log writer counters.
    Status {
        /// Print the nodes' status documents as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One row per region: range, epoch, peers, leader, applied index, log
    /// size, keys, bytes, read and write rates.
    Regions {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The keys requested most over the last second, hottest first, with
    /// the node and shard serving each (sampled: one request in 16 per
    /// shard, the top 16 of each shard).
    Hotkeys {
        /// Only keys of this region.
        #[arg(long)]
        region: Option<u64>,
        /// Rows at most.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Back up every region into DIR (new or empty): each region's data,
    /// versions, expiries and sessions at one applied index, holding every
    /// write acknowledged before the command started; progress on stderr,
    /// a manifest with SHA-256 checksums last. Restore with
    /// `corekv-server --restore DIR` on every node of a new cluster.
    Backup {
        /// Directory to write.
        dir: PathBuf,
    },
    /// Check a backup as a restore would (complete, every checksum, every
    /// region decodes, the hash space covered) and list its regions.
    VerifyBackup {
        /// Backup directory.
        dir: PathBuf,
    },
    /// Split a region in two at a hash (default: the middle of its range);
    /// prints the two regions.
    Split {
        /// Region id (see `ctl regions`).
        region: u64,
        /// First hash of the new region, in hex (as `ctl regions` shows
        /// ranges).
        #[arg(long, value_name = "HASH", value_parser = parse_hex)]
        at: Option<u64>,
    },
    /// Check that every replica holds the same data as its leader: each
    /// computes a digest of its keys, values, versions and expiries at one
    /// raft entry and compares it with the leader's. Exit 1 when a replica
    /// differs (naming it), 3 when some replica could not be verified.
    Check {
        /// Region id (see `ctl regions`).
        region: Option<u64>,
        /// Every region.
        #[arg(long, conflicts_with = "region")]
        all: bool,
        /// How long to wait for every replica's verdict, per region, ms.
        #[arg(long, default_value_t = 10_000)]
        wait_ms: u64,
    },
    /// Move a region's leadership to its replica on NODE, and keep it there:
    /// the replica becomes the region's preferred leader (replicated; the
    /// automatic leader balancing follows it).
    TransferLeader {
        /// Region id (see `ctl regions`).
        region: u64,
        /// Node id of the replica to lead.
        node: u64,
        /// How long to wait for the move, ms.
        #[arg(long, default_value_t = 10_000)]
        wait_ms: u64,
    },
    /// Move a region's replica from node FROM to node TO: a learner on TO
    /// catches up, then one joint change makes it a voter and takes FROM's
    /// replica out (leadership leaves FROM first if it leads).
    MoveReplica {
        /// Region id (see `ctl regions`).
        region: u64,
        /// Node whose replica leaves.
        from: u64,
        /// Node that gets it.
        to: u64,
        /// How long to wait for each step, ms.
        #[arg(long, default_value_t = 30_000)]
        wait_ms: u64,
    },
    /// Move a node's replica of a region to another of its shards (cores).
    MoveShard {
        /// Region id (see `ctl regions`).
        region: u64,
        /// Node id.
        node: u64,
        /// Target shard (0-based).
        shard: u32,
        /// How long to wait for the move, ms.
        #[arg(long, default_value_t = 10_000)]
        wait_ms: u64,
    },
    /// Record a new node in the meta region's node list and wait until
    /// every node has taken it (then start it with `--join`; the placement
    /// driver, or `ctl balance`, moves replicas to it).
    AddNode {
        /// New node id (1..=65535, unused).
        id: u64,
        /// Its raft address, HOST:PORT (its --peer-listen).
        peer_addr: String,
        /// Its client address, HOST:PORT (its --client-listen).
        client_addr: String,
    },
    /// Drain a node: move every replica on it to the other nodes (its
    /// leaders first move away). Refuses if a region would have nowhere to
    /// go. The node can be stopped afterwards.
    RemoveNode {
        /// Node id.
        id: u64,
        /// Show the plan, move nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for each step, ms.
        #[arg(long, default_value_t = 30_000)]
        wait_ms: u64,
    },
    /// Even out how many replicas each node holds (replica moves), then the
    /// leaders (as transfer-leader does: by requests/s under load, else by
    /// count), then the replicas on each node's shards (as move-shard does),
    /// one move at a time; the placement driver does the same by itself.
    Balance {
        /// Show the plan, move nothing.
        #[arg(long)]
        dry_run: bool,
        /// Requests/s (reads plus writes) below which leaders and shards
        /// are balanced by count instead of load.
        #[arg(long, default_value_t = 1000.0)]
        min_load: f64,
        /// How long to wait for each move, ms.
        #[arg(long, default_value_t = 10_000)]
        wait_ms: u64,
    },
}

fn user_command(c: &mut Client, cmd: &UserCmd) -> anyhow::Result<String> {
    use corekv_net::auth::{self, Grant};
    Ok(match cmd {
        UserCmd::Add { name, roles } => {
            let grants = roles
                .iter()
                .map(|r| Grant::parse(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let token = auth::add_user(c, name, grants)?;
            eprintln!("user {name} added; its token is shown once:");
            format!("{token}\n")
        }
        UserCmd::Rotate { name } => {
            let (token, late) = auth::rotate_token(c, name)?;
            corekv_tools::ctl::warn_late(&late);
            eprintln!("new token of {name} (the old one no longer logs in):");
            format!("{token}\n")
        }
        UserCmd::Remove { name } => {
            let late = auth::remove_user(c, name)?;
            corekv_tools::ctl::warn_late(&late);
            format!("user {name} removed\n")
        }
        UserCmd::List { json } => {
            let (table, _) = auth::read_auth(c)?.unwrap_or_default();
            let rows = corekv_tools::ctl::user_rows(&table);
            if *json {
                json_line(&rows)
            } else {
                corekv_tools::ctl::users_table(&table, &rows)
            }
        }
    })
}

fn parse_hex(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("{s:?}: {e}"))
}

/// Connects to the cluster, runs `f` and prints the text it returns (exit
/// 3 with the error otherwise).
fn ctl_text(
    endpoints: Vec<String>,
    timeout_ms: u64,
    f: impl FnOnce(&mut Client) -> anyhow::Result<String>,
) -> ExitCode {
    let mut cfg = client_config(endpoints, timeout_ms);
    // Cluster administration: may write the meta region's records.
    cfg.system = true;
    match Client::connect(cfg)
        .map_err(anyhow::Error::from)
        .and_then(|mut c| f(&mut c))
    {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(3, format!("error: {e:#}")),
    }
}

/// `value` as one line of JSON.
fn json_line(value: &impl serde::Serialize) -> String {
    match serde_json::to_string(value) {
        Ok(text) => text + "\n",
        Err(e) => format!("{{\"error\":\"{e}\"}}\n"),
    }
}

/// Values read from stdin or a file stop here: no node takes more
/// (`--value-bytes-max` is at most this), so a larger one is refused before
/// it is sent.
const VALUE_READ_MAX: usize = corekv_engine::config::VALUE_BYTES_CEILING;

/// A value from `r`, all of it, refused past [`VALUE_READ_MAX`].
fn read_value(r: impl std::io::Read) -> Result<Vec<u8>, String> {
    let mut v = Vec::new();
    std::io::Read::take(r, VALUE_READ_MAX as u64 + 1)
        .read_to_end(&mut v)
        .map_err(|e| e.to_string())?;
    if v.len() > VALUE_READ_MAX {
        return Err(format!(
            "value too large: over {VALUE_READ_MAX} bytes, the most any node accepts \
             (the node's limit is --value-bytes-max, default 1 MiB)"
        ));
    }
    Ok(v)
}

/// `corekv get --output json`: key, value (value_base64 when not UTF-8),
/// version, and ttl_ms (absent without an expiry).
fn value_json(key: &str, v: &corekv_net::Value) -> serde_json::Value {
    use base64::Engine as _;
    let mut o = serde_json::Map::new();
    o.insert("key".into(), key.into());
    match std::str::from_utf8(&v.value) {
        Ok(s) => o.insert("value".into(), s.into()),
        Err(_) => o.insert(
            "value_base64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(&v.value)
                .into(),
        ),
    };
    o.insert("version".into(), v.version.into());
    if v.expire_at_ms > 0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        o.insert("ttl_ms".into(), v.expire_at_ms.saturating_sub(now).into());
    }
    serde_json::Value::Object(o)
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(code)
}

fn client_error(e: ClientError) -> ExitCode {
    match e {
        ClientError::ConditionFailed { current_version } => match current_version {
            Some(v) => fail(2, format!("condition failed: current version {v}")),
            None => fail(2, "condition failed: key is absent"),
        },
        ClientError::Unknown(m) => fail(4, format!("outcome unknown: {m}")),
        ClientError::Unauthenticated(m) => fail(
            3,
            format!(
                "error: not logged in: {m}\n(give --user and --token, COREKV_TOKEN, or --token-file)"
            ),
        ),
        other => fail(3, format!("error: {other}")),
    }
}

/// What `corekv watch` follows.
enum Watched<'a> {
    Keys(&'a [String], Option<u64>),
    Prefix(&'a str, Option<&'a str>),
}

fn watch(
    client: &mut Client,
    what: Watched<'_>,
    count: Option<u64>,
    for_secs: Option<u64>,
) -> ExitCode {
    let started = match what {
        Watched::Keys(keys, from_version) => {
            let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
            client.watch(&keys, from_version.unwrap_or(0))
        }
        Watched::Prefix(prefix, None) => client.watch_prefix(prefix.as_bytes()),
        Watched::Prefix(prefix, Some(token)) => match token.parse::<corekv_net::ResumeToken>() {
            Ok(t) => client.watch_prefix_from(prefix.as_bytes(), &t),
            Err(e) => return fail(2, format!("error: --resume: {e}")),
        },
    };
    let w = match started {
        Ok(w) => w,
        Err(e) => return client_error(e),
    };
    let done = |w: &corekv_net::Watch| {
        if let Some(t) = w.resume_token() {
            eprintln!("resume {t}");
        }
        ExitCode::SUCCESS
    };
    let until = for_secs.map(|s| std::time::Instant::now() + Duration::from_secs(s));
    let mut seen = 0u64;
    let mut stdout = std::io::stdout();
    loop {
        if count.is_some_and(|n| seen >= n) || until.is_some_and(|t| std::time::Instant::now() >= t)
        {
            return done(&w);
        }
        match w.next(Duration::from_millis(200)) {
            Ok(Some(c)) => {
                seen += 1;
                let key = String::from_utf8_lossy(&c.key);
                let line = match c.kind {
                    ChangeKind::Put => {
                        format!(
                            "{} put {key} {}",
                            c.version,
                            String::from_utf8_lossy(&c.value)
                        )
                    }
                    ChangeKind::Delete => format!("{} delete {key}", c.version),
                    ChangeKind::Expire => format!("{} expire {key}", c.version),
                };
                if writeln!(stdout, "{line}")
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    return ExitCode::SUCCESS;
                }
            }
            Ok(None) => {}
            Err(ClientError::Compacted { message, current }) => {
                for c in current {
                    let key = String::from_utf8_lossy(&c.key);
                    let _ = match c.kind {
                        ChangeKind::Put => writeln!(
                            stdout,
                            "current {} {key} {}",
                            c.version,
                            String::from_utf8_lossy(&c.value)
                        ),
                        _ => writeln!(stdout, "current absent {key}"),
                    };
                }
                return fail(5, message);
            }
            Err(e) => return client_error(e),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match credentials(&cli) {
        Ok(c) => {
            let _ = CREDENTIALS.set(c);
        }
        Err(e) => return fail(3, format!("error: {e}")),
    }
    match client_tls(&cli) {
        Ok(t) => {
            let _ = TLS.set(t);
        }
        Err(e) => return fail(3, format!("error: {e}")),
    }
    if let Cmd::Dev {
        nodes,
        data_dir,
        base_port,
        shards,
        regions,
        auth,
        tls,
        server_args,
    } = cli.cmd
    {
        let tmp;
        let data_dir = match data_dir {
            Some(d) => d,
            None => match tempfile::Builder::new().prefix("corekv-dev-").tempdir() {
                Ok(t) => {
                    tmp = t;
                    tmp.path().to_path_buf()
                }
                Err(e) => return fail(3, format!("temporary directory: {e}")),
            },
        };
        let opts = DevOptions {
            nodes,
            base_port,
            data_dir,
            shards,
            regions,
            extra_args: server_args,
            node_args: Vec::new(),
            fault_files: false,
            metrics: true,
            resp: true,
            node_key: auth,
            tls,
        };
        return match run_dev(opts, auth) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(3, format!("corekv dev: {e:#}")),
        };
    }
    let endpoints: Vec<String> = cli
        .endpoints
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if let Cmd::Ctl {
        cmd:
            CtlCmd::TransferLeader {
                region,
                node,
                wait_ms,
            },
    } = &cli.cmd
    {
        let cfg = client_config(endpoints, cli.timeout_ms);
        let moved = Client::connect(cfg)
            .map_err(anyhow::Error::from)
            .and_then(|mut c| {
                corekv_net::admin::transfer_leader(
                    &mut c,
                    *region,
                    *node,
                    Duration::from_millis(*wait_ms),
                )
                .map_err(anyhow::Error::from)
            });
        return match moved {
            Ok(took) => {
                println!(
                    "region {region}: node {node} leads (moved in {} ms)",
                    took.as_millis()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(3, format!("error: {e:#}")),
        };
    }
    if let Cmd::Ctl {
        cmd:
            CtlCmd::Balance {
                dry_run,
                min_load,
                wait_ms,
            },
    } = &cli.cmd
    {
        let policy = corekv_shards::placement::Policy {
            min_load: *min_load,
        };
        return ctl_text(endpoints, cli.timeout_ms, |c| {
            corekv_tools::ctl::balance(c, *dry_run, &policy, Duration::from_millis(*wait_ms))
        });
    }
    if let Cmd::Ctl {
        cmd:
            CtlCmd::MoveReplica {
                region,
                from,
                to,
                wait_ms,
            },
    } = &cli.cmd
    {
        return ctl_text(endpoints, cli.timeout_ms, |c| {
            let wait = Duration::from_millis(*wait_ms);
            Ok(corekv_net::admin::move_replica(
                c, *region, *from, *to, wait,
            )?)
        });
    }
    if let Cmd::Ctl {
        cmd:
            CtlCmd::MoveShard {
                region,
                node,
                shard,
                wait_ms,
            },
    } = &cli.cmd
    {
        return ctl_text(endpoints, cli.timeout_ms, |c| {
            let wait = Duration::from_millis(*wait_ms);
            Ok(corekv_net::admin::move_shard(
                c, *region, *node, *shard, wait,
            )?)
        });
    }
    if let Cmd::Ctl {
        cmd:
            CtlCmd::AddNode {
                id,
                peer_addr,
                client_addr,
            },
    } = &cli.cmd
    {
        return ctl_text(endpoints, cli.timeout_ms, |c| {
            corekv_tools::ctl::add_node(c, *id, peer_addr, client_addr)
        });
    }
    if let Cmd::Ctl {
        cmd:
            CtlCmd::RemoveNode {
                id,
                dry_run,
                wait_ms,
            },
    } = &cli.cmd
    {
        return ctl_text(endpoints, cli.timeout_ms, |c| {
            corekv_tools::ctl::remove_node(c, *id, *dry_run, Duration::from_millis(*wait_ms))
        });
    }
    if let Cmd::Ctl {
        cmd: CtlCmd::Check {
            region,
            all,
            wait_ms,
        },
    } = &cli.cmd
    {
        if region.is_none() && !*all {
            return fail(3, "error: name a region or pass --all".to_string());
        }
        let cfg = client_config(endpoints, cli.timeout_ms);
        let report = Client::connect(cfg)
            .map_err(anyhow::Error::from)
            .and_then(|mut c| {
                corekv_tools::ctl::check(&mut c, *region, Duration::from_millis(*wait_ms))
            });
        return match report {
            Ok(r) => {
                print!("{}", r.text);
                if !r.mismatched.is_empty() {
                    ExitCode::from(1)
                } else if !r.unverified.is_empty() {
                    ExitCode::from(3)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => fail(3, format!("error: {e:#}")),
        };
    }
    if let Cmd::Ctl {
        cmd: CtlCmd::User { cmd },
    } = &cli.cmd
    {
        return ctl_text(endpoints, cli.timeout_ms, |c| user_command(c, cmd));
    }
    if let Cmd::Ctl {
        cmd: CtlCmd::Auth { cmd },
    } = &cli.cmd
    {
        if let AuthCmd::Enable { token_out } = cmd {
            let docs = match corekv_tools::ctl::gather_with(client_config(
                endpoints.clone(),
                cli.timeout_ms,
            )) {
                Ok(d) => d,
                Err(e) => return fail(3, format!("cannot reach the cluster: {e}")),
            };
            return ctl_text(endpoints, cli.timeout_ms, |c| {
                corekv_tools::ctl::auth_enable(c, &docs, token_out.as_deref())
            });
        }
        if let AuthCmd::Disable = cmd {
            return ctl_text(endpoints, cli.timeout_ms, |c| {
                let (_, late) = corekv_net::auth::set_enabled(c, false)?;
                corekv_tools::ctl::warn_late(&late);
                Ok("authentication off\n".into())
            });
        }
    }
    if let Cmd::Ctl {
        cmd: CtlCmd::Split { region, at },
    } = &cli.cmd
    {
        return ctl_text(endpoints, cli.timeout_ms, |c| {
            corekv_tools::ctl::split(c, *region, *at)
        });
    }
    if let Cmd::Ctl {
        cmd: CtlCmd::VerifyBackup { dir },
    } = &cli.cmd
    {
        return match corekv_tools::backup::verify(dir) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, format!("error: {e:#}")),
        };
    }
    if let Cmd::Ctl {
        cmd: CtlCmd::Backup { dir },
    } = &cli.cmd
    {
        return ctl_text(endpoints, cli.timeout_ms, |c| {
            let m = corekv_tools::backup::backup(c, dir, &mut std::io::stderr())?;
            Ok(format!(
                "{}: {} regions, {} keys\n",
                dir.display(),
                m.regions.len(),
                m.regions.iter().map(|r| r.keys).sum::<u64>()
            ))
        });
    }
    if let Cmd::Ctl { cmd } = &cli.cmd {
        let docs = match corekv_tools::ctl::gather_with(client_config(endpoints, cli.timeout_ms)) {
            Ok(d) => d,
            Err(e) => return fail(3, format!("cannot reach the cluster: {e}")),
        };
        let text = match cmd {
            CtlCmd::Status { json: true } => json_line(&docs),
            CtlCmd::Status { json: false } => corekv_tools::ctl::status_table(&docs),
            CtlCmd::Regions { json } => {
                let rows = corekv_net::status::merge_regions(&docs);
                if *json {
                    json_line(&rows)
                } else {
                    corekv_tools::ctl::regions_table(&rows)
                }
            }
            CtlCmd::Hotkeys {
                region,
                limit,
                json,
            } => {
                let rows = corekv_tools::ctl::hot_keys(&docs, *region, *limit);
                if *json {
                    json_line(&rows)
                } else {
                    corekv_tools::ctl::hot_keys_table(&rows)
                }
            }
            CtlCmd::Auth {
                cmd: AuthCmd::Status { json },
            } => {
                if *json {
                    json_line(&corekv_tools::ctl::auth_rows(&docs))
                } else {
                    corekv_tools::ctl::auth_table(&docs)
                }
            }
            CtlCmd::User { .. }
            | CtlCmd::Auth { .. }
            | CtlCmd::TransferLeader { .. }
            | CtlCmd::Check { .. }
            | CtlCmd::Split { .. }
            | CtlCmd::Backup { .. }
            | CtlCmd::VerifyBackup { .. }
            | CtlCmd::Balance { .. }
            | CtlCmd::MoveReplica { .. }
            | CtlCmd::AddNode { .. }
            | CtlCmd::MoveShard { .. }
            | CtlCmd::RemoveNode { .. } => {
                unreachable!("handled above")
            }
        };
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    let cfg = client_config(endpoints, cli.timeout_ms);
    let mut client = match Client::connect(cfg) {
        Ok(c) => c,
        Err(e @ (ClientError::Unauthenticated(_) | ClientError::PermissionDenied(_))) => {
            return client_error(e)
        }
        Err(e) => return fail(3, format!("cannot reach the cluster: {e}")),
    };
    let mut stdout = std::io::stdout();
    match cli.cmd {
        Cmd::Put {
            key,
            value,
            file,
            ttl,
            if_absent,
            if_version,
        } => {
            let opts = PutOptions {
                ttl: ttl.map(Duration::from_secs),
                if_absent,
                if_version,
            };
            let value = match (value, file) {
                (Some(v), _) => v.into_bytes(),
                (None, Some(path)) => match std::fs::File::open(&path)
                    .map_err(|e| e.to_string())
                    .and_then(read_value)
                {
                    Ok(v) => v,
                    Err(e) => return fail(3, format!("error: {}: {e}", path.display())),
                },
                (None, None) => {
                    let stdin = std::io::stdin();
                    if std::io::IsTerminal::is_terminal(&stdin) {
                        return fail(
                            3,
                            "error: no value: give it after the key, with --file PATH, or on stdin",
                        );
                    }
                    match read_value(stdin.lock()) {
                        // An empty stdin is most often a mistake (a missing
                        // argument in a script), not an empty value.
                        Ok(v) if v.is_empty() => {
                            return fail(
                                3,
                                "error: no value: stdin was empty (to store an empty value, \
                                 give '' after the key)",
                            )
                        }
                        Ok(v) => v,
                        Err(e) => return fail(3, format!("error: stdin: {e}")),
                    }
                }
            };
            match client.put(key.as_bytes(), &value, opts) {
                Ok(v) => {
                    let _ = writeln!(stdout, "{v}");
                }
                Err(e) => return client_error(e),
            }
        }
        Cmd::Get {
            key,
            consistency,
            output,
        } => {
            let c = match consistency {
                ConsistencyArg::Linearizable => Consistency::Linearizable,
                ConsistencyArg::Lease => Consistency::Lease,
                ConsistencyArg::Stale => Consistency::Stale,
                ConsistencyArg::Follower => Consistency::Follower,
            };
            match client.get(key.as_bytes(), c) {
                Ok(Some(v)) if output == OutputArg::Json => {
                    let _ = writeln!(stdout, "{}", value_json(&key, &v));
                }
                Ok(Some(v)) => {
                    let _ = stdout.write_all(&v.value);
                    if std::io::IsTerminal::is_terminal(&stdout) {
                        let _ = stdout.write_all(b"\n");
                    }
                }
                Ok(None) => return fail(1, "(not found)"),
                Err(e) => return client_error(e),
            }
        }
        Cmd::List {
            prefix,
            keys_only,
            limit,
            after,
            json,
        } => {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let listed = client.list_prefix(
                prefix.as_bytes(),
                after.as_ref().map(|a| a.as_bytes()),
                limit.map_or(usize::MAX, |l| l as usize),
                keys_only,
                |n| {
                    if tty {
                        eprint!("\r{n} keys found");
                    }
                },
            );
            if tty {
                eprint!("\r\x1b[K");
            }
            let (items, more) = match listed {
                Ok(l) => l,
                Err(e) => return client_error(e),
            };
            let mut out = std::io::BufWriter::new(stdout.lock());
            for (k, v) in &items {
                let key = String::from_utf8_lossy(k);
                let _ = if json {
                    let mut j = value_json(&key, v);
                    if keys_only {
                        if let Some(o) = j.as_object_mut() {
                            o.remove("value");
                            o.remove("value_base64");
                        }
                    }
                    writeln!(out, "{j}")
                } else if keys_only {
                    writeln!(out, "{key}")
                } else {
                    out.write_all(key.as_bytes())
                        .and_then(|_| out.write_all(b" "))
                        .and_then(|_| out.write_all(&v.value))
                        .and_then(|_| out.write_all(b"\n"))
                };
            }
            let _ = out.flush();
            if more {
                if let Some((last, _)) = items.last() {
                    eprintln!(
                        "more keys follow: continue with --after '{}'",
                        String::from_utf8_lossy(last)
                    );
                }
            }
        }
        Cmd::Del { key } => match client.delete(key.as_bytes(), None) {
            Ok(existed) => {
                let _ = writeln!(stdout, "{}", u8::from(existed));
            }
            Err(e) => return client_error(e),
        },
        Cmd::Incr { key, by } => match client.incr(key.as_bytes(), by) {
            Ok(v) => {
                let _ = writeln!(stdout, "{v}");
            }
            Err(e) => return client_error(e),
        },
        Cmd::Watch {
            keys,
            prefix,
            resume,
            from_version,
            count,
            for_secs,
        } => {
            let what = match &prefix {
                Some(p) => Watched::Prefix(p, resume.as_deref()),
                None => Watched::Keys(&keys, from_version),
            };
            return watch(&mut client, what, count, for_secs);
        }
        Cmd::Dev { .. } | Cmd::Ctl { .. } => unreachable!("handled above"),
    }
    ExitCode::SUCCESS
}

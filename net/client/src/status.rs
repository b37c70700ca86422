//! The status document every node answers a `Status` request with
//! (`corekv ctl status`, `corekv ctl regions`, the placement planner,
//! `corekv ctl check`), as types: the server fills them in and every reader
//! parses them, so a renamed or missing field is an error, never a zero.
//!
//! On the wire it is JSON text (`serde_json`), so an operator can read it
//! with `corekv ctl status --json` and any JSON tool.

use serde::{Deserialize, Serialize};

/// One node's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id.
    pub node_id: u64,
    /// Where it takes client connections.
    pub client_addr: String,
    /// Where it takes raft connections from other nodes.
    pub peer_addr: String,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// It is shutting down.
    pub stopping: bool,
    /// Its shards (pinned cores).
    pub shard_count: usize,
    /// Regions it leads, as its router sees them.
    pub leaders: u64,
    /// Nodes it knows the peer address of, ascending.
    pub known_nodes: Vec<u64>,
    /// Nodes marked as leaving in the meta region.
    pub leaving: Vec<u64>,
    /// The group-committed log writer's counters.
    pub log_writer: LogWriterStatus,
    /// Each shard, by index.
    pub shards: Vec<ShardStatus>,
    /// Each replica the node holds, by region id.
    pub regions: Vec<RegionStatus>,
    /// The Redis-protocol listener, if the node has one.
    #[serde(default)]
    pub resp: Option<RespStatus>,
    /// Authentication and protected mode.
    #[serde(default)]
    pub auth: Option<AuthStatus>,
}

/// A node's view of authentication, and its counters since start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuthStatus {
    /// `on`, `off`, or `unknown` (not loaded from the meta region yet).
    pub state: String,
    /// Users in the record.
    pub users: u64,
    /// Version of the record as last read from the meta region.
    #[serde(default)]
    pub version: u64,
    /// First hex digits of the node key's hash (equal on nodes sharing the
    /// key); None: the node has no `--auth-key-file`.
    pub node_key: Option<String>,
    /// Protected mode is off (`--insecure`).
    pub insecure: bool,
    /// Logins accepted.
    pub logins: u64,
    /// Logins refused.
    pub login_failures: u64,
    /// Requests refused for want of a login.
    pub unauthenticated: u64,
    /// Requests refused by the user's roles.
    pub denied: u64,
    /// Connections refused by protected mode.
    pub protected_refusals: u64,
    /// The node serves TLS (`--tls-cert`).
    #[serde(default)]
    pub tls: bool,
    /// Clients must present a certificate (`--tls-client-auth`).
    #[serde(default)]
    pub tls_client_auth: bool,
    /// TLS handshakes that failed or timed out.
    #[serde(default)]
    pub tls_failures: u64,
}

/// Counters of a node's Redis-protocol listener since start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RespStatus {
    /// Where it listens.
    pub addr: String,
    /// Connections open.
    pub connections: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused (over the limit).
    pub rejected: u64,
    /// Commands answered.
    pub commands: u64,
    /// Of which with an error.
    pub error_replies: u64,
}

/// Counters of the node's log writer since start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogWriterStatus {
    /// fsyncs of the raft log.
    pub fsyncs: u64,
    /// Write batches (one per round of a shard).
    pub batches: u64,
    /// Raft entries written.
    pub entries: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Entries per fsync, to one decimal.
    pub entries_per_fsync: f64,
}

/// One shard of a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// Its index.
    pub shard: usize,
    /// Replicas it holds.
    pub regions: u64,
    /// Of which it leads.
    pub leaders: u64,
    /// Its own client port (0: none).
    pub port: u16,
    /// Requests other shards' connections forwarded to it.
    pub forwarded_requests: u64,
    /// Of its reads over the last second, the share its hot-key cache
    /// answered (none: no reads).
    pub cache_hit_ratio: Option<f64>,
    /// The keys it served most over the last second, hottest first
    /// (sampled: one request in 16).
    pub hot_keys: Vec<HotKey>,
}

/// A key one shard serves often.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HotKey {
    /// The key: its text if UTF-8, else `0x` and its bytes in hex.
    pub key: String,
    /// Its region.
    pub region: u64,
    /// Estimated requests per second (reads and writes).
    pub ops_per_sec: f64,
}

impl HotKey {
    /// The key as shown: text if UTF-8, else `0x` and hex.
    pub fn show(key: &[u8]) -> String {
        match std::str::from_utf8(key) {
            Ok(s) if !s.starts_with("0x") => s.to_string(),
            _ => {
                let mut out = String::with_capacity(2 + 2 * key.len());
                out.push_str("0x");
                for b in key {
                    out.push_str(&format!("{b:02x}"));
                }
                out
            }
        }
    }
}

/// A replica's raft role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Leads its region.
    Leader,
    /// Follows a leader (or has none yet).
    Follower,
    /// Campaigning.
    Candidate,
    /// Asking whether it could win a campaign.
    PreCandidate,
}

impl Role {
    /// The role's name as in the document.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre_candidate",
        }
    }
}

/// One replica of a region on the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionStatus {
    /// Region id.
    pub id: u64,
    /// First hash of its range.
    pub start_hash: u64,
    /// End of its range (exclusive; 0: the end of the hash space).
    pub end_hash: u64,
    /// Its epoch as applied here.
    pub epoch: EpochStatus,
    /// Its replicas as applied here.
    pub peers: Vec<PeerStatus>,
    /// The shard holding this replica.
    pub shard: usize,
    /// This replica's role.
    pub role: Role,
    /// The leader's node as this replica knows it (0: unknown).
    pub leader_node: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Entries in its raft log.
    pub log_entries: u64,
    /// Keys in its range, from the last size scan.
    pub keys: u64,
    /// Bytes of keys and records in its range, from the last size scan.
    pub bytes: u64,
    /// Reads served per second over the last second.
    pub read_ops_per_sec: f64,
    /// Writes answered per second over the last second.
    pub write_ops_per_sec: f64,
    /// The last consistency check this replica verified.
    pub check: Option<CheckStatus>,
}

impl RegionStatus {
    /// Requests per second (reads plus writes).
    pub fn ops_per_sec(&self) -> f64 {
        self.read_ops_per_sec + self.write_ops_per_sec
    }
}

/// A region's epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochStatus {
    /// Membership changes.
    pub conf_ver: u64,
    /// Splits.
    pub version: u64,
}

/// One replica of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Raft id.
    pub id: u64,
    /// Node holding it.
    pub node: u64,
}

/// A consistency check's outcome on one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Its digest equals the leader's.
    Match,
    /// It differs: the replica diverged.
    Mismatch,
    /// It computed none (it reached the index by snapshot or restarted).
    Skipped,
}

/// The last consistency check a replica verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStatus {
    /// Raft index of the check.
    pub index: u64,
    /// The outcome.
    pub verdict: Verdict,
    /// The leader's digest.
    pub leader: DigestStatus,
    /// This replica's digest, if it computed one.
    pub own: Option<DigestStatus>,
}

/// A digest of a region's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestStatus {
    /// Hash of records and sessions, in hex.
    #[serde(with = "hex_u64")]
    pub hash: u64,
    /// Records.
    pub keys: u64,
    /// Bytes of keys and records.
    pub bytes: u64,
}

impl std::fmt::Display for DigestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:016x} ({} keys, {} bytes)",
            self.hash, self.keys, self.bytes
        )
    }
}

/// A node as `corekv ctl status` reports it: its document, or why it gave
/// none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NodeReport {
    /// It answered.
    Up(Box<NodeStatus>),
    /// It did not.
    Unreachable {
        /// The node (0: only its address is known).
        node_id: u64,
        /// Where it was asked.
        client_addr: String,
        /// What went wrong.
        error: String,
    },
}

/// A region row of `corekv ctl regions`: one replica's view (the leader's
/// when a leader answered) and the node that reported it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionReport {
    /// The node whose status this row is from.
    pub reported_by: u64,
    /// Its replica's row.
    #[serde(flatten)]
    pub region: RegionStatus,
}

/// One row per region from `reports`: the leader's view when a leader
/// answered, else the first node's that holds it.
pub fn merge_regions(reports: &[NodeReport]) -> Vec<RegionReport> {
    let mut by_id = std::collections::BTreeMap::<u64, RegionReport>::new();
    for doc in reports.iter().filter_map(|r| match r {
        NodeReport::Up(d) => Some(d),
        NodeReport::Unreachable { .. } => None,
    }) {
        for r in &doc.regions {
            let better = match by_id.get(&r.id) {
                None => true,
                Some(old) => old.region.role != Role::Leader && r.role == Role::Leader,
            };
            if better {
                by_id.insert(
                    r.id,
                    RegionReport {
                        reported_by: doc.node_id,
                        region: r.clone(),
                    },
                );
            }
        }
    }
    by_id.into_values().collect()
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        u64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: u64, role: Role) -> RegionStatus {
        RegionStatus {
            id,
            start_hash: 0,
            end_hash: 0,
            epoch: EpochStatus {
                conf_ver: 1,
                version: 1,
            },
            peers: vec![PeerStatus { id: 1, node: 1 }],
            shard: 0,
            role,
            leader_node: 1,
            applied_index: 5,
            commit_index: 5,
            log_entries: 5,
            keys: 0,
            bytes: 0,
            read_ops_per_sec: 0.0,
            write_ops_per_sec: 0.0,
            check: Some(CheckStatus {
                index: 4,
                verdict: Verdict::Mismatch,
                leader: DigestStatus {
                    hash: 0xabc,
                    keys: 1,
                    bytes: 2,
                },
                own: None,
            }),
        }
    }

    fn node(id: u64, regions: Vec<RegionStatus>) -> NodeStatus {
        NodeStatus {
            node_id: id,
            client_addr: "127.0.0.1:7101".into(),
            peer_addr: "127.0.0.1:7201".into(),
            uptime_secs: 3,
            stopping: false,
            shard_count: 1,
            leaders: 0,
            known_nodes: vec![1, 2],
            leaving: vec![],
            log_writer: LogWriterStatus {
                fsyncs: 1,
                batches: 1,
                entries: 2,
                bytes: 3,
                entries_per_fsync: 2.0,
            },
            shards: vec![],
            regions,
            resp: None,
            auth: None,
        }
    }

    #[test]
    fn a_document_reads_back_as_written_and_a_missing_field_is_an_error() {
        let doc = node(1, vec![region(7, Role::PreCandidate)]);
        let text = serde_json::to_string(&doc).unwrap();
        assert!(text.contains(r#""role":"pre_candidate""#), "{text}");
        assert!(text.contains(r#""hash":"0000000000000abc""#), "{text}");
        assert_eq!(serde_json::from_str::<NodeStatus>(&text).unwrap(), doc);
        let renamed = text.replace("applied_index", "applied");
        assert!(serde_json::from_str::<NodeStatus>(&renamed).is_err());
    }

    #[test]
    fn merged_rows_prefer_the_leaders_view_and_skip_unreachable_nodes() {
        let reports = vec![
            NodeReport::Up(Box::new(node(1, vec![region(7, Role::Follower)]))),
            NodeReport::Unreachable {
                node_id: 3,
                client_addr: "127.0.0.1:7103".into(),
                error: "refused".into(),
            },
            NodeReport::Up(Box::new(node(
                2,
                vec![region(7, Role::Leader), region(8, Role::Follower)],
            ))),
        ];
        let rows = merge_regions(&reports);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].region.id, rows[0].reported_by), (7, 2));
        assert_eq!((rows[1].region.id, rows[1].reported_by), (8, 2));
        let text = serde_json::to_string(&reports).unwrap();
        let back: Vec<NodeReport> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, reports);
        let row = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!(row["reported_by"], 2);
        assert_eq!(row["id"], 7);
    }
}

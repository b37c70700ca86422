//! The shard's handlers for its client connections and raft transport: they
//! only queue work in the inbox and wake the round.

use super::*;

/// The client listener's view of a shard (weak: connection tasks must not
/// keep a stopped shard alive).
pub struct ShardClients(pub Weak<Shard>);

impl RequestHandler for ShardClients {
    fn on_requests(&self, conn: &Rc<ClientConn>, requests: Vec<Request>) {
        let Some(s) = self.0.upgrade() else {
            conn.close();
            return;
        };
        s.conns.insert(conn);
        let mut inbox = s.inbox.borrow_mut();
        for r in requests {
            let origin = Origin::Local {
                conn: conn.id,
                id: r.id,
            };
            inbox.requests.push_back((origin, r));
        }
        drop(inbox);
        s.wake.notify();
    }

    fn on_close(&self, conn_id: u64) {
        if let Some(s) = self.0.upgrade() {
            s.conns.remove(conn_id);
        }
    }
}

/// The raft transport's view of a shard (weak, as for clients).
pub struct ShardPeers(pub Weak<Shard>);

impl RaftHandler for ShardPeers {
    fn on_messages(&self, messages: Vec<RaftEnvelope>) {
        if let Some(s) = self.0.upgrade() {
            s.accept_raft(messages);
        }
    }

    fn on_peer(&self, node_id: u64, shard_count: u32, client_addr: String) {
        let Some(s) = self.0.upgrade() else { return };
        let info = NodeInfo {
            node_id,
            client_addr,
            shard_count,
        };
        let node = s.node.clone();
        if let Ok(mut nodes) = node.nodes.lock() {
            // The peer port is not authenticated: a greeting teaches the
            // address of a node not known yet (at bootstrap, before the meta
            // region answers), never replaces one the node knows (the meta
            // region's node list does that), so a forged greeting cannot
            // send this node's clients and its own logins elsewhere.
            let known = nodes
                .get(&node_id)
                .is_some_and(|n| !n.client_addr.is_empty());
            if !known {
                nodes.insert(node_id, info);
            }
        };
        // Greet back, so the node learns this one's client address too.
        if let Some(t) = s.transport.get() {
            t.greet(node_id);
        }
    }

    fn on_report(&self, messages: Vec<RaftEnvelope>, delivered: bool) {
        let Some(s) = self.0.upgrade() else { return };
        s.inbox
            .borrow_mut()
            .round
            .reports
            .extend(messages.into_iter().map(|m| (m, delivered)));
        s.wake.notify();
    }
}

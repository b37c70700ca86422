//! Sending a round's output: raft messages to nodes and shards, answers and
//! watch frames to connections, forwarded requests.

use super::*;

/// The message a failed channel send gives back.
pub(super) fn returned<T>(e: glommio::GlommioError<T>) -> Option<T> {
    match e {
        glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(m))
        | glommio::GlommioError::Closed(glommio::ResourceType::Channel(m)) => Some(m),
        _ => None,
    }
}

impl Shard {
    pub(super) fn route_raft(&self, env: RaftEnvelope, out: &mut Outbox) {
        out.raft.entry(env.to_node).or_default().push(env);
    }

    /// This node's router as of the last split this shard saw.
    pub(super) fn router(&self) -> Arc<crate::bootstrap::Router> {
        let version = self.node.router_version.load(Ordering::Acquire);
        let mut cached = self.router.borrow_mut();
        if cached.0 != version {
            *cached = (version, self.node.router());
        }
        cached.1.clone()
    }

    /// Routes incoming raft messages to the owning shard.
    pub(super) fn accept_raft(&self, envs: Vec<RaftEnvelope>) {
        let router = self.router();
        let mut local = Vec::new();
        let mut out = Outbox::default();
        for env in envs {
            // A region not (yet) routed here goes to the shard holding a
            // replica of it, else to the shard a new replica of it belongs
            // on, which creates it if the message calls for one (see
            // `Replicas::step`).
            let owner = match router.index_of(env.region_id) {
                Some(i) => router.get(i).1,
                None => match self.node.directory.get(env.region_id) {
                    Some(c) => c.owner,
                    None => crate::bootstrap::default_shard(env.region_id, self.node.cfg.shards),
                },
            };
            if owner == self.id {
                local.push(env);
            } else {
                out.raft_to_shards.entry(owner).or_default().push(env);
            }
        }
        if !local.is_empty() {
            self.inbox.borrow_mut().round.raft.extend(local);
            self.wake.notify();
        }
        self.flush(out);
    }

    /// Queues a watch frame on connection `conn` of this shard; a frame for
    /// a connection that is gone tells the watch to stop.
    pub(super) fn send_watch_frame(&self, conn: u64, response: &Response, link: &Arc<WatchLink>) {
        match self.conns.get(conn) {
            Some(c) => {
                c.send_watch(response, link);
            }
            None => link.close(),
        }
    }

    /// Sends a watch frame to the shard holding its connection. Frames to
    /// one shard leave in order (one sender task per shard at a time), so a
    /// watch's changes arrive in version order.
    pub(super) fn forward_watch_frame(&self, mesh: &Rc<Senders<ShardMsg>>, f: WatchFrame) {
        let shard = f.target.shard;
        let start = {
            let mut q = self.watch_out.borrow_mut();
            let (queue, running) = q.entry(shard).or_default();
            queue.push_back(f);
            !std::mem::replace(running, true)
        };
        if !start {
            return;
        }
        let (mesh, me) = (mesh.clone(), self.me.clone());
        glommio::spawn_local(async move {
            loop {
                let next = {
                    let Some(s) = me.upgrade() else { return };
                    let mut q = s.watch_out.borrow_mut();
                    let (queue, running) = q.entry(shard).or_default();
                    let next = queue.pop_front();
                    if next.is_none() {
                        *running = false;
                    }
                    next
                };
                let Some(f) = next else { return };
                let msg = ShardMsg::Watch {
                    conn: f.target.conn,
                    response: f.response,
                    link: f.link.clone(),
                };
                if mesh.send_to(shard, msg).await.is_err() {
                    f.link.close();
                }
            }
        })
        .detach();
    }

    pub(super) fn flush(&self, out: Outbox) {
        for (conn, resps) in out.local {
            if let Some(c) = self.conns.get(conn) {
                c.send(&resps);
            }
        }
        let mesh = self.mesh.get();
        for f in out.watch {
            if f.target.shard == self.id {
                self.send_watch_frame(f.target.conn, &f.response, &f.link);
            } else if let Some(m) = mesh {
                self.forward_watch_frame(m, f);
            }
        }
        if let Some(t) = self.transport.get() {
            for (to, envs) in out.raft {
                t.send(to, envs);
            }
        }
        for ((shard, conn), responses) in out.remote {
            if let Some(m) = mesh {
                let m = m.clone();
                // Answers must not be lost to a full queue: wait for room.
                glommio::spawn_local(async move {
                    let _ = m
                        .send_to(shard, ShardMsg::Responses { conn, responses })
                        .await;
                })
                .detach();
            }
        }
        for ((shard, conn), requests) in out.forward {
            let Some(m) = mesh else { continue };
            self.node.forwarded[self.id].fetch_add(requests.len() as u64, Ordering::Relaxed);
            if let Err(err) = m.try_send_to(
                shard,
                ShardMsg::Requests {
                    from_shard: self.id,
                    conn,
                    requests,
                },
            ) {
                if let Some(ShardMsg::Requests { requests, .. }) = returned(err) {
                    let resps: Vec<Response> = requests
                        .into_iter()
                        .map(|r| Response {
                            id: r.id,
                            result: Err(WireError::new(ErrorCode::Busy, "shard queue full")),
                        })
                        .collect();
                    if let Some(c) = self.conns.get(conn) {
                        c.send(&resps);
                    }
                }
            }
        }
        for (shard, envs) in out.raft_to_shards {
            if let Some(m) = mesh {
                // Raft tolerates loss: drop when the queue is full.
                let _ = m.try_send_to(shard, ShardMsg::Raft(envs));
            }
        }
    }
}

//! corekv clients: routing by the shared routing table, one connection per
//! node shard, requests batched into one frame per destination.

use super::*;

struct NodeConn {
    writer: futures_lite::io::WriteHalf<corekv_net::tls::Stream<TcpStream>>,
}

fn error_name(code: ErrorCode) -> String {
    format!("{code:?}")
}

type SentMap = Rc<RefCell<HashMap<u64, Sent, ahash::RandomState>>>;

async fn connect_corekv(
    state: Rc<ClientState>,
    addr: &str,
    sent: SentMap,
) -> anyhow::Result<NodeConn> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = match TLS.get() {
        None => corekv_net::tls::Stream::Plain(tcp),
        Some(tls) => {
            let name = corekv_net::tls::server_name_of(addr).map_err(anyhow::Error::msg)?;
            corekv_net::tls::connect(tls, name, tcp)
                .await
                .map_err(|e| anyhow::anyhow!("{addr}: TLS handshake: {e}"))?
        }
    };
    let login = LOGIN.get().map(|c| (c.user.as_str(), c.token.as_str()));
    stream.write_all(&encode_client_hello(login)).await?;
    stream.flush().await?;
    let (mut reader, writer) = futures_lite::io::split(stream);
    glommio::spawn_local(async move {
        let mut frames = FrameBuffer::new(64 << 20);
        let mut greeted = false;
        loop {
            let spare = frames.spare(256 * 1024);
            let n = reader.read(spare).await.unwrap_or(0);
            frames.filled(256 * 1024, n);
            if n == 0 {
                // Connection gone: everything in flight on it failed.
                let lost: Vec<Sent> = sent.borrow_mut().drain().map(|(_, s)| s).collect();
                let now = Instant::now();
                for s in lost {
                    state.complete(s, now, Err("connection lost"));
                }
                return;
            }
            let now = Instant::now();
            while let Ok(Some(body)) = frames.next_frame() {
                match decode_frame(body) {
                    Ok(Frame::Hello { .. }) => greeted = true,
                    Ok(Frame::Responses(rs)) if greeted => {
                        for r in rs {
                            let Some(s) = sent.borrow_mut().remove(&r.id) else {
                                continue;
                            };
                            match r.result {
                                Ok(Outcome::Write(corekv_engine::WriteOutcome::Written {
                                    ..
                                }))
                                | Ok(Outcome::Value(_)) => state.complete(s, now, Ok(())),
                                Ok(_) => state.complete(s, now, Err("unexpected outcome")),
                                Err(e) => {
                                    let mut routes = state.routes.borrow_mut();
                                    if let Some(i) = routes.position(s.region) {
                                        routes.on_error(i, &e);
                                    }
                                    drop(routes);
                                    state.complete(s, now, Err(&error_name(e.code())));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    })
    .detach();
    Ok(NodeConn { writer })
}

/// Where a batch goes: a node and one of its shard ports, or
/// [`NODE_PORT`] for the node's client address.
type Dest = (u64, u32);

/// The node's client address (any shard; the region's passes it on).
const NODE_PORT: u32 = u32::MAX;

fn has_port(ports: &HashMap<u64, Vec<u16>>, node: u64, shard: u32) -> bool {
    ports
        .get(&node)
        .and_then(|p| p.get(shard as usize))
        .is_some_and(|p| *p != 0)
}

fn dest_addr(
    nodes: &HashMap<u64, String>,
    ports: &HashMap<u64, Vec<u16>>,
    (node, shard): Dest,
) -> anyhow::Result<String> {
    let addr = nodes
        .get(&node)
        .ok_or_else(|| anyhow::anyhow!("no address for node {node}"))?;
    if shard == NODE_PORT {
        return Ok(addr.clone());
    }
    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
    Ok(format!("{host}:{}", ports[&node][shard as usize]))
}

pub(super) async fn corekv_client(state: Rc<ClientState>, index: usize) -> anyhow::Result<()> {
    let shared = state.shared.clone();
    let Target::Corekv {
        nodes, shard_ports, ..
    } = &shared.target
    else {
        unreachable!()
    };
    let spec = &shared.spec;
    let value = Bytes::from(vec![b'v'; spec.value_size]);
    let mut gen = Generator::new(&shared, index);
    let mut conns: HashMap<Dest, NodeConn> = HashMap::new();
    // One map of requests in flight per connection.
    let mut sent: HashMap<Dest, SentMap> = HashMap::new();
    let mut next_id = 1u64;
    let mut batches: HashMap<Dest, Vec<Request>> = HashMap::new();
    let mut done = false;
    while !done {
        let now = Instant::now();
        if state.routes.borrow().is_stale() {
            // Rare (a split): a blocking reload is fine for a load generator.
            let endpoints: Vec<String> = nodes.values().cloned().collect();
            if let Ok(c) = corekv_net::Client::connect(client_config(endpoints)) {
                state.routes.borrow_mut().replace(c.routes().to_vec());
            }
        }
        // Borrowed while requests are built, never across an await.
        let turn = {
            let routes = state.routes.borrow();
            state.refill(&mut gen, now, |op| {
                let hash = shared.keys.hash(op.key);
                let Some(i) = routes.index(hash) else {
                    anyhow::bail!("no region covers key hash {hash:016x}");
                };
                let route = &routes[i];
                let follower_read =
                    op.kind == OpKind::Read && spec.consistency == Consistency::Follower;
                let dest = if follower_read {
                    // Follower reads spread over every replica of the region.
                    let n = route.region.peers[next_id as usize % route.region.peers.len()].node_id;
                    (n, NODE_PORT)
                } else if route.leader_node != 0 {
                    let shard = route
                        .leader_shard
                        .filter(|s| has_port(shard_ports, route.leader_node, *s));
                    (route.leader_node, shard.unwrap_or(NODE_PORT))
                } else {
                    (route.region.peers[0].node_id, NODE_PORT)
                };
                let k = shared.keys.name(op.key);
                let req = Request {
                    id: next_id,
                    region_id: route.region.id,
                    epoch: route.region.epoch,
                    op: match op.kind {
                        OpKind::Read => Op::Get {
                            key: k,
                            consistency: spec.consistency,
                        },
                        OpKind::Write => Op::Write(WriteRequest::Put {
                            key: k,
                            value: value.clone(),
                            ttl_ms: None,
                            condition: Condition::None,
                        }),
                    },
                    session: None,
                    system: false,
                };
                sent.entry(dest).or_default().borrow_mut().insert(
                    next_id,
                    Sent {
                        kind: op.kind,
                        at: op.intended,
                        region: route.region.id,
                        key: op.key,
                        attempt: op.attempt,
                    },
                );
                next_id += 1;
                batches.entry(dest).or_default().push(req);
                Ok(())
            })?
        };
        done = turn.done;
        for (dest, reqs) in batches.iter_mut() {
            if reqs.is_empty() {
                continue;
            }
            if !conns.contains_key(dest) {
                let addr = dest_addr(nodes, shard_ports, *dest)?;
                let c = connect_corekv(state.clone(), &addr, sent[dest].clone()).await?;
                conns.insert(*dest, c);
            }
            let frame = encode_requests(reqs);
            reqs.clear();
            let w = &mut conns.get_mut(dest).unwrap().writer;
            // The flush sends what TLS still holds (a no-op on plain TCP).
            let sent_ok = match w.write_all(&frame).await {
                Ok(()) => w.flush().await,
                e => e,
            };
            if let Err(e) = sent_ok {
                conns.remove(dest);
                return Err(anyhow::anyhow!("write to node {} ({dest:?}): {e}", dest.0));
            }
        }
        state.publish();
        if !done {
            wait(&state, turn.wake_at).await;
        }
    }
    drain(&state).await;
    state.publish();
    Ok(())
}

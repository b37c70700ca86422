//! Redis clients: RESP commands pipelined on one connection.

use super::*;

fn put_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn resp_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.push(b'*');
    put_decimal(out, parts.len());
    out.extend_from_slice(b"\r\n");
    for p in parts {
        out.push(b'$');
        put_decimal(out, p.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one RESP reply at the start of `buf`: (bytes used, was an error).
fn resp_reply(buf: &[u8]) -> Option<(usize, bool)> {
    let cr = buf.iter().position(|&b| b == b'\r')?;
    if buf.get(cr + 1)? != &b'\n' {
        return Some((cr + 1, true));
    }
    let line = &buf[..cr];
    match line.first()? {
        b'+' | b':' => Some((cr + 2, false)),
        b'-' => Some((cr + 2, true)),
        b'$' if line.get(1) == Some(&b'-') => Some((cr + 2, false)),
        b'$' => {
            let mut n = 0usize;
            for &d in &line[1..] {
                if !d.is_ascii_digit() {
                    return Some((cr + 2, true));
                }
                n = n * 10 + (d - b'0') as usize;
            }
            let total = cr + 2 + n + 2;
            (buf.len() >= total).then_some((total, false))
        }
        _ => Some((cr + 2, true)),
    }
}

pub(super) async fn redis_client(
    state: Rc<ClientState>,
    addr: String,
    index: usize,
) -> anyhow::Result<()> {
    let shared = state.shared.clone();
    let spec = &shared.spec;
    let stream = TcpStream::connect(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let queue: Rc<RefCell<VecDeque<Sent>>> = Rc::new(RefCell::new(VecDeque::new()));
    {
        let (state, queue) = (state.clone(), queue.clone());
        glommio::spawn_local(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(512 * 1024);
            let mut start = 0usize;
            let mut chunk = vec![0u8; 256 * 1024];
            loop {
                let n = reader.read(&mut chunk).await.unwrap_or(0);
                let now = Instant::now();
                if n == 0 {
                    let lost: Vec<Sent> = queue.borrow_mut().drain(..).collect();
                    for s in lost {
                        state.complete(s, now, Err("connection lost"));
                    }
                    return;
                }
                if start > 0 && start == buf.len() {
                    buf.clear();
                    start = 0;
                } else if start > 128 * 1024 {
                    buf.drain(..start);
                    start = 0;
                }
                buf.extend_from_slice(&chunk[..n]);
                let mut used = start;
                while let Some((len, is_err)) = resp_reply(&buf[used..]) {
                    used += len;
                    let Some(s) = queue.borrow_mut().pop_front() else {
                        continue;
                    };
                    let result = if is_err { Err("redis error") } else { Ok(()) };
                    state.complete(s, now, result);
                }
                start = used;
            }
        })
        .detach();
    }
    let value = vec![b'v'; spec.value_size];
    let mut gen = Generator::new(&shared, index);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut done = false;
    while !done {
        let now = Instant::now();
        let turn = state.refill(&mut gen, now, |op| {
            match op.kind {
                OpKind::Read => shared.keys.put_resp_get(op.key, &mut out),
                OpKind::Write => {
                    resp_command(&mut out, &[b"SET", &shared.keys.name(op.key), &value])
                }
            }
            queue.borrow_mut().push_back(Sent {
                kind: op.kind,
                at: op.intended,
                region: 0,
                key: op.key,
                attempt: op.attempt,
            });
            Ok(())
        })?;
        done = turn.done;
        if !out.is_empty() {
            writer.write_all(&out).await?;
            out.clear();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_parse() {
        assert_eq!(resp_reply(b"+OK\r\n"), Some((5, false)));
        assert_eq!(resp_reply(b"$-1\r\n"), Some((5, false)));
        assert_eq!(resp_reply(b"$3\r\nabc\r\n"), Some((9, false)));
        assert_eq!(resp_reply(b"$3\r\nab"), None);
        assert_eq!(resp_reply(b"-ERR x\r\n"), Some((8, true)));
        let mut v = Vec::new();
        resp_command(&mut v, &[b"GET", b"k"]);
        assert_eq!(v, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}

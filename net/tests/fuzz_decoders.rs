//! Property-based fuzzing of everything that decodes bytes from the network:
//! client frames, raft transport frames, the frame splitter and fault files.
//! Any input must give a value or an error, never a panic; valid frames must
//! decode to what was encoded. A crash found here becomes a named case in
//! `regressions` below.

use bytes::Bytes;
use corekv_engine::{Condition, Consistency, Epoch, SessionTag, WriteRequest};
use corekv_net::faults::FaultRules;
use corekv_net::frame::FrameBuffer;
use corekv_net::message::{decode_frame, decode_frame_shared, encode_requests, Frame, Op, Request};
use corekv_net::peer_codec::{decode_peer_frame, encode_peer_hello};
use proptest::prelude::*;

fn bytes_up_to(n: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..n).prop_map(Bytes::from)
}

fn consistency() -> impl Strategy<Value = Consistency> {
    prop_oneof![
        Just(Consistency::Linearizable),
        Just(Consistency::Lease),
        Just(Consistency::Stale),
        Just(Consistency::Follower)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (bytes_up_to(64), consistency())
            .prop_map(|(key, consistency)| Op::Get { key, consistency }),
        (
            bytes_up_to(64),
            bytes_up_to(256),
            proptest::option::of(1u64..1 << 40),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(key, value, ttl_ms, v)| Op::Write(WriteRequest::Put {
                key,
                value,
                ttl_ms,
                condition: v.map_or(Condition::None, Condition::IfVersion),
            })),
        (bytes_up_to(64), proptest::option::of(any::<u64>()))
            .prop_map(|(key, if_version)| Op::Write(WriteRequest::Delete { key, if_version })),
        (bytes_up_to(64), any::<i64>())
            .prop_map(|(key, delta)| Op::Write(WriteRequest::Incr { key, delta })),
        (
            bytes_up_to(64),
            proptest::option::of(bytes_up_to(32)),
            bytes_up_to(64)
        )
            .prop_map(|(key, expected, value)| Op::Write(WriteRequest::Cas {
                key,
                expected,
                value,
                ttl_ms: None,
            })),
        Just(Op::Routes),
        Just(Op::Status),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<(u64, u64)>(),
        op(),
        proptest::option::of(any::<(u64, u64)>()),
    )
        .prop_map(
            |(id, region_id, (conf_ver, version), op, session)| Request {
                id,
                region_id,
                epoch: Epoch { conf_ver, version },
                op,
                session: session.map(|(client_id, seq)| SessionTag {
                    client_id,
                    seq,
                    retry: seq % 2 == 0,
                }),
                system: false,
            },
        )
}

/// Splits whole frames (length prefix included) into bodies.
fn bodies(wire: &[u8], max: usize) -> Vec<Result<Vec<u8>, String>> {
    let mut fb = FrameBuffer::new(max);
    let spare = fb.spare(wire.len().max(1));
    let asked = spare.len();
    spare[..wire.len()].copy_from_slice(wire);
    fb.filled(asked, wire.len());
    let mut out = Vec::new();
    loop {
        match fb.next_frame() {
            Ok(Some(b)) => out.push(Ok(b.to_vec())),
            Ok(None) => return out,
            Err(e) => {
                out.push(Err(e.to_string()));
                return out;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_client_decoder(
        body in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let _ = decode_frame(&body);
        let _ = decode_frame_shared(&Bytes::from(body));
    }

    #[test]
    fn request_frames_round_trip(reqs in proptest::collection::vec(request(), 1..16)) {
        let wire = encode_requests(&reqs);
        let got = bodies(&wire, 1 << 20);
        prop_assert_eq!(got.len(), 1);
        let body = got[0].clone().unwrap();
        prop_assert_eq!(decode_frame(&body).unwrap(), Frame::Requests(reqs.clone()));
        prop_assert_eq!(decode_frame_shared(&Bytes::from(body)).unwrap(), Frame::Requests(reqs));
    }

    #[test]
    fn corrupted_request_frames_never_panic(
        reqs in proptest::collection::vec(request(), 1..8),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..16),
    ) {
        let wire = encode_requests(&reqs);
        let mut body = bodies(&wire, 1 << 20)[0].clone().unwrap();
        for (at, b) in flips {
            let i = at % body.len();
            body[i] ^= b;
        }
        let _ = decode_frame(&body);
        let _ = decode_frame_shared(&Bytes::from(body));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_transport_decoder(
        body in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let _ = decode_peer_frame(&body);
    }

    #[test]
    fn corrupted_transport_frames_never_panic(
        node in any::<u64>(),
        addr in "[0-9.:]{0,40}",
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        kind in prop_oneof![Just(1u8), Just(2u8)],
        tail in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let wire = encode_peer_hello(node, 2, &addr);
        let mut body = bodies(&wire, 1 << 20)[0].clone().unwrap();
        for (at, b) in flips {
            let i = at % body.len();
            body[i] ^= b;
        }
        let _ = decode_peer_frame(&body);
        // A hello or raft batch with garbage after the kind byte.
        let mut batch = vec![kind];
        batch.extend_from_slice(&tail);
        let _ = decode_peer_frame(&batch);
    }

    #[test]
    fn the_frame_splitter_never_panics_and_bounds_frames(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
        max in 1usize..4096,
    ) {
        let mut fb = FrameBuffer::new(max);
        'outer: for c in chunks {
            let spare = fb.spare(c.len().max(1));
            let asked = spare.len();
            spare[..c.len()].copy_from_slice(&c);
            fb.filled(asked, c.len());
            loop {
                match fb.next_frame() {
                    Ok(Some(body)) => prop_assert!(body.len() <= max),
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
    }

    #[test]
    fn fault_files_never_panic_the_parser(text in "\\PC{0,200}") {
        let _ = FaultRules::parse(&text);
    }

    #[test]
    fn fault_rules_parse_what_they_say(
        isolate in any::<bool>(),
        drop_to in proptest::collection::btree_set(1u64..100, 0..4),
        loss in 0u32..=100,
        delay in 0u64..10_000,
    ) {
        let mut text = String::new();
        if isolate {
            text.push_str("isolate\n");
        }
        for n in &drop_to {
            text.push_str(&format!("drop-to {n}  # comment\n"));
        }
        text.push_str(&format!("loss {}\n\ndelay-ms {delay}\n", f64::from(loss) / 100.0));
        let r = FaultRules::parse(&text).unwrap();
        prop_assert_eq!(r.isolate, isolate);
        prop_assert_eq!(r.drop_to, drop_to);
        prop_assert_eq!(r.delay_ms, delay);
        prop_assert!((r.loss - f64::from(loss) / 100.0).abs() < 1e-9);
    }
}

mod regressions {
    use super::*;

    #[test]
    fn empty_and_tiny_bodies_are_errors() {
        for body in [&[][..], &[0], &[1], &[2], &[0xff; 3]] {
            assert!(decode_frame(body).is_err(), "{body:?}");
        }
        assert!(decode_peer_frame(&[]).is_err());
        assert!(decode_peer_frame(&[2, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn a_length_prefix_over_the_limit_is_an_error() {
        let mut wire = (1u32 << 30).to_le_bytes().to_vec();
        wire.extend_from_slice(&[0; 16]);
        let got = bodies(&wire, 1 << 20);
        assert!(matches!(got.last(), Some(Err(_))), "{got:?}");
    }
}

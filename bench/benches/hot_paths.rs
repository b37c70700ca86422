//! Micro-benchmarks of the hot primitives, each beside a simple baseline
//! measured in the same run:
//! - frame codec: flatbuffers request batch encode/decode vs a hand-rolled
//!   length-prefixed encoding of the same fields;
//! - read path in one region: the hot-key cache vs a RocksDB point get;
//! - write batch build: a `LogBatch` append of raft entries vs raw puts.
//!
//! `cargo bench -p corekv-bench --bench hot_paths`

use bytes::Bytes;
use corekv_engine::cache::ReadCache;
use corekv_engine::db::{self, DbConfig, LogBatch};
use corekv_engine::storage::RegionStorage;
use corekv_engine::{
    apply, route_hash, Consistency, Epoch, PeerMeta, PeerRole, Region, ValueRecord,
};
use corekv_net::message::{decode_frame, decode_frame_shared, encode_requests, Op, Request};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use raft::eraftpb::Entry;

fn requests(n: u64) -> Vec<Request> {
    (0..n)
        .map(|i| Request {
            id: i,
            region_id: 3,
            epoch: Epoch {
                conf_ver: 1,
                version: 1,
            },
            op: Op::Get {
                key: Bytes::from(format!("key:{i:08}")),
                consistency: Consistency::Linearizable,
            },
            session: None,
            system: false,
        })
        .collect()
}

/// The baseline codec: the same fields, hand-packed, no verification.
fn manual_encode(reqs: &[Request], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(reqs.len() as u32).to_le_bytes());
    for r in reqs {
        out.extend_from_slice(&r.id.to_le_bytes());
        out.extend_from_slice(&r.region_id.to_le_bytes());
        out.extend_from_slice(&r.epoch.conf_ver.to_le_bytes());
        out.extend_from_slice(&r.epoch.version.to_le_bytes());
        if let Op::Get { key, .. } = &r.op {
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
        }
    }
}

fn manual_decode(buf: &[u8]) -> usize {
    let n = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
    let mut at = 4;
    let mut keys = 0;
    for _ in 0..n {
        at += 32;
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        at += 4;
        keys += black_box(&buf[at..at + len]).len();
        at += len;
    }
    keys
}

fn frame_codec(c: &mut Criterion) {
    let reqs = requests(64);
    let mut g = c.benchmark_group("frame_codec");
    g.throughput(Throughput::Elements(64));
    g.bench_function("flatbuffers_encode_64", |b| {
        b.iter(|| encode_requests(black_box(&reqs)))
    });
    let mut buf = Vec::new();
    g.bench_function("baseline_manual_encode_64", |b| {
        b.iter(|| manual_encode(black_box(&reqs), &mut buf))
    });
    let framed = encode_requests(&reqs);
    g.bench_function("flatbuffers_decode_64", |b| {
        b.iter(|| decode_frame(black_box(&framed[4..])).unwrap())
    });
    let shared = Bytes::copy_from_slice(&framed[4..]);
    g.bench_function("flatbuffers_decode_shared_64", |b| {
        b.iter(|| decode_frame_shared(black_box(&shared)).unwrap())
    });
    manual_encode(&reqs, &mut buf);
    g.bench_function("baseline_manual_decode_64", |b| {
        b.iter(|| manual_decode(black_box(&buf)))
    });
    g.finish();
}

fn region() -> Region {
    Region {
        id: 1,
        start_hash: 0,
        end_hash: 0,
        epoch: Epoch::default(),
        peers: vec![PeerMeta {
            id: 1001,
            node_id: 1,
            role: PeerRole::Voter,
        }],
    }
}

fn read_path(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = db::open(dir.path(), &DbConfig::default()).unwrap();
    let keys: Vec<Bytes> = (0..10_000)
        .map(|i| Bytes::from(format!("key:{i}")))
        .collect();
    let mut wb = rocksdb::WriteBatch::default();
    let mut cache = ReadCache::new(64 << 20);
    for (i, k) in keys.iter().enumerate() {
        let rec = ValueRecord {
            version: i as u64 + 6,
            expire_at_ms: 0,
            value: Bytes::from(vec![b'v'; 64]),
        };
        wb.put_cf(
            db::cf(&db, corekv_engine::keys::CF_DATA),
            corekv_engine::keys::data_key(route_hash(k), k),
            rec.encode(),
        );
        cache.put(k.clone(), Some(rec));
    }
    db::write(&db, wb, false).unwrap();
    db.flush_cf(db::cf(&db, corekv_engine::keys::CF_DATA))
        .unwrap();
    let mut g = c.benchmark_group("read_path");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("cache_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            cache.get(black_box(&keys[i]))
        })
    });
    g.bench_function("baseline_rocksdb_get", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            apply::load(&db, black_box(&keys[i])).unwrap()
        })
    });
    g.finish();
}

fn write_batch(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = db::open(dir.path(), &DbConfig::default()).unwrap();
    let mut boot = LogBatch::default();
    RegionStorage::bootstrap(&region(), &db, &mut boot).unwrap();
    db::write(&db, boot.inner, true).unwrap();
    let entries: Vec<Entry> = (6..70)
        .map(|i| Entry {
            index: i,
            term: 6,
            data: Bytes::from(vec![b'e'; 100]),
            ..Default::default()
        })
        .collect();
    let mut g = c.benchmark_group("write_batch");
    g.throughput(Throughput::Elements(entries.len() as u64));
    g.bench_function("log_batch_append_64", |b| {
        b.iter_batched(
            || RegionStorage::open(db.clone(), 1, 1024).unwrap(),
            |mut s| {
                let mut batch = LogBatch::default();
                s.append(black_box(&entries), &mut batch).unwrap();
                batch
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("baseline_raw_puts_64", |b| {
        b.iter(|| {
            let mut wb = rocksdb::WriteBatch::default();
            for e in &entries {
                wb.put(e.index.to_be_bytes(), &e.data);
            }
            wb
        })
    });
    g.finish();
}

criterion_group!(benches, frame_codec, read_path, write_batch);
criterion_main!(benches);

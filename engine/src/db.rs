//! The node's one RocksDB: opening it with its column families and tuning, and
//! the write batch every region of a shard adds its output to.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, WriteOptions, DB};

use crate::error::{Error, Result};
use crate::keys::{CF_DATA, CF_HISTORY, CF_META, CF_RAFT};

/// Shared handle to the node's database. Every shard holds a clone.
pub type Db = Arc<DB>;

/// RocksDB settings of a node.
#[derive(Clone, Debug)]
pub struct DbConfig {
    /// Shared block cache for the data CF, in bytes. Default 256 MiB.
    pub block_cache_bytes: usize,
    /// Memtable size of the raft and data column families, in bytes. Small
    /// memtables keep skiplist inserts and lookups cheap. Default 16 MiB.
    pub write_buffer_bytes: usize,
    /// Bloom filter bits per key in the data CF. Default 10.
    pub bloom_bits_per_key: f64,
    /// Background flush and compaction threads. Default 2.
    pub background_jobs: i32,
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig {
            block_cache_bytes: 256 << 20,
            write_buffer_bytes: 16 << 20,
            bloom_bits_per_key: 10.0,
            background_jobs: 2,
        }
    }
}

/// Opens (creating if missing) the database at `path` with every column family.
pub fn open(path: &Path, cfg: &DbConfig) -> Result<Db> {
    Ok(open_with_options(path, cfg)?.0)
}

/// Like [`open`], also returning the DB options, whose statistics (block cache
/// hits and misses, ...) a node reports as metrics.
pub fn open_with_options(path: &Path, cfg: &DbConfig) -> Result<(Db, Options)> {
    let mut opts = Options::default();
    opts.enable_statistics();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(cfg.background_jobs);
    opts.set_bytes_per_sync(1 << 20);
    // The raft log is synced by the log writer; RocksDB must not lose a synced
    // write. A crash (SIGKILL, power loss) may leave the last WAL record torn:
    // that record was never synced (the log writer syncs after whole
    // batches), so nothing acknowledged depends on it, and it is dropped. A
    // damaged record anywhere before the tail is corruption of synced data:
    // the node refuses to open.
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);

    let cache = Cache::new_lru_cache(cfg.block_cache_bytes);

    let mut raft_opts = Options::default();
    raft_opts.set_write_buffer_size(cfg.write_buffer_bytes);
    raft_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);

    let mut meta_opts = Options::default();
    meta_opts.set_write_buffer_size(cfg.write_buffer_bytes.min(4 << 20));

    let mut data_block = BlockBasedOptions::default();
    data_block.set_block_cache(&cache);
    data_block.set_bloom_filter(cfg.bloom_bits_per_key, false);
    data_block.set_cache_index_and_filter_blocks(true);
    data_block.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut data_opts = Options::default();
    data_opts.set_write_buffer_size(cfg.write_buffer_bytes);
    data_opts.set_block_based_table_factory(&data_block);
    data_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    data_opts.set_memtable_whole_key_filtering(true);
    data_opts.set_memtable_prefix_bloom_ratio(0.1);

    // Written once per applied write, read by catching-up watchers, pruned
    // by range: half-size memtables, compressed.
    let mut history_opts = Options::default();
    history_opts.set_write_buffer_size(cfg.write_buffer_bytes / 2);
    history_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);

    let cfs = vec![
        ColumnFamilyDescriptor::new(CF_RAFT, raft_opts),
        ColumnFamilyDescriptor::new(CF_META, meta_opts),
        ColumnFamilyDescriptor::new(CF_DATA, data_opts),
        ColumnFamilyDescriptor::new(CF_HISTORY, history_opts),
    ];
    let db = DB::open_cf_descriptors(&opts, path, cfs)?;
    Ok((Arc::new(db), opts))
}

/// Looks up a column family the engine created at open.
pub fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .unwrap_or_else(|| panic!("column family {name} was created at open"))
}

/// One atomic RocksDB write gathering the output of many regions, with counters
/// of what it carries. The caller decides when to write it and whether to sync.
#[derive(Default)]
pub struct LogBatch {
    /// The RocksDB batch.
    pub inner: rocksdb::WriteBatch,
    /// Raft log entries appended.
    pub entries: u64,
    /// Bytes of those entries.
    pub entry_bytes: u64,
    /// True when something in it must be synced before raft is told it is
    /// persisted (entries, a vote, a snapshot).
    pub must_sync: bool,
}

impl LogBatch {
    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Bytes of the encoded batch.
    pub fn size_in_bytes(&self) -> usize {
        self.inner.size_in_bytes()
    }
}

/// Writes a batch, syncing the WAL first if `sync`. A failure here is fatal for
/// the node: the caller must stop rather than acknowledge anything.
pub fn write(db: &DB, batch: rocksdb::WriteBatch, sync: bool) -> Result<()> {
    let mut wo = WriteOptions::default();
    wo.set_sync(sync);
    db.write_opt(batch, &wo).map_err(Error::from)
}

/// Syncs the WAL: every write made before the call is durable once it
/// returns. Unlike a synced write, it does not hold RocksDB's write queue
/// while the disk syncs, so other writers (the shards' apply batches) go on
/// meanwhile. A failure is fatal for the node, as for [`write`].
pub fn sync_wal(db: &DB) -> Result<()> {
    db.flush_wal(true).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocksdb::statistics::Ticker;

    /// Copies the files of an open database: what a crash at this moment
    /// leaves on disk (every write so far has reached the file system).
    fn crash_image(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }

    /// The newest WAL file of a database directory.
    fn newest_wal(dir: &Path) -> std::path::PathBuf {
        let mut logs: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        logs.pop().expect("a WAL file")
    }

    #[test]
    fn a_torn_wal_tail_is_dropped_and_corruption_before_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let db = open(&live, &DbConfig::default()).unwrap();
        let put = |k: &[u8], v: &[u8], sync: bool| {
            let mut b = rocksdb::WriteBatch::default();
            b.put_cf(cf(&db, CF_RAFT), k, v);
            write(&db, b, sync).unwrap();
        };
        put(b"synced", b"1", true);
        // An unsynced write of a large record, as an apply batch of big
        // values is, torn by a crash in the middle of it.
        put(b"torn", &vec![7u8; 300 << 10], false);
        let torn = dir.path().join("torn");
        crash_image(&live, &torn);
        let wal = newest_wal(&torn);
        let len = std::fs::metadata(&wal).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .unwrap()
            .set_len(len - 1000)
            .unwrap();
        let reopened = open(&torn, &DbConfig::default())
            .expect("a torn tail of unsynced writes does not keep the node from starting");
        let raft = cf(&reopened, CF_RAFT);
        assert_eq!(
            reopened.get_cf(raft, b"synced").unwrap(),
            Some(b"1".to_vec())
        );
        assert_eq!(reopened.get_cf(raft, b"torn").unwrap(), None);
        drop(reopened);

        // A damaged byte inside the first (synced) record is not a torn
        // tail: opening fails rather than silently dropping synced data.
        let damaged = dir.path().join("damaged");
        crash_image(&live, &damaged);
        let wal = newest_wal(&damaged);
        let mut bytes = std::fs::read(&wal).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&wal, bytes).unwrap();
        let Err(err) = open(&damaged, &DbConfig::default()) else {
            panic!("a damaged synced record was accepted");
        };
        assert!(
            err.to_string().to_lowercase().contains("corrupt"),
            "unexpected error: {err}"
        );
        drop(db);
    }

    #[test]
    fn a_wal_sync_after_unsynced_writes_syncs_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let (db, opts) = open_with_options(dir.path(), &DbConfig::default()).unwrap();
        let synced = || opts.get_ticker_count(Ticker::WalFileSynced);
        let before = synced();
        for i in 0..3u8 {
            let mut b = rocksdb::WriteBatch::default();
            b.put_cf(cf(&db, CF_RAFT), [i], [i]);
            write(&db, b, false).unwrap();
        }
        assert_eq!(synced(), before, "unsynced writes do not sync");
        sync_wal(&db).unwrap();
        assert_eq!(synced(), before + 1, "one sync covers them all");
        drop(db);
        let db = open(dir.path(), &DbConfig::default()).unwrap();
        for i in 0..3u8 {
            assert_eq!(db.get_cf(cf(&db, CF_RAFT), [i]).unwrap(), Some(vec![i]));
        }
    }
}

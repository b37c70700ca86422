//! The backup format: what `corekv ctl backup DIR` writes and
//! `corekv-server --restore DIR` reads.
//!
//! ```text
//! DIR/region-ID.snap        one region at one applied index (the payload
//!                           of corekv_types::snapshot::SnapshotData)
//! DIR/manifest.json         written last: the regions, their ranges,
//!                           applied indexes, sizes and SHA-256 checksums
//! DIR/manifest.json.sha256  the manifest's own SHA-256
//! ```
//!
//! A directory without both manifest files is a partial backup; a file
//! whose size or checksum differs from the manifest, a payload that does
//! not decode or does not match its entry, or regions that leave part of
//! the hash space out are refused with an error that names what is wrong.

use std::io::Write;
use std::path::{Path, PathBuf};

use corekv_types::snapshot::SnapshotData;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::RegionBackup;

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The file holding the manifest's SHA-256.
pub const MANIFEST_SUM: &str = "manifest.json.sha256";
/// The format this code writes and reads.
pub const FORMAT: u32 = 1;

/// What a backup holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// When the backup began (Unix ms).
    pub started_unix_ms: u64,
    /// When it was complete (Unix ms).
    pub finished_unix_ms: u64,
    /// The data regions, in hash order, covering the hash space below
    /// [`corekv_types::META_HASH`].
    pub regions: Vec<RegionEntry>,
}

/// One region of a backup.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegionEntry {
    /// Region id.
    pub id: u64,
    /// First hash.
    pub start_hash: u64,
    /// Hash past the last.
    pub end_hash: u64,
    /// The region's epoch version when it was backed up.
    pub epoch_version: u64,
    /// The applied index the region's data is at.
    pub applied_index: u64,
    /// Records (live and expired keys) in it.
    pub keys: u64,
    /// The file, in the backup directory.
    pub file: String,
    /// The file's size.
    pub bytes: u64,
    /// The file's SHA-256, hex.
    pub sha256: String,
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Writes a backup into a directory, region by region; the manifest goes
/// last ([`Writer::finish`]).
pub struct Writer {
    dir: PathBuf,
    started_unix_ms: u64,
    regions: Vec<RegionEntry>,
}

impl Writer {
    /// Starts a backup in `dir`, created if missing; it must hold no
    /// earlier backup (a partial one is cleared).
    pub fn create(dir: &Path, started_unix_ms: u64) -> Result<Writer, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if dir.join(MANIFEST).exists() {
            return Err(format!(
                "{} holds a backup already: back up into a new directory",
                dir.display()
            ));
        }
        for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("region-") && name.ends_with(".snap") {
                std::fs::remove_file(entry.path())
                    .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            } else {
                return Err(format!(
                    "{} holds {name}, which is not part of a backup: back up into an empty \
                     directory",
                    dir.display()
                ));
            }
        }
        Ok(Writer {
            dir: dir.to_path_buf(),
            started_unix_ms,
            regions: Vec::new(),
        })
    }

    /// Writes one region's backup (replacing one of the same region).
    pub fn add(&mut self, b: &RegionBackup) -> Result<&RegionEntry, String> {
        let data = SnapshotData::decode(&b.bytes)
            .map_err(|e| format!("region {}: the backup does not decode: {e}", b.region_id))?;
        if data.region.id != b.region_id || data.applied_index != b.applied_index {
            return Err(format!(
                "region {}: the backup holds region {} at {}, not at {}",
                b.region_id, data.region.id, data.applied_index, b.applied_index
            ));
        }
        let file = format!("region-{}.snap", b.region_id);
        write_synced(&self.dir.join(&file), &b.bytes)?;
        self.regions.retain(|r| r.id != b.region_id);
        self.regions.push(RegionEntry {
            id: b.region_id,
            start_hash: data.region.start_hash,
            end_hash: data.region.end_hash,
            epoch_version: data.region.epoch.version,
            applied_index: b.applied_index,
            keys: data.pairs.len() as u64,
            file,
            bytes: b.bytes.len() as u64,
            sha256: sha256_hex(&b.bytes),
        });
        Ok(self.regions.last().expect("just added"))
    }

    /// The regions written so far, in hash order.
    pub fn regions(&self) -> Vec<RegionEntry> {
        let mut r = self.regions.clone();
        r.sort_by_key(|r| r.start_hash);
        r
    }

    /// Drops the region `id` (its file stays until replaced or finished).
    pub fn remove(&mut self, id: u64) {
        self.regions.retain(|r| r.id != id);
        let _ = std::fs::remove_file(self.dir.join(format!("region-{id}.snap")));
    }

    /// Checks that the regions cover the hash space, then writes the
    /// manifest (the backup is complete once it is there).
    pub fn finish(self, finished_unix_ms: u64) -> Result<Manifest, String> {
        let regions = self.regions();
        check_coverage(&regions)?;
        let manifest = Manifest {
            format: FORMAT,
            started_unix_ms: self.started_unix_ms,
            finished_unix_ms,
            regions,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        sync_dir(&self.dir)?;
        let tmp = self.dir.join(format!("{MANIFEST}.tmp"));
        write_synced(&tmp, &text)?;
        write_synced(
            &self.dir.join(MANIFEST_SUM),
            format!("{}  {MANIFEST}\n", sha256_hex(&text)).as_bytes(),
        )?;
        std::fs::rename(&tmp, self.dir.join(MANIFEST))
            .map_err(|e| format!("{}: {e}", self.dir.display()))?;
        sync_dir(&self.dir)?;
        Ok(manifest)
    }
}

/// Checks that `regions` (in hash order) cover `[0, META_HASH)` with no
/// gap or overlap.
pub fn check_coverage(regions: &[RegionEntry]) -> Result<(), String> {
    let mut next = 0u64;
    for r in regions {
        if r.start_hash != next {
            return Err(if r.start_hash > next {
                format!(
                    "no region covers hashes {next:#x}..{:#x} (a split during the backup?)",
                    r.start_hash
                )
            } else {
                format!("region {} overlaps the region before it", r.id)
            });
        }
        if r.end_hash <= r.start_hash {
            return Err(format!("region {} has an empty range", r.id));
        }
        next = r.end_hash;
    }
    if next != corekv_types::META_HASH {
        return Err(format!(
            "no region covers hashes from {next:#x} to the end of the hash space"
        ));
    }
    Ok(())
}

/// A backup read back and checked: its manifest, and each region's
/// payload in manifest order.
pub struct Backup {
    /// The manifest.
    pub manifest: Manifest,
    /// Each region's data.
    pub regions: Vec<SnapshotData>,
}

/// Reads and checks the backup in `dir` (see the module's documentation
/// for what is refused).
pub fn read(dir: &Path) -> Result<Backup, String> {
    let bad = |what: String| format!("backup {}: {what}", dir.display());
    let text = std::fs::read(dir.join(MANIFEST)).map_err(|e| {
        bad(format!(
            "no {MANIFEST} ({e}): not a backup, or one that did not finish"
        ))
    })?;
    let sum = std::fs::read_to_string(dir.join(MANIFEST_SUM))
        .map_err(|e| bad(format!("no {MANIFEST_SUM} ({e}): an incomplete backup")))?;
    let want = sum.split_whitespace().next().unwrap_or_default();
    if sha256_hex(&text) != want {
        return Err(bad(format!(
            "{MANIFEST} does not match its checksum in {MANIFEST_SUM}: it is damaged"
        )));
    }
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("{MANIFEST} does not parse: {e}")))?;
    if manifest.format != FORMAT {
        return Err(bad(format!(
            "format {} (this version reads format {FORMAT})",
            manifest.format
        )));
    }
    check_coverage(&manifest.regions).map_err(bad)?;
    let mut regions = Vec::with_capacity(manifest.regions.len());
    for r in &manifest.regions {
        if r.file.contains('/') || r.file.contains('\\') || r.file.starts_with('.') {
            return Err(bad(format!("region {}: file name {:?}", r.id, r.file)));
        }
        let bytes = std::fs::read(dir.join(&r.file))
            .map_err(|e| bad(format!("region {}: {}: {e}", r.id, r.file)))?;
        if bytes.len() as u64 != r.bytes {
            return Err(bad(format!(
                "region {}: {} has {} bytes, the manifest says {}: it is damaged or truncated",
                r.id,
                r.file,
                bytes.len(),
                r.bytes
            )));
        }
        if sha256_hex(&bytes) != r.sha256 {
            return Err(bad(format!(
                "region {}: {} does not match its SHA-256 in the manifest: it is damaged",
                r.id, r.file
            )));
        }
        let data = SnapshotData::decode(&bytes)
            .map_err(|e| bad(format!("region {}: {}: {e}", r.id, r.file)))?;
        if (
            data.region.id,
            data.region.start_hash,
            data.region.end_hash,
            data.applied_index,
        ) != (r.id, r.start_hash, r.end_hash, r.applied_index)
        {
            return Err(bad(format!(
                "region {}: {} holds region {} [{:#x}, {:#x}) at {}, not what the manifest says",
                r.id,
                r.file,
                data.region.id,
                data.region.start_hash,
                data.region.end_hash,
                data.applied_index
            )));
        }
        regions.push(data);
    }
    Ok(Backup { manifest, regions })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, start_hash: u64, end_hash: u64) -> RegionEntry {
        RegionEntry {
            id,
            start_hash,
            end_hash,
            epoch_version: 1,
            applied_index: 5,
            keys: 0,
            file: format!("region-{id}.snap"),
            bytes: 0,
            sha256: String::new(),
        }
    }

    #[test]
    fn regions_must_cover_the_hash_space_once() {
        let m = corekv_types::META_HASH;
        assert!(check_coverage(&[entry(1, 0, 10), entry(2, 10, m)]).is_ok());
        let gap = check_coverage(&[entry(1, 0, 10), entry(2, 11, m)]).unwrap_err();
        assert!(gap.contains("no region covers"), "{gap}");
        let overlap = check_coverage(&[entry(1, 0, 10), entry(2, 9, m)]).unwrap_err();
        assert!(overlap.contains("overlaps"), "{overlap}");
        let short = check_coverage(&[entry(1, 0, 10)]).unwrap_err();
        assert!(short.contains("to the end"), "{short}");
        assert!(check_coverage(&[]).is_err());
    }

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

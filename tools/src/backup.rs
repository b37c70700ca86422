//! `corekv ctl backup DIR` and `corekv ctl verify-backup DIR`.
//!
//! A backup holds every data region at one applied index of its own,
//! written by its leader after a linearizable read of the region, so every
//! write acknowledged before the backup began is in it; regions are taken
//! one after another, so the whole is not one snapshot of the cluster (a
//! write acknowledged while the backup runs may be in it or not, per
//! region). A split while it runs is noticed (the regions written then
//! leave a gap or overlap) and the backup of the regions concerned is taken
//! again. The format and its checks: [`corekv_net::backup`].

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use corekv_net::backup::{self, Manifest, RegionEntry, Writer};
use corekv_net::Client;

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Backs every data region of the cluster up into `dir` (new or empty),
/// with progress on `progress` (a line per region, and per 64 MiB of a
/// large one). Returns the manifest.
pub fn backup(
    client: &mut Client,
    dir: &Path,
    progress: &mut dyn Write,
) -> anyhow::Result<Manifest> {
    let started = Instant::now();
    let mut writer = Writer::create(dir, now_unix_ms()).map_err(anyhow::Error::msg)?;
    client.refresh()?;
    let mut passes = 0;
    loop {
        passes += 1;
        // The regions to take: those of the routing table not written yet
        // with the range they have now.
        let written = writer.regions();
        let todo: Vec<_> = client
            .routes()
            .iter()
            .filter(|r| !r.region.is_meta())
            .filter(|r| {
                !written.iter().any(|w| {
                    (w.id, w.start_hash, w.end_hash)
                        == (r.region.id, r.region.start_hash, r.region.end_hash)
                })
            })
            .map(|r| r.region.id)
            .collect();
        let total = todo.len();
        for (n, id) in todo.into_iter().enumerate() {
            let mut next_report = 64u64 << 20;
            let b = client.backup_region(id, |done, all| {
                if done >= next_report && done < all {
                    let _ = writeln!(
                        progress,
                        "  region {id}: {} of {} MiB",
                        done >> 20,
                        all >> 20
                    );
                    next_report += 64 << 20;
                }
            })?;
            let e = writer.add(&b).map_err(anyhow::Error::msg)?;
            let _ = writeln!(
                progress,
                "region {id} ({}/{total}): {} keys, {} bytes at index {}",
                n + 1,
                e.keys,
                e.bytes,
                e.applied_index
            );
        }
        // Regions a split changed since they were written give way to the
        // regions they became.
        client.refresh()?;
        let routes: Vec<_> = client.routes().to_vec();
        let stale: Vec<RegionEntry> = writer
            .regions()
            .into_iter()
            .filter(|w| {
                !routes.iter().any(|r| {
                    (w.id, w.start_hash, w.end_hash)
                        == (r.region.id, r.region.start_hash, r.region.end_hash)
                })
            })
            .collect();
        if backup::check_coverage(&writer.regions()).is_ok() {
            break;
        }
        anyhow::ensure!(
            passes < 5,
            "the regions kept changing while they were backed up ({passes} passes): {}",
            backup::check_coverage(&writer.regions()).unwrap_err()
        );
        for w in stale {
            let _ = writeln!(
                progress,
                "region {} changed while the backup ran (a split): taking it again",
                w.id
            );
            writer.remove(w.id);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let manifest = writer.finish(now_unix_ms()).map_err(anyhow::Error::msg)?;
    let _ = writeln!(
        progress,
        "backup of {} regions, {} keys, {} bytes written to {} in {:.1?}",
        manifest.regions.len(),
        manifest.regions.iter().map(|r| r.keys).sum::<u64>(),
        manifest.regions.iter().map(|r| r.bytes).sum::<u64>(),
        dir.display(),
        started.elapsed()
    );
    Ok(manifest)
}

/// Reads and checks the backup in `dir` as a restore would; returns a
/// summary.
pub fn verify(dir: &Path) -> anyhow::Result<String> {
    let b = backup::read(dir).map_err(anyhow::Error::msg)?;
    let mut out = format!(
        "backup {}: format {}, {} regions, complete and intact\n",
        dir.display(),
        b.manifest.format,
        b.manifest.regions.len()
    );
    for r in &b.manifest.regions {
        out.push_str(&format!(
            "  region {:<6} {:016x}-{:016x} index {:<10} {:>9} keys {:>12} bytes\n",
            r.id, r.start_hash, r.end_hash, r.applied_index, r.keys, r.bytes
        ));
    }
    Ok(out)
}

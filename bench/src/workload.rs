//! What the load generator asks for: the operation mix and which keys.

use rand::rngs::SmallRng;
use rand::Rng;
use rand_distr::{Distribution, Zipf};

/// Share of reads in the mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// 100% reads.
    ReadOnly,
    /// 95% reads, 5% writes.
    ReadHeavy,
    /// 50% / 50%.
    Mixed,
    /// 100% writes.
    WriteOnly,
}

impl Mix {
    /// Parses `read-only|read-heavy|mixed|write-only`.
    pub fn parse(s: &str) -> Result<Mix, String> {
        Ok(match s {
            "read-only" => Mix::ReadOnly,
            "read-heavy" => Mix::ReadHeavy,
            "mixed" => Mix::Mixed,
            "write-only" => Mix::WriteOnly,
            _ => {
                return Err(format!(
                    "unknown workload {s:?} (read-only, read-heavy, mixed, write-only)"
                ))
            }
        })
    }

    /// Name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mix::ReadOnly => "read-only",
            Mix::ReadHeavy => "read-heavy",
            Mix::Mixed => "mixed",
            Mix::WriteOnly => "write-only",
        }
    }

    /// Reads per 100 operations.
    pub fn read_percent(self) -> u32 {
        match self {
            Mix::ReadOnly => 100,
            Mix::ReadHeavy => 95,
            Mix::Mixed => 50,
            Mix::WriteOnly => 0,
        }
    }
}

/// How keys are chosen.
#[derive(Clone, Debug)]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Zipfian with exponent `theta` (YCSB's default is 0.99).
    Zipfian(f64),
    /// 90% of operations on the first 1% of keys.
    Hotspot,
}

impl KeyDist {
    /// Parses `uniform|zipfian[:THETA]|hotspot`.
    pub fn parse(s: &str) -> Result<KeyDist, String> {
        match s.split_once(':') {
            None if s == "uniform" => Ok(KeyDist::Uniform),
            None if s == "hotspot" => Ok(KeyDist::Hotspot),
            None if s == "zipfian" => Ok(KeyDist::Zipfian(0.99)),
            Some(("zipfian", t)) => {
                let theta: f64 = t.parse().map_err(|_| format!("bad zipfian theta {t:?}"))?;
                if !(theta > 0.0 && theta < 10.0) {
                    return Err(format!("zipfian theta {theta} outside (0, 10)"));
                }
                Ok(KeyDist::Zipfian(theta))
            }
            _ => Err(format!(
                "unknown distribution {s:?} (uniform, zipfian[:THETA], hotspot)"
            )),
        }
    }

    /// Name for reports.
    pub fn name(&self) -> String {
        match self {
            KeyDist::Uniform => "uniform".into(),
            KeyDist::Zipfian(t) => format!("zipfian:{t}"),
            KeyDist::Hotspot => "hotspot".into(),
        }
    }
}

/// Draws key indexes in `0..keys`.
pub struct KeyPicker {
    keys: u64,
    zipf: Option<Zipf<f64>>,
    hotspot: bool,
}

impl KeyPicker {
    /// A picker over `keys` keys.
    pub fn new(keys: u64, dist: &KeyDist) -> KeyPicker {
        let zipf = match dist {
            KeyDist::Zipfian(theta) => Some(Zipf::new(keys, *theta).expect("valid zipf")),
            _ => None,
        };
        KeyPicker {
            keys,
            zipf,
            hotspot: matches!(dist, KeyDist::Hotspot),
        }
    }

    /// The next key index.
    #[inline]
    pub fn next(&self, rng: &mut SmallRng) -> u64 {
        if let Some(z) = &self.zipf {
            // Ranks are 1-based; scatter them so hot keys are not neighbours.
            let rank = z.sample(rng) as u64 - 1;
            return rank.wrapping_mul(0x9E37_79B9_7F4A_7C15) % self.keys;
        }
        if self.hotspot {
            let hot = (self.keys / 100).max(1);
            if rng.gen_ratio(9, 10) {
                return rng.gen_range(0..hot);
            }
        }
        rng.gen_range(0..self.keys)
    }
}

/// The name of key `i`: `key:` and 12 zero-padded digits, the names
/// `redis-benchmark -r N` uses, so both tools address the same keys.
pub fn key_name(i: u64, out: &mut Vec<u8>) {
    out.clear();
    push_key_name(i, out);
}

/// Appends the name of key `i` (16 bytes) to `out`.
#[inline]
fn push_key_name(i: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"key:");
    let mut buf = [b'0'; 12];
    let mut n = i;
    let mut p = buf.len();
    while n > 0 && p > 0 {
        p -= 1;
        buf[p] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf);
}

/// Every key name and its routing hash, built once (corekv requests share
/// the names' memory).
pub struct KeyTable {
    names: bytes::Bytes,
    offsets: Vec<u32>,
    hashes: Vec<u64>,
}

impl KeyTable {
    /// Keys `0..keys`.
    pub fn new(keys: u64) -> KeyTable {
        let mut names = Vec::with_capacity(keys as usize * 12);
        let mut offsets = Vec::with_capacity(keys as usize + 1);
        let mut hashes = Vec::with_capacity(keys as usize);
        let mut k = Vec::new();
        offsets.push(0);
        for i in 0..keys {
            key_name(i, &mut k);
            names.extend_from_slice(&k);
            offsets.push(names.len() as u32);
            hashes.push(corekv_engine::route_hash(&k));
        }
        KeyTable {
            names: bytes::Bytes::from(names),
            offsets,
            hashes,
        }
    }

    /// Name of key `i` (shares the table's memory).
    #[inline]
    pub fn name(&self, i: u64) -> bytes::Bytes {
        let i = i as usize;
        self.names
            .slice(self.offsets[i] as usize..self.offsets[i + 1] as usize)
    }

    /// Routing hash of key `i`.
    #[inline]
    pub fn hash(&self, i: u64) -> u64 {
        self.hashes[i as usize]
    }

    /// Appends the RESP `GET` of key `i`, formatted on the spot as
    /// redis-benchmark does: copying it from a table of every key's command
    /// missed the CPU cache on most operations.
    #[inline]
    pub fn put_resp_get(&self, i: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$16\r\n");
        push_key_name(i, out);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn distributions_stay_in_range_and_skew_as_asked() {
        let mut rng = SmallRng::seed_from_u64(1);
        for dist in [KeyDist::Uniform, KeyDist::Zipfian(0.99), KeyDist::Hotspot] {
            let p = KeyPicker::new(1000, &dist);
            let mut counts = vec![0u32; 1000];
            for _ in 0..100_000 {
                counts[p.next(&mut rng) as usize] += 1;
            }
            let max = *counts.iter().max().unwrap();
            match dist {
                KeyDist::Uniform => assert!(max < 200, "uniform max {max}"),
                _ => assert!(max > 2000, "{} max {max}", dist.name()),
            }
        }
        let mut k = Vec::new();
        key_name(42, &mut k);
        assert_eq!(k, b"key:000000000042");
        assert!(KeyDist::parse("zipfian:1.2").is_ok());
        assert!(KeyDist::parse("zipf").is_err());
        assert_eq!(Mix::parse("read-heavy").unwrap().read_percent(), 95);
        let t = KeyTable::new(20);
        assert_eq!(&t.name(13)[..], b"key:000000000013");
        assert_eq!(t.hash(13), corekv_engine::route_hash(b"key:000000000013"));
        let mut out = Vec::new();
        t.put_resp_get(7, &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$16\r\nkey:000000000007\r\n");
    }
}

//! The CPU time of the server processes under test, read from `/proc`: the
//! processes found by the TCP ports they listen on (so the generator itself
//! is never counted), their user and system time summed, and what one
//! operation costs.

use std::collections::HashSet;
use std::time::Duration;

/// CPU time used so far by a set of processes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTime {
    /// User time.
    pub user: Duration,
    /// System (kernel) time.
    pub system: Duration,
}

/// The server CPU one measured window cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServerCpu {
    /// Server processes measured.
    pub processes: usize,
    /// User µs per successful operation.
    pub user_us_per_op: f64,
    /// System µs per successful operation.
    pub system_us_per_op: f64,
    /// Cores the servers kept busy on average.
    pub cores: f64,
}

impl ServerCpu {
    /// The window between `start` and `end` (CPU of `processes`), `ops`
    /// successful operations in `wall`.
    pub fn between(
        start: CpuTime,
        end: CpuTime,
        processes: usize,
        ops: u64,
        wall: Duration,
    ) -> ServerCpu {
        let user = end.user.saturating_sub(start.user).as_secs_f64() * 1e6;
        let system = end.system.saturating_sub(start.system).as_secs_f64() * 1e6;
        let ops = ops.max(1) as f64;
        ServerCpu {
            processes,
            user_us_per_op: user / ops,
            system_us_per_op: system / ops,
            cores: (user + system) / 1e6 / wall.as_secs_f64().max(1e-9),
        }
    }

    /// User plus system µs per operation.
    pub fn us_per_op(&self) -> f64 {
        self.user_us_per_op + self.system_us_per_op
    }
}

/// Socket inodes listening on one of `ports` (IPv4 and IPv6, any address),
/// from `/proc/net/tcp*` text.
fn listening_inodes(table: &str, ports: &HashSet<u16>, out: &mut HashSet<u64>) {
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let port = f[1]
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if port.is_some_and(|p| ports.contains(&p)) {
            if let Ok(inode) = f[9].parse() {
                out.insert(inode);
            }
        }
    }
}

/// The processes listening on any of `ports` on this machine.
pub fn pids_listening_on(ports: &[u16]) -> Vec<u32> {
    let ports: HashSet<u16> = ports.iter().copied().collect();
    let mut inodes = HashSet::new();
    for t in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(t) {
            listening_inodes(&text, &ports, &mut inodes);
        }
    }
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| {
                l.to_str()
                    .and_then(|s| s.strip_prefix("socket:["))
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|i| inodes.contains(&i))
            })
        });
        if holds && pid != std::process::id() {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// User and system time of `/proc/PID/stat` text (fields 14 and 15, in
/// clock ticks), after the command name (which may hold spaces).
fn parse_stat(stat: &str, tick_hz: f64) -> Option<CpuTime> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some(CpuTime {
        user: Duration::from_secs_f64(utime / tick_hz),
        system: Duration::from_secs_f64(stime / tick_hz),
    })
}

/// CPU time used so far by every process in `pids` (all their threads).
/// A process that is gone counts as nothing.
pub fn cpu_time(pids: &[u32]) -> CpuTime {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut t = CpuTime::default();
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(c) = parse_stat(&stat, hz) {
            t.user += c.user;
            t.system += c.system;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stat_line_gives_user_and_system_time() {
        let stat =
            "4242 (corekv shard) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 1 2 3";
        let c = parse_stat(stat, 100.0).unwrap();
        assert_eq!(c.user, Duration::from_millis(2500));
        assert_eq!(c.system, Duration::from_millis(750));
    }

    #[test]
    fn only_listening_sockets_on_the_ports_are_found() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1B9D 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n   1: 0100007F:1B9D 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0\n   2: 0100007F:1B9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0 100 0 0 10 0\n";
        let mut found = HashSet::new();
        listening_inodes(table, &HashSet::from([0x1B9D]), &mut found);
        assert_eq!(found, HashSet::from([111]));
    }

    #[test]
    fn this_process_reads_its_own_time_growing() {
        let me = [std::process::id()];
        let own = cpu_time(&me);
        let total = |c: CpuTime| c.user + c.system;
        // Spin until 30 ms of CPU show (bounded: the check is that they do).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        let mut later = own;
        while total(later) < total(own) + Duration::from_millis(30)
            && std::time::Instant::now() < deadline
        {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            later = cpu_time(&me);
        }
        assert!(x != 1);
        assert!(
            total(later) >= total(own) + Duration::from_millis(30),
            "{own:?} -> {later:?}"
        );
        let w = ServerCpu::between(own, later, 1, 10, Duration::from_secs(1));
        assert!(w.us_per_op() >= 3000.0, "{w:?}");
    }
}

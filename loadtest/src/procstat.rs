//! CPU time and peak RSS of a process and its descendants, from /proc.

use std::collections::HashMap;

pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (ppid, utime + stime in ticks) of one process, from /proc/PID/stat.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name is in parentheses and may contain spaces: split after the last ')'
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid = field 4, utime = 14, stime = 15
    let ppid = f.get(1)?.parse().ok()?;
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, ut + st))
}

/// `pid` and all its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some((pp, _)) = stat(p) {
                    children.entry(pp).or_default().push(p);
                }
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// CPU seconds (user + system, all threads) of `pid` and its descendants.
pub fn cpu_seconds(pid: u32) -> f64 {
    let tck = clk_tck();
    tree(pid).into_iter().filter_map(stat).map(|(_, t)| t as f64 / tck).sum()
}

/// CPU seconds (user + system, all threads) of this process alone, without its children.
pub fn own_cpu_seconds() -> f64 {
    stat(std::process::id()).map(|(_, t)| t as f64 / clk_tck()).unwrap_or(0.0)
}

/// A `kB` field of /proc/PID/status (e.g. "VmRSS"), summed over `pid` and its descendants.
fn status_kib(pid: u32, field: &str) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| status_field(&std::fs::read_to_string(format!("/proc/{p}/status")).ok()?, field))
        .sum()
}

/// The value of `field` ("VmRSS") in the text of a /proc/PID/status file, in kB.
pub fn status_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Peak resident set (VmHWM) in KiB, summed over `pid` and its descendants.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM")
}

/// Resident set now (VmRSS) in KiB, summed over `pid` and its descendants (nginx: master and
/// workers; pages they share count in each).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// Open file descriptors (entries of /proc/PID/fd), summed over `pid` and its descendants.
pub fn fd_count(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
        .map(|d| d.count() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn own_process() {
        let me = std::process::id();
        let t0 = cpu_seconds(me);
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed().as_millis() < 60 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(me) > t0);
        assert!(own_cpu_seconds() > 0.0);
        assert!(peak_rss_kib(me) > 100);
        assert!(tree(me).contains(&me));
        assert!(rss_kib(me) > 100 && rss_kib(me) <= peak_rss_kib(me));
        // stdin, stdout, stderr at least (other tests open and close files meanwhile)
        assert!(fd_count(me) >= 3);
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nVmRSSX:\t 9 kB\n";
        assert_eq!(status_field(s, "VmRSS"), Some(1024));
        assert_eq!(status_field(s, "VmHWM"), Some(2048));
        assert_eq!(status_field(s, "VmSwap"), None);
        assert_eq!(status_field(s, "Name"), None);
    }
}

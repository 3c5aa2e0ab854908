//! What the benchmarks read of a process from `/proc`: its CPU time and resident memory. A process
//! that is gone reads as zero.

use std::{path::Path, time::Duration};

fn proc_file(pid: u32, file: &str) -> String {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join(file)).unwrap_or_default()
}

/// utime + stime, in clock ticks of 10 ms (USER_HZ is 100 on Linux).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = proc_file(pid, "stat");
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    proc_file(pid, "status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The peak resident set so far (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// The resident set now (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory_and_a_missing_one_has_none() {
        let me = std::process::id();
        // The resident set now first: the peak read after it can only be as high or higher, while
        // other tests' threads allocate in between.
        let now = rss_kib(me);
        assert!(now > 0);
        assert!(peak_rss_kib(me) >= now);
        let spin = std::time::Instant::now();
        while cpu_time(me).is_zero() && spin.elapsed() < Duration::from_secs(5) {}
        assert!(!cpu_time(me).is_zero());
        assert_eq!((rss_kib(u32::MAX), cpu_time(u32::MAX)), (0, Duration::ZERO));
    }
}

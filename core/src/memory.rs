//! How much memory and CPU time this process has used, for progress logs, the summary and
//! benchmarks.

/// Peak resident set size of this process in bytes (Linux `VmHWM`); `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// Current resident set size of this process in bytes (Linux `VmRSS`); `None` elsewhere.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|kib| kib * 1024)
}

/// CPU time (user + system, all threads) this process has used, in seconds (Linux
/// `/proc/self/stat`, 10 ms resolution); `None` elsewhere.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name, in
    // USER_HZ ticks (100 per second on Linux).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Logs (at debug level) the memory in use and the peak so far, after a phase of a job.
pub fn log_memory(phase: &str) {
    tracing::debug!(
        rss_mib = rss_bytes().unwrap_or(0) >> 20,
        peak_mib = peak_rss_bytes().unwrap_or(0) >> 20,
        "memory after: {phase}"
    );
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process_memory_on_linux() {
        if cfg!(target_os = "linux") {
            let peak = super::peak_rss_bytes().unwrap();
            let now = super::rss_bytes().unwrap();
            assert!(peak > 0 && now > 0);
            let start = super::cpu_seconds().unwrap();
            let mut x = 0u64;
            for i in 0..200_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            assert!(super::cpu_seconds().unwrap() > start);
        }
    }
}

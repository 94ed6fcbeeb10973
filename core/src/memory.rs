//! How much memory this process has used, for progress logs, the summary and benchmarks.

/// Peak resident set size of this process in bytes (Linux `VmHWM`); `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// Current resident set size of this process in bytes (Linux `VmRSS`); `None` elsewhere.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|kib| kib * 1024)
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
        }
    }
}

//! Process gauges under their Prometheus-standard names, read from `/proc/self` when `/metrics`
//! is scraped: resident memory, open and maximum file descriptors, threads, CPU time, and the
//! tokio runtime's live task count. They are what a soak run (and an operator's dashboard)
//! watches for leaks: memory that only grows, descriptors or tasks that pile up.

/// What one look at `/proc/self` found; `None` where the platform does not say.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessSample {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub threads: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

/// `VmRSS`, `VmSize` and `Threads` of a `/proc/PID/status` text.
pub fn parse_status(text: &str, sample: &mut ProcessSample) {
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let value = words.next().and_then(|v| v.parse::<u64>().ok());
        let mut kib = |v: Option<u64>| match words.next() {
            Some("kB") => v.map(|v| v * 1024),
            _ => None,
        };
        match name {
            "VmRSS" => sample.resident_bytes = kib(value),
            "VmSize" => sample.virtual_bytes = kib(value),
            "Threads" => sample.threads = value,
            _ => {}
        }
    }
}

/// User + system CPU seconds of a `/proc/PID/stat` line (fields 14 and 15, after the
/// parenthesised command name, which may itself hold spaces or parentheses).
pub fn parse_stat_cpu_seconds(text: &str, ticks_per_second: u64) -> Option<f64> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second.max(1) as f64)
}

/// The soft `Max open files` limit of a `/proc/PID/limits` text.
pub fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads `/proc/self`.
pub fn sample() -> ProcessSample {
    let mut s = ProcessSample::default();
    if let Ok(t) = std::fs::read_to_string("/proc/self/status") {
        parse_status(&t, &mut s);
    }
    if let Ok(t) = std::fs::read_to_string("/proc/self/stat") {
        // USER_HZ is 100 on every Linux architecture we build for.
        s.cpu_seconds = parse_stat_cpu_seconds(&t, 100);
    }
    if let Ok(t) = std::fs::read_to_string("/proc/self/limits") {
        s.max_fds = parse_max_fds(&t);
    }
    s.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    s
}

/// Sets the process gauges (called just before `/metrics` renders).
pub fn record() {
    let s = sample();
    // One literal per gauge: tests/metrics_reference.rs finds metrics by their macro call.
    if let Some(v) = s.resident_bytes {
        metrics::gauge!("process_resident_memory_bytes").set(v as f64);
    }
    if let Some(v) = s.virtual_bytes {
        metrics::gauge!("process_virtual_memory_bytes").set(v as f64);
    }
    if let Some(v) = s.threads {
        metrics::gauge!("process_threads").set(v as f64);
    }
    if let Some(v) = s.open_fds {
        metrics::gauge!("process_open_fds").set(v as f64);
    }
    if let Some(v) = s.max_fds {
        metrics::gauge!("process_max_fds").set(v as f64);
    }
    // CPU time is a counter, and the recorder's counters hold whole numbers: whole seconds,
    // which is enough for a rate over a scrape interval or more.
    if let Some(cpu) = s.cpu_seconds {
        metrics::counter!("process_cpu_seconds_total").absolute(cpu as u64);
    }
    if let Ok(h) = tokio::runtime::Handle::try_current() {
        metrics::gauge!("pricefeed_runtime_alive_tasks").set(h.metrics().num_alive_tasks() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_give_memory_in_bytes_and_threads() {
        let text = "Name:\tpricefeed-node\nVmSize:\t  123456 kB\nVmRSS:\t   2048 kB\nThreads:\t7\n";
        let mut s = ProcessSample::default();
        parse_status(text, &mut s);
        assert_eq!(s.resident_bytes, Some(2048 * 1024));
        assert_eq!(s.virtual_bytes, Some(123_456 * 1024));
        assert_eq!(s.threads, Some(7));
    }

    #[test]
    fn cpu_seconds_survive_a_command_name_with_spaces_and_parentheses() {
        let text = "42 (we (ird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 100";
        assert_eq!(parse_stat_cpu_seconds(text, 100), Some(3.0));
        assert_eq!(parse_stat_cpu_seconds("garbage", 100), None);
    }

    #[test]
    fn the_soft_open_files_limit_is_read() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(text), Some(1024));
        assert_eq!(parse_max_fds("Limit\n"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample();
        assert!(s.resident_bytes.unwrap() > 0);
        assert!(s.open_fds.unwrap() > 0);
        assert!(s.threads.unwrap() >= 1);
    }
}

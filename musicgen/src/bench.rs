//! Measuring what bounds a decoder step on this machine: memory read bandwidth,
//! the bytes a step reads, and the process's peak resident memory.

use std::time::Instant;

use rayon::prelude::*;

/// Read bandwidth in bytes per second with every thread of `pool`: the best of a
/// few passes summing a buffer much larger than the caches.
pub fn read_bandwidth(pool: &rayon::ThreadPool, bytes: usize) -> f64 {
    let n = (bytes / 8).max(1 << 20);
    let buf: Vec<u64> = (0..n as u64).collect();
    let chunk = n.div_ceil(pool.current_num_threads() * 8);
    let mut best = 0f64;
    for _ in 0..5 {
        let t0 = Instant::now();
        let sum: u64 = pool.install(|| {
            buf.par_chunks(chunk)
                .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
                .reduce(|| 0, u64::wrapping_add)
        });
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        best = best.max((n * 8) as f64 / secs);
    }
    best
}

/// Peak resident set size of this process in bytes (Linux: VmHWM), if known.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Current resident set size in bytes (Linux: VmRSS), if known.
pub fn current_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Starts a new peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The median of some durations, in milliseconds.
pub fn median_ms(durations: &[std::time::Duration]) -> f64 {
    if durations.is_empty() {
        return 0.0;
    }
    let mut ms: Vec<f64> = durations.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let mid = ms.len() / 2;
    if ms.len() % 2 == 1 {
        ms[mid]
    } else {
        0.5 * (ms[mid - 1] + ms[mid])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn median_of_odd_and_even_counts() {
        let d = |ms: u64| Duration::from_millis(ms);
        assert_eq!(median_ms(&[d(5), d(1), d(3)]), 3.0);
        assert_eq!(median_ms(&[d(4), d(1), d(3), d(2)]), 2.5);
        assert_eq!(median_ms(&[]), 0.0);
    }

    #[test]
    fn bandwidth_and_memory_are_measured() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let bw = read_bandwidth(&pool, 16 << 20);
        assert!(bw > 1e8, "implausible bandwidth {bw}");
        if cfg!(target_os = "linux") {
            let peak = peak_rss().unwrap();
            assert!(peak >= current_rss().unwrap() / 2);
            assert!(reset_peak_rss());
        }
    }
}

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

/// One row of [`kernel_table`]: a kernel's time for one decoder step's matrices.
#[derive(Debug, Clone)]
pub struct KernelTiming {
    /// "candle" or the engine's level (`qgemv::Level::name`).
    pub kernel: String,
    pub format: crate::qgemv::Format,
    /// Median time of one pass over the layer's matrices, in milliseconds.
    pub layer_ms: f64,
    /// Bytes of the matrices as this kernel reads them, over `layer_ms`.
    pub gb_per_s: f64,
}

/// Times the quantized products of a decoder layer (the projections of a
/// `hidden` x `ffn` MusicGen layer: qkv, out, cross q, cross out, fc1, fc2) for
/// `rows` activation rows, with candle's quantized matmul and each of the engine's
/// kernel levels this CPU runs, on candle's CPU workers. `layers` distinct layers
/// are run in turn, so that (as in a decoder step) the weights come from memory,
/// not from the caches.
pub fn kernel_table(
    hidden: usize,
    ffn: usize,
    rows: usize,
    layers: usize,
    passes: usize,
) -> Vec<KernelTiming> {
    use crate::qgemv::{Format, Level, PackedMatrix};
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    let layer = [
        (3 * hidden, hidden),
        (hidden, hidden),
        (hidden, hidden),
        (hidden, hidden),
        (ffn, hidden),
        (hidden, ffn),
    ];
    let shapes: Vec<(usize, usize)> = (0..layers).flat_map(|_| layer).collect();
    let dev = Device::Cpu;
    let mut out = Vec::new();
    for (format, dtype) in [
        (Format::Q4K, GgmlDType::Q4K),
        (Format::Q8_0, GgmlDType::Q8_0),
    ] {
        let mats: Vec<(QMatMul, PackedMatrix, usize)> = shapes
            .iter()
            .map(|&(n, k)| {
                let w = Tensor::randn(0f32, 0.02, (n, k), &dev).expect("random weights");
                let q = QTensor::quantize(&w, dtype).expect("quantize");
                let p = PackedMatrix::from_qtensor(&q)
                    .expect("repack")
                    .expect("a q4k or q8_0 matrix");
                let bytes = q.storage_size_in_bytes();
                (QMatMul::from_qtensor(q).expect("qmatmul"), p, bytes)
            })
            .collect();
        let xs: Vec<Tensor> = shapes
            .iter()
            .map(|&(_, k)| Tensor::randn(0f32, 1.0, (rows, k), &dev).expect("activations"))
            .collect();
        let time = |f: &mut dyn FnMut()| {
            f();
            let mut t: Vec<std::time::Duration> = (0..passes)
                .map(|_| {
                    let t0 = Instant::now();
                    f();
                    t0.elapsed()
                })
                .collect();
            t.sort();
            median_ms(&t)
        };
        let candle_bytes: usize = mats.iter().map(|(_, _, b)| b).sum();
        let ms = time(&mut || {
            for ((m, _, _), x) in mats.iter().zip(&xs) {
                std::hint::black_box(m.forward(x).expect("candle matmul"));
            }
        });
        out.push(KernelTiming {
            kernel: "candle".into(),
            format,
            layer_ms: ms / layers as f64,
            gb_per_s: candle_bytes as f64 / ms / 1e6,
        });
        let xv: Vec<Vec<f32>> = xs
            .iter()
            .map(|x| x.flatten_all().and_then(|x| x.to_vec1()).expect("rows"))
            .collect();
        let bytes: usize = mats.iter().map(|(_, p, _)| p.size_in_bytes()).sum();
        for level in Level::available() {
            let mut ys: Vec<Vec<f32>> = mats
                .iter()
                .map(|(_, p, _)| vec![0f32; rows * p.dims().0])
                .collect();
            let ms = time(&mut || {
                for (((_, p, _), x), y) in mats.iter().zip(&xv).zip(ys.iter_mut()) {
                    p.matmul_at(level, x, rows, y, true);
                }
            });
            out.push(KernelTiming {
                kernel: level.name().into(),
                format,
                layer_ms: ms / layers as f64,
                gb_per_s: bytes as f64 / ms / 1e6,
            });
        }
    }
    out
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

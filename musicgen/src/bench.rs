//! Measuring what bounds a decoder step on this machine: memory read bandwidth,
//! the bytes a step reads, and the process's peak resident memory.

use std::time::Instant;

use rayon::prelude::*;

/// Read bandwidth in bytes per second with every thread of `pool`: the best of a
/// few passes summing a buffer much larger than the caches, each thread one long
/// run, with vector loads and independent sums so that the adds never bound it.
pub fn read_bandwidth(pool: &rayon::ThreadPool, bytes: usize) -> f64 {
    let n = (bytes / 8).max(1 << 20);
    let buf: Vec<u64> = (0..n as u64).collect();
    let chunk = n.div_ceil(pool.current_num_threads());
    let mut best = 0f64;
    for _ in 0..5 {
        let t0 = Instant::now();
        let sum: u64 = pool.install(|| {
            buf.par_chunks(chunk)
                .with_min_len(1)
                .map(sum_words)
                .reduce(|| 0, u64::wrapping_add)
        });
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        best = best.max((n * 8) as f64 / secs);
    }
    best
}

/// The wrapping sum of `words`.
fn sum_words(words: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { sum_words_avx2(words) };
    }
    let mut lanes = [0u64; 8];
    let mut chunks = words.chunks_exact(8);
    for c in &mut chunks {
        for (l, w) in lanes.iter_mut().zip(c) {
            *l = l.wrapping_add(*w);
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(0, |a, &b| a.wrapping_add(b))
}

/// [`sum_words`] with 256-bit loads into four sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_words_avx2(words: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    let mut chunks = words.chunks_exact(16);
    for c in &mut chunks {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: c holds 16 words, 4 for each of the four loads.
            let v = unsafe { _mm256_loadu_si256(c.as_ptr().add(4 * j) as *const __m256i) };
            *a = _mm256_add_epi64(*a, v);
        }
    }
    let mut lanes = [0u64; 16];
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: lanes has room for four vectors of 4 words.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().add(4 * j) as *mut __m256i, *a) };
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(0, |a, &b| a.wrapping_add(b))
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
    fn the_probe_sums_every_word() {
        for n in [0usize, 1, 15, 16, 17, 1000, 4099] {
            let words: Vec<u64> = (0..n as u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect();
            let want = words.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            assert_eq!(sum_words(&words), want, "{n} words");
        }
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

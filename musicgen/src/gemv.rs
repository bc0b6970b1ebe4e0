//! A few rows times a transposed weight matrix, on the CPU, at memory speed.
//!
//! A decoder step multiplies one or two activation rows (two with classifier-free
//! guidance) by every weight matrix: the cost is reading the weights once. gemm,
//! tuned for large products, reads them at about two thirds of the bandwidth a
//! plain streaming dot product reaches on these shapes; so small row counts take
//! this path: each weight row is read once and dotted with every activation row.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Activation rows up to which this path is used.
pub const MAX_ROWS: usize = 4;

/// Weight rows per parallel task: 64 rows of 1024 floats is 256 KB.
const ROWS_PER_TASK: usize = 64;

/// Portable fallback: one dot product, eight independent partial sums.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (a, b) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(a, b)| a * b)
        .sum();
    acc.iter().sum::<f32>() + tail
}

// The functions here are unsafe only for their CPU features and the pointer
// loads, whose bounds each loop condition states.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_op_in_unsafe_fn)]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Dot products of one weight row `w` with activation rows `x0` and `x1`
    /// (`x1 = None` for one row): the weights are loaded once for both.
    #[target_feature(enable = "avx2,fma")]
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA, and `x0`, `x1` must be as long as `w`.
    pub unsafe fn dots(x0: &[f32], x1: Option<&[f32]>, w: &[f32]) -> (f32, f32) {
        let k = w.len();
        let (wp, p0) = (w.as_ptr(), x0.as_ptr());
        let p1 = x1.map(|x| x.as_ptr()).unwrap_or(p0);
        let two = x1.is_some();
        let (mut a0, mut a1, mut a2, mut a3) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let (mut b0, mut b1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY (all loads): i + 16 <= k = len of w, x0 and x1.
        if two {
            while i + 16 <= k {
                let w0 = _mm256_loadu_ps(wp.add(i));
                let w1 = _mm256_loadu_ps(wp.add(i + 8));
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p0.add(i)), w0, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p0.add(i + 8)), w1, a1);
                b0 = _mm256_fmadd_ps(_mm256_loadu_ps(p1.add(i)), w0, b0);
                b1 = _mm256_fmadd_ps(_mm256_loadu_ps(p1.add(i + 8)), w1, b1);
                i += 16;
            }
        } else {
            while i + 32 <= k {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p0.add(i)), _mm256_loadu_ps(wp.add(i)), a0);
                a1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(p0.add(i + 8)),
                    _mm256_loadu_ps(wp.add(i + 8)),
                    a1,
                );
                a2 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(p0.add(i + 16)),
                    _mm256_loadu_ps(wp.add(i + 16)),
                    a2,
                );
                a3 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(p0.add(i + 24)),
                    _mm256_loadu_ps(wp.add(i + 24)),
                    a3,
                );
                i += 32;
            }
        }
        let mut s0 = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        let mut s1 = hsum(_mm256_add_ps(b0, b1));
        while i < k {
            s0 += x0[i] * w[i];
            if let Some(x1) = x1 {
                s1 += x1[i] * w[i];
            }
            i += 1;
        }
        (s0, s1)
    }
}

/// `out[i * m + r]` = row `r` of `x` dotted with weight row `i` of `w`.
fn task(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        for (i, out) in out.chunks_mut(m).enumerate() {
            let row = &w[i * k..(i + 1) * k];
            let mut r = 0;
            while r < m {
                let x0 = &x[r * k..(r + 1) * k];
                let x1 = (r + 1 < m).then(|| &x[(r + 1) * k..(r + 2) * k]);
                // SAFETY: the CPU has AVX2 and FMA; all slices have length k.
                let (s0, s1) = unsafe { avx2::dots(x0, x1, row) };
                out[r] = s0;
                if x1.is_some() {
                    out[r + 1] = s1;
                }
                r += 2;
            }
        }
        return;
    }
    for (i, out) in out.chunks_mut(m).enumerate() {
        let row = &w[i * k..(i + 1) * k];
        for (r, o) in out.iter_mut().enumerate() {
            *o = dot(&x[r * k..(r + 1) * k], row);
        }
    }
}

/// `y = x · wᵀ` for `x` of `m` rows of length `k` and `w` of `n` rows of length `k`;
/// `y` is `m` rows of length `n`. Runs on the current rayon pool.
pub fn rows_times_transposed(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    debug_assert_eq!(x.len(), m * k);
    debug_assert_eq!(w.len(), n * k);
    // Computed column-major (one weight row gives one value per activation row),
    // then transposed: the output is tiny next to the weights.
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(t, out)| {
            let first = t * ROWS_PER_TASK;
            let rows = out.len() / m;
            task(x, m, k, &w[first * k..(first + rows) * k], out);
        });
    let mut y = vec![0f32; m * n];
    for j in 0..n {
        for r in 0..m {
            y[r * n + j] = yt[j * m + r];
        }
    }
    y
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Option<&'a [f32]> {
    let (start, end) = layout.contiguous_offsets()?;
    match storage {
        CpuStorage::F32(v) => Some(&v[start..end]),
        _ => None,
    }
}

/// `x · weightᵀ` by the streaming path when `x` is a few f32 rows on the CPU and
/// both tensors are contiguous; `None` when it does not apply.
pub fn try_small_matmul(x: &Tensor, weight: &Tensor) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return Ok(None);
    }
    let (n, k) = weight.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&k) {
        return Ok(None);
    }
    let m = x.elem_count() / k.max(1);
    if m == 0 || m > MAX_ROWS {
        return Ok(None);
    }
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = weight.storage_and_layout();
    let (Storage::Cpu(xs), Storage::Cpu(ws)) = (&*xs, &*ws) else {
        return Ok(None);
    };
    let (Some(xv), Some(wv)) = (contiguous_f32(xs, xl), contiguous_f32(ws, wl)) else {
        return Ok(None);
    };
    let y = rows_times_transposed(xv, m, wv, n, k);
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("x has a last dim") = n;
    Ok(Some(Tensor::from_vec(
        y,
        Shape::from(out_dims),
        x.device(),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_matmul() {
        let (m, n, k) = (3, 131, 77);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5)
            .collect();
        let y = rows_times_transposed(&x, m, &w, n, k);
        for r in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|i| x[r * k + i] * w[j * k + i]).sum();
                assert!((y[r * n + j] - want).abs() < 1e-3, "{r},{j}");
            }
        }
    }

    #[test]
    fn tensor_path_applies_only_where_it_should() {
        let dev = candle_core::Device::Cpu;
        let w = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let x = Tensor::new(&[[[1f32, 0., -1., 2.]], [[0.5, 0.5, 0.5, 0.5]]], &dev).unwrap();
        let got = try_small_matmul(&x, &w).unwrap().unwrap();
        let want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        assert_eq!(got.dims(), &[2, 1, 3]);
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // Too many rows, or a transposed (non-contiguous) input: not this path.
        let many = Tensor::zeros((8, 4), DType::F32, &dev).unwrap();
        assert!(try_small_matmul(&many, &w).unwrap().is_none());
        let wt = Tensor::zeros((4, 3), DType::F32, &dev)
            .unwrap()
            .t()
            .unwrap();
        assert!(try_small_matmul(&x, &wt).unwrap().is_none());
    }
}

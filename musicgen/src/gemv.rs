//! A few rows times a transposed weight matrix, on the CPU, at memory speed.
//!
//! A decoder step multiplies one or two activation rows (two with classifier-free
//! guidance) by every weight matrix: the cost is reading the weights once. gemm,
//! tuned for large products, reads them at about two thirds of the bandwidth a
//! plain streaming dot product reaches on these shapes; so small row counts take
//! this path: each weight row is read once and dotted with every activation row.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Storage, Tensor};

/// A pointer to an output buffer whose disjoint parts parallel tasks fill.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: tasks write disjoint ranges (each caller states which).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `[start, start + len)` is inside the buffer and written by no one else.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        // SAFETY: as the caller states.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Which threads run the kernels here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeThreads {
    /// The current rayon pool (the engine's compute pool).
    Rayon,
    /// candle's own CPU workers, which run its quantized kernels and spin for a
    /// while after each: while those kernels are in use, sharing their threads
    /// keeps ours from competing with them for the same cores.
    Candle,
}

/// Runs `f` over `0..n` in parallel on `workers`.
pub(crate) fn on_compute_threads(
    workers: ComputeThreads,
    n: usize,
    f: impl Fn(std::ops::Range<usize>) + Sync + Send,
) {
    match workers {
        ComputeThreads::Candle => crate::qgemv::on_candle_workers(n, f),
        ComputeThreads::Rayon => {
            use rayon::prelude::*;
            (0..n).into_par_iter().for_each(|i| f(i..i + 1));
        }
    }
}

/// `f` on each `part`-long piece of `x`, the pieces split over `workers`.
pub(crate) fn par_pieces_mut(
    workers: ComputeThreads,
    x: &mut [f32],
    part: usize,
    f: impl Fn(&mut [f32]) + Sync,
) {
    let (len, parts) = (x.len(), x.len().div_ceil(part.max(1)));
    let shared = SharedOut(x.as_mut_ptr());
    on_compute_threads(workers, parts, |range| {
        for p in range {
            let start = p * part;
            // SAFETY: piece p alone is [start, start + part) within x.
            f(unsafe { shared.slice(start, part.min(len - start)) });
        }
    });
}

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
        // SAFETY (all loads): i + 32 (or 16) <= k = len of w, x0 and x1.
        if two {
            // Eight accumulators: with four, the adds' latency bounds the loop.
            let (mut b2, mut b3) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            while i + 32 <= k {
                let w = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(wp.add(i + o)));
                let x0 = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(p0.add(i + o)));
                let x1 = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(p1.add(i + o)));
                a0 = _mm256_fmadd_ps(x0[0], w[0], a0);
                a1 = _mm256_fmadd_ps(x0[1], w[1], a1);
                a2 = _mm256_fmadd_ps(x0[2], w[2], a2);
                a3 = _mm256_fmadd_ps(x0[3], w[3], a3);
                b0 = _mm256_fmadd_ps(x1[0], w[0], b0);
                b1 = _mm256_fmadd_ps(x1[1], w[1], b1);
                b2 = _mm256_fmadd_ps(x1[2], w[2], b2);
                b3 = _mm256_fmadd_ps(x1[3], w[3], b3);
                i += 32;
            }
            b0 = _mm256_add_ps(b0, b2);
            b1 = _mm256_add_ps(b1, b3);
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

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_op_in_unsafe_fn)]
mod f16c {
    use std::arch::x86_64::*;

    /// `q · k` for an f16 row `k`, converted eight lanes at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `q` and `k` have equal lengths.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(q: &[f32], k: &[half::f16]) -> f32 {
        let n = k.len();
        let (qp, kp) = (q.as_ptr(), k.as_ptr() as *const u16);
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            let k0 = _mm256_cvtph_ps(_mm_loadu_si128(kp.add(i) as *const __m128i));
            let k1 = _mm256_cvtph_ps(_mm_loadu_si128(kp.add(i + 8) as *const __m128i));
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), k0, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i + 8)), k1, a1);
            i += 16;
        }
        let v = _mm256_add_ps(a0, a1);
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        let mut sum = _mm_cvtss_f32(s);
        while i < n {
            sum += q[i] * k[i].to_f32();
            i += 1;
        }
        sum
    }

    /// `out += w * v` for an f16 row `v`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `out` and `v` have equal lengths.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy(w: f32, v: &[half::f16], out: &mut [f32]) {
        let n = v.len();
        let (vp, op) = (v.as_ptr() as *const u16, out.as_mut_ptr());
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_cvtph_ps(_mm_loadu_si128(vp.add(i) as *const __m128i));
            _mm256_storeu_ps(
                op.add(i),
                _mm256_fmadd_ps(wv, x, _mm256_loadu_ps(op.add(i))),
            );
            i += 8;
        }
        while i < n {
            out[i] += w * v[i].to_f32();
            i += 1;
        }
    }
}

/// Single-query attention for one (batch, head) pair with 64-wide heads (every
/// MusicGen size), in registers: the query and the output row stay in eight
/// 8-lane vectors, four keys are dotted at a time and summed together, and the
/// cache rows are read once each.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_op_in_unsafe_fn)]
mod attend64 {
    use std::arch::x86_64::*;

    /// Rows of the cache as eight 8-lane f32 vectors.
    pub trait Row64: Copy {
        /// # Safety
        /// The CPU has AVX2, FMA and F16C; `p` points at 64 elements.
        unsafe fn load8(p: *const Self, i: usize) -> __m256;
    }

    impl Row64 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32, i: usize) -> __m256 {
            _mm256_loadu_ps(p.add(i))
        }
    }

    impl Row64 for half::f16 {
        #[inline(always)]
        unsafe fn load8(p: *const half::f16, i: usize) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.add(i) as *const __m128i))
        }
    }

    /// The four lane-sums of `a`, `b`, `c`, `d`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
        let ab = _mm256_hadd_ps(a, b);
        let cd = _mm256_hadd_ps(c, d);
        let abcd = _mm256_hadd_ps(ab, cd);
        _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1))
    }

    /// `e^x` for 8 lanes, Cephes' single-precision method (range reduction by ln 2
    /// in two parts, a degree-5 polynomial; within 2 ulp of the true value), for
    /// `x <= 0` (softmax numerators): below -87.3 it returns about 1e-38, not 0.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.3));
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(
            _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        let scale = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(y, _mm256_castsi256_ps(scale))
    }

    /// `super::elu_in_place` on 8 values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn elu8(xs: &mut [f32]) {
        assert_eq!(xs.len(), 8);
        let x = _mm256_loadu_ps(xs.as_ptr());
        let neg = _mm256_sub_ps(
            exp8(_mm256_min_ps(x, _mm256_setzero_ps())),
            _mm256_set1_ps(1.0),
        );
        // x where x > 0, and where x is NaN (which stays NaN).
        let pos = _mm256_cmp_ps::<_CMP_NLE_UQ>(x, _mm256_setzero_ps());
        _mm256_storeu_ps(xs.as_mut_ptr(), _mm256_blendv_ps(neg, x, pos));
    }

    /// `super::gelu_erf_in_place` on 8 values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu8(xs: &mut [f32]) {
        assert_eq!(xs.len(), 8);
        let x = _mm256_loadu_ps(xs.as_ptr());
        let u = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let sign = _mm256_set1_ps(-0.0);
        let a = _mm256_andnot_ps(sign, u);
        let one = _mm256_set1_ps(1.0);
        let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(super::AS_P), a, one));
        let mut poly = _mm256_setzero_ps();
        for c in super::AS_A {
            poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(c));
        }
        let poly = _mm256_mul_ps(poly, t);
        let e = exp8(_mm256_mul_ps(_mm256_xor_ps(a, sign), a));
        let erf_abs = _mm256_fnmadd_ps(poly, e, one);
        let erf = _mm256_or_ps(erf_abs, _mm256_and_ps(u, sign));
        let half_x = _mm256_mul_ps(x, _mm256_set1_ps(0.5));
        _mm256_storeu_ps(xs.as_mut_ptr(), _mm256_fmadd_ps(half_x, erf, half_x));
    }

    /// `scores` replaced by `e^(s - max)`; returns their sum.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax_numerators(scores: &mut [f32]) -> f32 {
        let len = scores.len();
        let p = scores.as_mut_ptr();
        let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut j = 0;
        while j + 8 <= len {
            mv = _mm256_max_ps(mv, _mm256_loadu_ps(p.add(j)));
            j += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), mv);
        let max = lanes
            .iter()
            .chain(&scores[j..])
            .fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let (maxv, mut sv) = (_mm256_set1_ps(max), _mm256_setzero_ps());
        let mut j = 0;
        while j + 8 <= len {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(j)), maxv));
            _mm256_storeu_ps(p.add(j), e);
            sv = _mm256_add_ps(sv, e);
            j += 8;
        }
        _mm256_storeu_ps(lanes.as_mut_ptr(), sv);
        let mut sum: f32 = lanes.iter().sum();
        for s in &mut scores[j..] {
            *s = _mm256_cvtss_f32(exp8(_mm256_set1_ps(*s - max)));
            sum += *s;
        }
        sum
    }

    /// `out = softmax(q · kᵀ) · v` over the `len` rows of `k` and `v` (64 wide);
    /// `scores` has room for `len`. The rows of `next` (the keys the caller reads
    /// next, if any) are fetched during the second pass.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `q` and `out` are 64 long, `k` and `v` at
    /// least `64 * len`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend<T: Row64>(
        q: &[f32],
        k: &[T],
        v: &[T],
        next: &[T],
        len: usize,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let qv: [__m256; 8] = std::array::from_fn(|c| _mm256_loadu_ps(q.as_ptr().add(8 * c)));
        let kp = k.as_ptr();
        let dot = |j: usize| {
            let row = kp.add(64 * j);
            let mut a = _mm256_mul_ps(qv[0], T::load8(row, 0));
            for (c, q) in qv.iter().enumerate().skip(1) {
                a = _mm256_fmadd_ps(*q, T::load8(row, 8 * c), a);
            }
            a
        };
        // The value rows are wanted right after the keys: their lines are fetched
        // while the keys are dotted, so the two passes overlap with memory.
        let vb = v.as_ptr() as *const i8;
        let row_bytes = 64 * std::mem::size_of::<T>();
        let mut j = 0;
        while j + 4 <= len {
            let mut off = row_bytes * j;
            while off < row_bytes * (j + 4) {
                _mm_prefetch::<_MM_HINT_T0>(vb.add(off));
                off += 64;
            }
            let s = sum4(dot(j), dot(j + 1), dot(j + 2), dot(j + 3));
            _mm_storeu_ps(scores.as_mut_ptr().add(j), s);
            j += 4;
        }
        while j < len {
            let a = dot(j);
            let s = sum4(a, a, a, a);
            scores[j] = _mm_cvtss_f32(s);
            j += 1;
        }
        let scores = &mut scores[..len];
        let inv = 1.0 / softmax_numerators(scores);
        let vp = v.as_ptr();
        let (nb, next_rows) = (next.as_ptr() as *const i8, next.len() / 64);
        let mut acc = [_mm256_setzero_ps(); 8];
        for (j, &w) in scores.iter().enumerate() {
            if j < next_rows {
                let mut off = row_bytes * j;
                while off < row_bytes * (j + 1) {
                    _mm_prefetch::<_MM_HINT_T0>(nb.add(off));
                    off += 64;
                }
            }
            let w = _mm256_set1_ps(w * inv);
            let row = vp.add(64 * j);
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(w, T::load8(row, 8 * c), *a);
            }
        }
        for (c, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * c), *a);
        }
    }
}

/// `f` over `xs` eight values at a time, the last few in a padded copy.
///
/// # Safety
/// The CPU has the features `f` needs.
#[cfg(target_arch = "x86_64")]
unsafe fn by_eights(xs: &mut [f32], f: unsafe fn(&mut [f32])) {
    let mut chunks = xs.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: c is 8 long; the features are the caller's to state.
        unsafe { f(c) };
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut lane = [0f32; 8];
        lane[..rest.len()].copy_from_slice(rest);
        // SAFETY: as above.
        unsafe { f(&mut lane) };
        rest.copy_from_slice(&lane[..rest.len()]);
    }
}

/// GELU with erf, `0.5 x (1 + erf(x / √2))`, in place, computed as PyTorch's CPU
/// kernel does (`Vectorized<float>::erf`): erf from Abramowitz and Stegun 7.1.26,
/// `1 - t (a1 + t (a2 + ...)) e^(-u²)` with `t = 1 / (1 + p |u|)`, within 1.5e-7
/// of erf; e^x as [`attend64::exp8`]. Eight values a vector where the CPU has AVX2
/// and FMA, the same arithmetic one value at a time otherwise.
pub fn gelu_erf_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { by_eights(xs, attend64::gelu8) };
    }
    for v in xs {
        *v = gelu_erf_one(*v);
    }
}

/// ELU with alpha 1, `x` for `x > 0` and `e^x - 1` otherwise, in place: eight
/// values a vector with [`attend64::exp8`] where the CPU has AVX2 and FMA (e^x
/// within 2 ulp, as candle's scalar `exp` is within 1), one at a time otherwise.
pub fn elu_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { by_eights(xs, attend64::elu8) };
    }
    for v in xs {
        if *v <= 0.0 {
            *v = v.exp() - 1.0;
        }
    }
}

/// The constants of Abramowitz and Stegun 7.1.26: p, then a5 down to a1.
const AS_P: f32 = 0.327_591_1;
const AS_A: [f32; 5] = [
    1.061_405_4,
    -1.453_152,
    1.421_413_7,
    -0.284_496_74,
    0.254_829_6,
];

/// [`gelu_erf_in_place`] for one value, without vectors.
fn gelu_erf_one(x: f32) -> f32 {
    let u = x * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + AS_P * u.abs());
    let poly = AS_A.iter().fold(0f32, |acc, &a| acc * t + a) * t;
    let erf = (1.0 - poly * (-u * u).exp()).copysign(u);
    0.5 * x * (1.0 + erf)
}

fn has_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// An element type the KV cache may hold: f32, or f16 to halve what a step reads.
#[cfg(target_arch = "x86_64")]
pub trait KvElem: Copy + Send + Sync + 'static + attend64::Row64 {
    /// `q · row`, with `row` read as f32.
    fn dot(q: &[f32], row: &[Self]) -> f32;
    /// `out += w * row`, with `row` read as f32.
    fn axpy(w: f32, row: &[Self], out: &mut [f32]);
}

/// An element type the KV cache may hold: f32, or f16 to halve what a step reads.
#[cfg(not(target_arch = "x86_64"))]
pub trait KvElem: Copy + Send + Sync + 'static {
    /// `q · row`, with `row` read as f32.
    fn dot(q: &[f32], row: &[Self]) -> f32;
    /// `out += w * row`, with `row` read as f32.
    fn axpy(w: f32, row: &[Self], out: &mut [f32]);
}

impl KvElem for f32 {
    fn dot(q: &[f32], row: &[f32]) -> f32 {
        dot_auto(q, row)
    }

    fn axpy(w: f32, row: &[f32], out: &mut [f32]) {
        for (o, x) in out.iter_mut().zip(row) {
            *o += w * x;
        }
    }
}

impl KvElem for half::f16 {
    fn dot(q: &[f32], row: &[half::f16]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if has_f16c() {
            // SAFETY: the CPU has the features; the slices have equal lengths.
            return unsafe { f16c::dot(q, row) };
        }
        q.iter().zip(row).map(|(a, b)| a * b.to_f32()).sum()
    }

    fn axpy(w: f32, row: &[half::f16], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_f16c() {
            // SAFETY: the CPU has the features; the slices have equal lengths.
            return unsafe { f16c::axpy(w, row, out) };
        }
        for (o, x) in out.iter_mut().zip(row) {
            *o += w * x.to_f32();
        }
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
/// `y` is `m` rows of length `n`.
pub fn rows_times_transposed(
    workers: ComputeThreads,
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
) -> Vec<f32> {
    let mut y = Vec::new();
    rows_times_transposed_into(workers, x, m, w, n, k, &mut y);
    y
}

/// [`rows_times_transposed`] into `y` (resized to `m x n`, reused without
/// allocating once it has held that much).
pub fn rows_times_transposed_into(
    workers: ComputeThreads,
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    y: &mut Vec<f32>,
) {
    debug_assert_eq!(x.len(), m * k);
    debug_assert_eq!(w.len(), n * k);
    assert!(m <= MAX_ROWS, "{m} rows");
    y.clear();
    y.resize(m * n, 0.0);
    let tasks = n.div_ceil(ROWS_PER_TASK);
    let out = SharedOut(y.as_mut_ptr());
    on_compute_threads(workers, tasks, |range| {
        for t in range {
            let first = t * ROWS_PER_TASK;
            let rows = ROWS_PER_TASK.min(n - first);
            // One value per activation row for each weight row, then into place.
            let mut yt = [0f32; ROWS_PER_TASK * MAX_ROWS];
            task(
                x,
                m,
                k,
                &w[first * k..(first + rows) * k],
                &mut yt[..rows * m],
            );
            for j in 0..rows {
                for r in 0..m {
                    // SAFETY: task t alone writes columns [first, first + rows).
                    unsafe { out.slice(r * n + first + j, 1)[0] = yt[j * m + r] };
                }
            }
        }
    });
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
pub fn try_small_matmul(
    workers: ComputeThreads,
    x: &Tensor,
    weight: &Tensor,
) -> Result<Option<Tensor>> {
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
    let y = rows_times_transposed(workers, xv, m, wv, n, k);
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("x has a last dim") = n;
    Ok(Some(Tensor::from_vec(
        y,
        Shape::from(out_dims),
        x.device(),
    )?))
}

/// Dot product of two equal-length slices (AVX2 and FMA when present).
fn dot_auto(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA; the slices have equal lengths.
        return unsafe { avx2::dots(a, None, b) }.0;
    }
    dot(a, b)
}

/// Single-query attention straight from a KV cache buffer: for each of the
/// `pairs` (batch x heads), `softmax(q · Kᵀ) · V` over the first `len` cached
/// positions. `q` is `(pairs, dh)`, `k` and `v` are `(pairs, cap, dh)`. Reads
/// the cache once, with no copies of it.
#[allow(clippy::too_many_arguments)]
#[cfg(test)]
pub fn attend_one<T: KvElem>(
    workers: ComputeThreads,
    q: &[f32],
    k: &[T],
    v: &[T],
    pairs: usize,
    cap: usize,
    len: usize,
    dh: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; pairs * dh];
    attend_one_into(workers, q, k, v, pairs, cap, len, dh, &mut out);
    out
}

/// [`attend_one`] into `out` (`pairs x dh`).
#[allow(clippy::too_many_arguments)]
pub fn attend_one_into<T: KvElem>(
    workers: ComputeThreads,
    q: &[f32],
    k: &[T],
    v: &[T],
    pairs: usize,
    cap: usize,
    len: usize,
    dh: usize,
    out: &mut [f32],
) {
    assert_eq!(out.len(), pairs * dh);
    out.fill(0.0);
    let shared = SharedOut(out.as_mut_ptr());
    let run = |range: std::ops::Range<usize>| {
        for p in range.clone() {
            // SAFETY: pair p alone writes out[p * dh..(p + 1) * dh].
            let out = unsafe { shared.slice(p * dh, dh) };
            let at = p * cap * dh..(p * cap + len) * dh;
            // The next pair's keys, fetched during this pair's second pass.
            let next = if p + 1 < range.end {
                &k[at.start + cap * dh..at.end + cap * dh]
            } else {
                &[]
            };
            attend_pair(
                &q[p * dh..(p + 1) * dh],
                &k[at.clone()],
                &v[at],
                next,
                dh,
                out,
            );
        }
    };
    // A few positions (a text prompt's tokens, a take's first steps) take less
    // than handing the pairs to the other threads does.
    if pairs * len <= INLINE_ATTENTION {
        run(0..pairs);
    } else {
        on_compute_threads(workers, pairs, run);
    }
}

/// Pairs x positions up to which single-query attention runs on the calling thread.
const INLINE_ATTENTION: usize = 512;

fn attend_pair<T: KvElem>(q: &[f32], k: &[T], v: &[T], next: &[T], dh: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if dh == 64 && has_f16c() {
        thread_local! {
            // The scores of one pair, reused (a window's cache is at most a few
            // thousand positions).
            static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let len = k.len() / dh;
        let mut run = |scores: &mut Vec<f32>| {
            if scores.len() < len {
                scores.resize(len, 0.0);
            }
            // SAFETY: the CPU has the features; q and out are dh = 64 long, k and v
            // hold len rows of 64.
            unsafe { attend64::attend(q, k, v, next, len, scores, out) };
        };
        SCORES.with(|s| match s.try_borrow_mut() {
            Ok(mut scores) => run(&mut scores),
            Err(_) => run(&mut Vec::new()),
        });
        return;
    }
    let mut scores: Vec<f32> = k.chunks_exact(dh).map(|row| T::dot(q, row)).collect();
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    for (w, row) in scores.iter().zip(v.chunks_exact(dh)) {
        T::axpy(w * inv, row, out);
    }
}

/// `f` on `t`'s elements when `t` is a contiguous f32 tensor on the CPU.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        return None;
    }
    let (s, l) = t.storage_and_layout();
    let Storage::Cpu(s) = &*s else {
        return None;
    };
    contiguous_f32(s, l).map(f)
}

/// [`attend_one`] for `q` of `pairs` rows straight from cache tensors `k_all`,
/// `v_all` of shape `(batch, heads, cap, dh)` (f32 or f16, CPU, contiguous) with
/// `len` positions filled; `None` when they do not fit that.
pub fn attend_rows(
    workers: ComputeThreads,
    q: &[f32],
    pairs: usize,
    k_all: &Tensor,
    v_all: &Tensor,
    len: usize,
) -> Result<Option<Vec<f32>>> {
    let mut out = Vec::new();
    Ok(attend_rows_into(workers, q, pairs, k_all, v_all, len, &mut out)?.then_some(out))
}

/// [`attend_rows`] into `out` (resized to `pairs x dh`); false when the tensors
/// do not fit.
pub fn attend_rows_into(
    workers: ComputeThreads,
    q: &[f32],
    pairs: usize,
    k_all: &Tensor,
    v_all: &Tensor,
    len: usize,
    out: &mut Vec<f32>,
) -> Result<bool> {
    let (b, h, cap, dh) = k_all.dims4()?;
    if b * h != pairs || q.len() != pairs * dh || len == 0 || len > cap {
        return Ok(false);
    }
    let (ks, kl) = k_all.storage_and_layout();
    let (vs, vl) = v_all.storage_and_layout();
    let (Storage::Cpu(ks), Storage::Cpu(vs)) = (&*ks, &*vs) else {
        return Ok(false);
    };
    let (Some((k0, k1)), Some((v0, v1))) = (kl.contiguous_offsets(), vl.contiguous_offsets())
    else {
        return Ok(false);
    };
    out.clear();
    out.resize(pairs * dh, 0.0);
    match (ks, vs) {
        (CpuStorage::F32(k), CpuStorage::F32(v)) => {
            let (k, v) = (&k[k0..k1], &v[v0..v1]);
            attend_one_into(workers, q, k, v, pairs, cap, len, dh, out)
        }
        (CpuStorage::F16(k), CpuStorage::F16(v)) => {
            let (k, v) = (&k[k0..k1], &v[v0..v1]);
            attend_one_into(workers, q, k, v, pairs, cap, len, dh, out)
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// [`attend_rows`] for a query tensor `(batch, heads, 1, dh)`.
pub fn try_attend_one(
    workers: ComputeThreads,
    q: &Tensor,
    k_all: &Tensor,
    v_all: &Tensor,
    len: usize,
) -> Result<Option<Tensor>> {
    let (b, h, s, dh) = q.dims4()?;
    if s != 1 {
        return Ok(None);
    }
    let out = with_f32(q, |qv| attend_rows(workers, qv, b * h, k_all, v_all, len));
    match out {
        Some(Ok(Some(out))) => Ok(Some(Tensor::from_vec(out, (b, h, 1, dh), q.device())?)),
        Some(Err(e)) => Err(e),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_query_attention_matches_softmax_attention() {
        // 20 wide: the generic path; 64 wide: the register kernel, with lengths
        // whose keys do and do not come in whole fours.
        for (pairs, cap, len, dh) in [
            (3, 7, 5, 20),
            (3, 9, 7, 64),
            (2, 12, 12, 64),
            (2, 3, 1, 64),
            (1, 40, 37, 64),
            // Enough to run on the other threads too.
            (8, 100, 90, 64),
            (17, 64, 64, 64),
        ] {
            attention_case(pairs, cap, len, dh);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_exp_is_within_two_ulp() {
        if !has_f16c() {
            return;
        }
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let got = unsafe {
                use std::arch::x86_64::*;
                _mm256_cvtss_f32(attend64::exp8(_mm256_set1_ps(x)))
            };
            let want = (x as f64).exp();
            let ulp = (want as f32).to_bits().abs_diff(got.to_bits());
            worst = worst.max(ulp as f64);
            assert!(ulp <= 2, "exp({x}) = {got}, want {want}");
        }
        assert!(worst <= 2.0);
    }

    #[test]
    fn elu_is_exp_minus_one_below_zero_and_the_value_above() {
        let mut xs: Vec<f32> = (0..=40_001).map(|i| i as f32 * 5e-4 - 15.0).collect();
        xs.extend([-100.0, -1e-30, 0.0, 3.5, f32::NAN]);
        let mut got = xs.clone();
        elu_in_place(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            if x.is_nan() {
                assert!(g.is_nan());
            } else if x > 0.0 {
                assert_eq!(g, x);
            } else {
                // e^x within 2 ulp, then the subtraction's rounding near 1.
                let exact = (x as f64).exp_m1();
                assert!(
                    (g as f64 - exact).abs() <= 2.5e-7,
                    "elu({x}) = {g}, want {exact}"
                );
            }
        }
    }

    #[test]
    fn gelu_is_within_its_erf_bound_of_the_exact_value() {
        // -10..10 in steps of 1e-4, and a length with a partial last vector.
        let xs: Vec<f32> = (0..=200_001).map(|i| i as f32 * 1e-4 - 10.0).collect();
        let mut got = xs.clone();
        gelu_erf_in_place(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let x64 = x as f64;
            let exact =
                0.5 * x64 * (1.0 + candle_core::cpu::erf::erf_f64(x64 / std::f64::consts::SQRT_2));
            // erf within 1.5e-7 (A&S 7.1.26) plus f32's rounding near 1 (1 + erf
            // cancels for negative x, as in PyTorch), the rest a few roundings.
            let bound = 0.5 * x64.abs() * 3e-7 + 4.0 * f32::EPSILON as f64 * exact.abs();
            assert!(
                (g as f64 - exact).abs() <= bound,
                "gelu({x}) = {g}, want {exact}"
            );
            // The vector and the one-value code agree to the vector exp's 2 ulp.
            let one = gelu_erf_one(x) as f64;
            assert!((g as f64 - one).abs() <= bound, "gelu({x}): {g} vs {one}");
        }
        assert_eq!(got[100_000], 0.0);
        let mut odd = [f32::NAN, -3.0, 3.0];
        gelu_erf_in_place(&mut odd);
        assert!(odd[0].is_nan());
        assert_eq!(odd[2] - odd[1], 3.0);
    }

    fn attention_case(pairs: usize, cap: usize, len: usize, dh: usize) {
        let q: Vec<f32> = (0..pairs * dh)
            .map(|i| ((i * 3) % 7) as f32 * 0.1 - 0.3)
            .collect();
        let k: Vec<f32> = (0..pairs * cap * dh)
            .map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5)
            .collect();
        let v: Vec<f32> = (0..pairs * cap * dh)
            .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
            .collect();
        let out = attend_one(ComputeThreads::Rayon, &q, &k, &v, pairs, cap, len, dh);
        // An f16 cache gives the same to f16 precision.
        let k16: Vec<half::f16> = k.iter().map(|&x| half::f16::from_f32(x)).collect();
        let v16: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
        let out16 = attend_one(ComputeThreads::Rayon, &q, &k16, &v16, pairs, cap, len, dh);
        for (a, b) in out.iter().zip(&out16) {
            assert!((a - b).abs() < 2e-3, "{a} vs {b}");
        }
        assert_eq!(
            out,
            attend_one(ComputeThreads::Candle, &q, &k, &v, pairs, cap, len, dh)
        );
        for p in 0..pairs {
            let scores: Vec<f64> = (0..len)
                .map(|t| {
                    (0..dh)
                        .map(|d| (q[p * dh + d] * k[(p * cap + t) * dh + d]) as f64)
                        .sum()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..dh {
                let want: f64 = (0..len)
                    .map(|t| e[t] / z * v[(p * cap + t) * dh + d] as f64)
                    .sum();
                assert!((out[p * dh + d] as f64 - want).abs() < 1e-5, "{p},{d}");
            }
        }
    }

    #[test]
    fn matches_a_plain_matmul() {
        // Lengths through each of the kernel's loops (32, 16 and single values).
        for (m, n, k) in [(3, 131, 77), (2, 40, 1024 + 16 + 3), (4, 17, 5)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5)
                .collect();
            let y = rows_times_transposed(ComputeThreads::Rayon, &x, m, &w, n, k);
            assert_eq!(
                y,
                rows_times_transposed(ComputeThreads::Candle, &x, m, &w, n, k)
            );
            for r in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                        .sum();
                    let got = y[r * n + j] as f64;
                    assert!((got - want).abs() < 1e-5 * k as f64, "{m} {k}: {r},{j}");
                }
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
        let got = try_small_matmul(ComputeThreads::Rayon, &x, &w)
            .unwrap()
            .unwrap();
        let want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        assert_eq!(got.dims(), &[2, 1, 3]);
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // Too many rows, or a transposed (non-contiguous) input: not this path.
        let many = Tensor::zeros((8, 4), DType::F32, &dev).unwrap();
        assert!(try_small_matmul(ComputeThreads::Rayon, &many, &w)
            .unwrap()
            .is_none());
        let wt = Tensor::zeros((4, 3), DType::F32, &dev)
            .unwrap()
            .t()
            .unwrap();
        assert!(try_small_matmul(ComputeThreads::Rayon, &x, &wt)
            .unwrap()
            .is_none());
    }
}

//! Quantized weight matrices times a few activation rows, on the CPU, at memory speed.
//!
//! A decoder step multiplies one or two activation rows by every matrix: its cost is
//! reading the weights once. The formats are ggml's q4k and q8_0 (the quantization,
//! and so the quality, is unchanged), repacked at load into a layout the kernels read
//! in straight lines:
//!
//! - **q4k**: per row, per 256-value block, the 4-bit values in 128 bytes ordered so
//!   that every 4-byte lane of a vector holds values of one sub-block, sub-block
//!   `lane % 8` (see [`q4k_pos`]): one vector of sub-block scales serves the whole
//!   block, and the products of a block add up in 16 bits before one multiply by the
//!   scales. Then the block's two f16 scales and eight 6-bit sub-block scales and mins
//!   unpacked to bytes (20 bytes, against ggml's 16: 4.625 bits a weight, not 4.5);
//! - **q8_0**: per row the 8-bit values plus 128 (so that VNNI's unsigned-by-signed
//!   byte product takes them as they are; the 128 is taken back per block through
//!   the activations' sums), interleaved by eight blocks so that lane `l` of every
//!   32-byte vector holds block `l` (see [`q8_0_pos`]): a block's products add up in
//!   its own integer lane, and the scales are applied once per eight blocks, not
//!   once per vector. Then the f16 scale of each 32 values.
//!
//! The activation rows are quantized as ggml does for these formats (q8_K: one scale
//! per 256 values, with sums per 32; q8_0: one scale per 32), and the products are
//! integer dot products, scaled per block: the same arithmetic as ggml's and candle's
//! `vec_dot`, in a different order of float additions.
//!
//! Three paths, chosen at run time: AVX-512 (F + BW, with VNNI's `vpdpwssd`/`vpdpbusd`
//! where present), AVX2 + FMA + F16C, and a portable scalar one, which is also the
//! reference the others are tested against.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use std::sync::atomic::{AtomicU8, Ordering};

/// Values per q4k block (ggml's `QK_K`).
pub const Q4K_BLOCK: usize = 256;
/// Values per q8_0 block.
pub const Q8_0_BLOCK: usize = 32;
/// Activation rows the kernels take at once.
pub const MAX_ROWS: usize = 4;

/// Bytes of one ggml q4k block: d, dmin (f16), 12 bytes of packed 6-bit scales, 128 of values.
const GGML_Q4K_BYTES: usize = 144;
/// Bytes of one ggml q8_0 block: d (f16), 32 values.
const GGML_Q8_0_BYTES: usize = 34;

/// Which kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Portable Rust, no SIMD intrinsics.
    Scalar,
    /// AVX2, FMA and F16C (256-bit).
    Avx2,
    /// AVX-512 F and BW (512-bit), without VNNI.
    Avx512,
    /// AVX-512 F, BW and VNNI.
    Avx512Vnni,
}

impl Level {
    /// The best this CPU runs.
    pub fn detected() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("fma") && has!("f16c") {
                return if has!("avx512vnni") {
                    Level::Avx512Vnni
                } else {
                    Level::Avx512
                };
            }
            if has!("avx2") && has!("fma") && has!("f16c") {
                return Level::Avx2;
            }
        }
        Level::Scalar
    }

    /// Every level this CPU runs, slowest first.
    pub fn available() -> Vec<Level> {
        let best = Level::detected();
        [Level::Scalar, Level::Avx2, Level::Avx512, Level::Avx512Vnni]
            .into_iter()
            .filter(|l| *l <= best)
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Avx512Vnni => "avx512-vnni",
        }
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(c: u8) -> Option<Level> {
        [Level::Scalar, Level::Avx2, Level::Avx512, Level::Avx512Vnni]
            .into_iter()
            .find(|l| l.code() == c)
    }
}

/// 0: not chosen yet; else `Level::code`.
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The level the engine uses: the CPU's best, unless [`set_level`] chose another.
pub fn level() -> Level {
    match Level::from_code(LEVEL.load(Ordering::Relaxed)) {
        Some(l) => l,
        None => {
            let l = Level::detected();
            LEVEL.store(l.code(), Ordering::Relaxed);
            l
        }
    }
}

/// Makes the engine use `l` (a benchmark's ablation); a level the CPU lacks is
/// lowered to the best it has.
pub fn set_level(l: Level) {
    LEVEL.store(l.min(Level::detected()).code(), Ordering::Relaxed);
}

/// A 64-byte line, so that rows of the packed values start on cache lines.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// Bytes on 64-byte alignment.
struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    fn zeroed(len: usize) -> Self {
        Self {
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: the lines are `len.div_ceil(64) * 64 >= len` plain bytes.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

/// One q4k block's scales: `value = d * sc[s] * q - dmin * mn[s]` for sub-block `s`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Q4KMeta {
    d: f16,
    dmin: f16,
    sc: [u8; 8],
    mn: [u8; 8],
}

/// The quantized format of a [`PackedMatrix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q4K,
    Q8_0,
}

/// An `n x k` weight matrix in q4k or q8_0, laid out for [`PackedMatrix::matmul`].
pub struct PackedMatrix {
    format: Format,
    n: usize,
    k: usize,
    /// q4k: `k / 2` bytes a row; q8_0: `k` bytes a row (i8).
    quants: AlignedBytes,
    /// q4k: `k / 256` per row.
    q4k_meta: Vec<Q4KMeta>,
    /// q8_0: `k / 32` per row.
    q8_scales: Vec<f16>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("format", &self.format)
            .field("n", &self.n)
            .field("k", &self.k)
            .finish()
    }
}

/// ggml's unpacking of the 6-bit scale and min of sub-block `j` of a q4k block.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

impl PackedMatrix {
    /// Repacks a 2-D q4k or q8_0 matrix on the CPU; `None` for any other.
    pub fn from_qtensor(q: &QTensor) -> candle_core::Result<Option<Self>> {
        let format = match q.dtype() {
            GgmlDType::Q4K => Format::Q4K,
            GgmlDType::Q8_0 => Format::Q8_0,
            _ => return Ok(None),
        };
        let Ok((n, k)) = q.shape().dims2() else {
            return Ok(None);
        };
        let data = q.data()?;
        Ok(Self::from_ggml(format, n, k, &data))
    }

    /// Repacks ggml blocks (`n` rows of `k` values, row-major); `None` if the sizes
    /// do not fit the format.
    pub fn from_ggml(format: Format, n: usize, k: usize, data: &[u8]) -> Option<Self> {
        match format {
            Format::Q4K => {
                if k == 0
                    || !k.is_multiple_of(Q4K_BLOCK)
                    || data.len() != n * k / Q4K_BLOCK * GGML_Q4K_BYTES
                {
                    return None;
                }
                let kb = k / Q4K_BLOCK;
                let mut quants = AlignedBytes::zeroed(n * k / 2);
                let mut meta = Vec::with_capacity(n * kb);
                let out = quants.as_mut_slice();
                for (b, block) in data.chunks_exact(GGML_Q4K_BYTES).enumerate() {
                    let d = f16::from_le_bytes([block[0], block[1]]);
                    let dmin = f16::from_le_bytes([block[2], block[3]]);
                    let scales = &block[4..16];
                    let qs = &block[16..];
                    let mut m = Q4KMeta {
                        d,
                        dmin,
                        ..Default::default()
                    };
                    for s in 0..8 {
                        (m.sc[s], m.mn[s]) = scale_min_k4(s, scales);
                    }
                    meta.push(m);
                    // ggml: 32-byte chunk c holds values 64c..64c+32 low, 64c+32.. high.
                    let mut v = [0u8; Q4K_BLOCK];
                    for c in 0..4 {
                        for j in 0..32 {
                            v[64 * c + j] = qs[32 * c + j] & 0x0F;
                            v[64 * c + 32 + j] = qs[32 * c + j] >> 4;
                        }
                    }
                    let dst = &mut out[b * 128..(b + 1) * 128];
                    for (i, &v) in v.iter().enumerate() {
                        let (byte, shift) = q4k_pos(i);
                        dst[byte] |= v << shift;
                    }
                }
                Some(Self {
                    format,
                    n,
                    k,
                    quants,
                    q4k_meta: meta,
                    q8_scales: Vec::new(),
                })
            }
            Format::Q8_0 => {
                if k == 0
                    || !k.is_multiple_of(Q8_0_BLOCK)
                    || data.len() != n * k / Q8_0_BLOCK * GGML_Q8_0_BYTES
                {
                    return None;
                }
                let nb = k / Q8_0_BLOCK;
                let mut quants = AlignedBytes::zeroed(n * k);
                let mut scales = Vec::with_capacity(n * nb);
                let out = quants.as_mut_slice();
                for (b, block) in data.chunks_exact(GGML_Q8_0_BYTES).enumerate() {
                    scales.push(f16::from_le_bytes([block[0], block[1]]));
                    let (row, first) = (b / nb * k, b % nb * Q8_0_BLOCK);
                    for (t, four) in block[2..].chunks_exact(4).enumerate() {
                        let at = row + q8_0_pos(first + 4 * t, k);
                        for (o, &v) in out[at..at + 4].iter_mut().zip(four) {
                            *o = v ^ 0x80;
                        }
                    }
                }
                Some(Self {
                    format,
                    n,
                    k,
                    quants,
                    q4k_meta: Vec::new(),
                    q8_scales: scales,
                })
            }
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// (rows, columns): `n` outputs of `k` inputs.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes one product reads.
    pub fn size_in_bytes(&self) -> usize {
        self.quants.len
            + self.q4k_meta.len() * std::mem::size_of::<Q4KMeta>()
            + self.q8_scales.len() * 2
    }

    /// The matrix in f32, `n x k` row-major, as candle dequantizes it.
    pub fn dequantize(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut out = vec![0f32; n * k];
        let q = self.quants.as_slice();
        match self.format {
            Format::Q4K => {
                for (b, (m, y)) in self
                    .q4k_meta
                    .iter()
                    .zip(out.chunks_exact_mut(Q4K_BLOCK))
                    .enumerate()
                {
                    let (d, dmin) = (m.d.to_f32(), m.dmin.to_f32());
                    let qs = &q[b * 128..(b + 1) * 128];
                    for (i, y) in y.iter_mut().enumerate() {
                        let s = i / 32;
                        let v = q4k_value(qs, i);
                        *y = d * m.sc[s] as f32 * v as f32 - dmin * m.mn[s] as f32;
                    }
                }
            }
            Format::Q8_0 => {
                for (i, y) in out.iter_mut().enumerate() {
                    let d = self.q8_scales[i / Q8_0_BLOCK].to_f32();
                    let v = q[i - i % k + q8_0_pos(i % k, k)];
                    *y = d * ((v ^ 0x80) as i8) as f32;
                }
            }
        }
        out
    }

    /// `y = x · selfᵀ` for `m <= MAX_ROWS` rows `x` of length `k`: `y` is `m` rows of
    /// `n`, split over candle's CPU workers (whose threads the engine's quantized
    /// precisions run on).
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        self.matmul_at(level(), x, m, y, true)
    }

    /// [`PackedMatrix::matmul`] at a given level, optionally on the calling thread only.
    pub fn matmul_at(&self, level: Level, x: &[f32], m: usize, y: &mut [f32], parallel: bool) {
        assert!((1..=MAX_ROWS).contains(&m), "{m} rows");
        assert_eq!(x.len(), m * self.k);
        assert_eq!(y.len(), m * self.n);
        let level = self.usable(level);
        thread_local! {
            // The activations' buffers, reused from product to product.
            static ACT: std::cell::RefCell<Activations> = std::cell::RefCell::new(
                Activations::quantize(Format::Q8_0, &[], 0, 32),
            );
        }
        ACT.with(|act| match act.try_borrow_mut() {
            Ok(mut act) => {
                act.quantize_into(level, self.format, x, m, self.k);
                self.matmul_quantized(level, &act, m, y, parallel)
            }
            // Re-entered on this thread (not done by the engine): fresh buffers.
            Err(_) => {
                let act = Activations::quantize(self.format, x, m, self.k);
                self.matmul_quantized(level, &act, m, y, parallel)
            }
        })
    }

    fn matmul_quantized(
        &self,
        level: Level,
        act: &Activations,
        m: usize,
        y: &mut [f32],
        parallel: bool,
    ) {
        debug_assert_eq!(y.len(), m * self.n);
        let out = SharedOut(y.as_mut_ptr());
        let task = |rows: std::ops::Range<usize>| {
            self.rows_dots(level, rows, act, &mut |i, dots| {
                for (r, d) in dots.iter().enumerate() {
                    // SAFETY: row i of the weights is this task's alone; y is m x n.
                    unsafe { out.write(r * self.n + i, *d) };
                }
            });
        };
        if !parallel {
            return task(0..self.n);
        }
        on_candle_workers(self.n.div_ceil(ROWS_PER_TASK), |tasks| {
            task(tasks.start * ROWS_PER_TASK..(tasks.end * ROWS_PER_TASK).min(self.n))
        });
    }

    /// `level`, lowered to one whose kernels take this matrix's shape.
    fn usable(&self, level: Level) -> Level {
        match (self.format, level) {
            // The 512-bit q8_0 kernel reads 16 blocks of scales at a time.
            (Format::Q8_0, Level::Avx512 | Level::Avx512Vnni) if !self.k.is_multiple_of(512) => {
                Level::Avx2.min(Level::detected())
            }
            _ => level.min(Level::detected()),
        }
    }

    /// Weight rows `range` dotted with each activation row, handed to `out` row
    /// by row.
    fn rows_dots(
        &self,
        level: Level,
        range: std::ops::Range<usize>,
        act: &Activations,
        out: &mut dyn FnMut(usize, &[f32]),
    ) {
        let q = self.quants.as_slice();
        let k = self.k;
        match self.format {
            Format::Q4K => {
                let (kb, meta) = (k / Q4K_BLOCK, &self.q4k_meta[..]);
                match level {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the level was detected on this CPU; the slices hold n rows.
                    Level::Avx512Vnni => unsafe { x86::q4k_512_vnni(q, meta, kb, range, act, out) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    Level::Avx512 => unsafe { x86::q4k_512(q, meta, kb, range, act, out) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    Level::Avx2 => unsafe { x86::q4k_256(q, meta, kb, range, act, out) },
                    _ => {
                        let mut dots = [0f32; MAX_ROWS];
                        for i in range {
                            let qs = &q[i * kb * 128..(i + 1) * kb * 128];
                            let dots = &mut dots[..act.rows()];
                            q4k_scalar(qs, &meta[i * kb..(i + 1) * kb], act, dots);
                            out(i, dots);
                        }
                    }
                }
            }
            Format::Q8_0 => {
                let sc = &self.q8_scales[..];
                match level {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the level was detected on this CPU (and k % 512 == 0,
                    // see `usable`); the slices hold n rows.
                    Level::Avx512Vnni => unsafe { x86::q8_0_512_vnni(q, sc, k, range, act, out) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    Level::Avx512 => unsafe { x86::q8_0_512(q, sc, k, range, act, out) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    Level::Avx2 => unsafe { x86::q8_0_256(q, sc, k, range, act, out) },
                    _ => {
                        let mut dots = [0f32; MAX_ROWS];
                        for i in range {
                            let dots = &mut dots[..act.rows()];
                            let sc = &sc[i * k / 32..(i + 1) * k / 32];
                            q8_0_scalar(&q[i * k..(i + 1) * k], sc, act, dots);
                            out(i, dots);
                        }
                    }
                }
            }
        }
    }
}

/// The threads of candle's CPU pool (read once: candle reads the environment and,
/// through `available_parallelism`, the cgroup files at every call).
fn pool_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| candle_core::utils::get_num_threads().max(1))
}

/// Runs `f` over `0..n` on candle's CPU workers, which take shares from a shared
/// cursor, two shares per thread: long runs of rows keep the prefetchers streaming
/// (musicgen-small layers in q4k, 2 cores: 2 shares 42.6 GB/s, 4: 41.0, 16: 35.8,
/// 32: 26.7), and a worker that wakes late leaves its second share to the others.
pub fn on_candle_workers(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let share = n.div_ceil(2 * pool_threads()).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    candle_core::utils::barrier_pool().execute(|_| loop {
        let start = next.fetch_add(share, Ordering::Relaxed);
        if start >= n {
            break;
        }
        f(start..(start + share).min(n));
    });
}

/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// Where value `i` (0..256) of a q4k block lies in the repacked block: the byte and
/// the nibble's shift. The block is four 64-value vectors (the low nibbles of bytes
/// 0..64, their high nibbles, then the same of bytes 64..128); byte `4 * l + t` of a
/// vector is lane `l`, and lanes `s` and `s + 8` hold sub-block `s`: vector `r` holds
/// values `8r..8r + 8` of each sub-block, four in each of its two lanes.
fn q4k_pos(i: usize) -> (usize, u8) {
    let (s, j) = (i / 32, i % 32);
    let (r, h, t) = (j / 8, (j % 8) / 4, j % 4);
    (64 * (r / 2) + 4 * (s + 8 * h) + t, 4 * (r % 2) as u8)
}

/// Values in a q8_0 interleaving group: eight blocks.
const Q8_0_GROUP: usize = 256;

/// Where value `i` of a q8_0 row of `k` values lies in the packed row (weights and
/// activations alike): in each whole group of eight blocks, values `4t` to `4t + 3`
/// of block `l` at `32 t + 4 l`, so that 4-byte lane `l` of each of the group's eight
/// 32-byte vectors holds block `l`; the blocks of a last, partial group stay in order.
fn q8_0_pos(i: usize, k: usize) -> usize {
    let g = i - i % Q8_0_GROUP;
    if g + Q8_0_GROUP > k {
        return i;
    }
    let (l, j) = ((i % Q8_0_GROUP) / 32, i % 32);
    g + 32 * (j / 4) + 4 * l + j % 4
}

/// Where value `i` of a 256-value block of activations lies in their quantized
/// row: vector `r` of [`q4k_pos`] is activation bytes `64r..64r + 64`, in the
/// same lane order.
fn q4k_act_pos(i: usize) -> usize {
    let (byte, shift) = q4k_pos(i);
    64 * (2 * (byte / 64) + (shift / 4) as usize) + byte % 64
}

/// `q4k_act_pos` for a whole block.
static Q4K_ACT_POS: [u8; Q4K_BLOCK] = {
    let mut t = [0u8; Q4K_BLOCK];
    let mut i = 0;
    while i < Q4K_BLOCK {
        let (s, j) = (i / 32, i % 32);
        let (r, h, u) = (j / 8, (j % 8) / 4, j % 4);
        // q4k_pos, then vector r's bytes at 64r.
        t[i] = (64 * r + 4 * (s + 8 * h) + u) as u8;
        i += 1;
    }
    t
};

/// The largest magnitude (a loop the compiler vectorizes).
fn abs_max(xs: &[f32]) -> f32 {
    xs.iter()
        .fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m })
}

/// `x` rounded to the nearest integer, ties to even, for |x| < 2^22 (ggml's
/// `nearest_int`: adding 1.5 * 2^23 leaves the integer in the low mantissa bits).
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Value `i` (0..256) of a repacked q4k block.
fn q4k_value(qs: &[u8], i: usize) -> u8 {
    let (byte, shift) = q4k_pos(i);
    (qs[byte] >> shift) & 0x0F
}

/// A pointer to the output, whose disjoint parts parallel tasks fill.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (see `matmul_at`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `i` is inside the buffer and written by no other task.
    unsafe fn write(&self, i: usize, v: f32) {
        // SAFETY: as the caller states.
        unsafe { *self.0.add(i) = v };
    }
}

/// One q8_K block (256 values, for q4k weights) as ggml quantizes it: scale
/// -max/127 with the sign of the largest magnitude, rounded to nearest (ties to
/// even, as ggml's `nearest_int`), stored in the lane order of the weights
/// (`q4k_act_pos`); each 32 values' sum (`bsums`) and the same times the scale
/// (`fsums`). Returns the scale (0 for a block of zeros, left all zero).
fn q8k_block(xs: &[f32], qs: &mut [i8], bsums: &mut [i16], fsums: &mut [f32]) -> f32 {
    let amax = abs_max(xs);
    if amax == 0.0 {
        return 0.0;
    }
    let max = *xs.iter().find(|v| v.abs() == amax).unwrap_or(&amax);
    let iscale = -127.0 / max;
    let d = 1.0 / iscale;
    let mut q = [0i8; Q4K_BLOCK];
    for (q, &v) in q.iter_mut().zip(xs) {
        *q = nearest_int(iscale * v).clamp(-128, 127) as i8;
    }
    for (s, chunk) in q.chunks_exact(32).enumerate() {
        let sum: i16 = chunk.iter().map(|&q| q as i16).sum();
        bsums[s] = sum;
        fsums[s] = d * sum as f32;
    }
    // q4k_act_pos keeps runs of 4: move 4-byte groups.
    for (g, four) in q.chunks_exact(4).enumerate() {
        let at = Q4K_ACT_POS[4 * g] as usize;
        qs[at..at + 4].copy_from_slice(four);
    }
    d
}

/// One q8_0 block (32 values) as ggml quantizes it: scale max/127, rounded to
/// nearest. Returns the scale and the sum of the quantized values.
fn q8_0_block(xs: &[f32], qs: &mut [i8]) -> (f32, i32) {
    let d = abs_max(xs) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(xs) {
        *q = nearest_int(v * id) as i8;
        sum += *q as i32;
    }
    (d, sum)
}

/// Activation rows quantized for one format.
pub struct Activations {
    k: usize,
    /// `m x k` values.
    qs: Vec<i8>,
    /// q4k (q8_K): one scale per 256 values. q8_0: one per 32.
    d: Vec<f32>,
    /// q4k: the sum of each 32 values (`m x k / 32`), and the same times the block's
    /// scale (`fsums`, what the mins are multiplied by).
    bsums: Vec<i16>,
    fsums: Vec<f32>,
    /// q8_0: the sum of each block's quantized values, what the weights' +128
    /// multiplies.
    isums: Vec<i32>,
}

impl Activations {
    /// Quantizes `m` rows of `k` values as ggml does for `format`'s dot product.
    pub fn quantize(format: Format, x: &[f32], m: usize, k: usize) -> Self {
        let mut a = Activations {
            k,
            qs: Vec::new(),
            d: Vec::new(),
            bsums: Vec::new(),
            fsums: Vec::new(),
            isums: Vec::new(),
        };
        a.quantize_into(level(), format, x, m, k);
        a
    }

    /// [`Activations::quantize`] into these buffers, which grow to the largest
    /// rows they have held and are then reused, with `level`'s code (every level
    /// gives the same values).
    fn quantize_into(&mut self, level: Level, format: Format, x: &[f32], m: usize, k: usize) {
        fn zeroed<T: Copy>(v: &mut Vec<T>, len: usize, zero: T) {
            v.clear();
            v.resize(len, zero);
        }
        let a = self;
        a.k = k;
        zeroed(&mut a.qs, m * k, 0);
        match format {
            Format::Q4K => {
                // q8_K: scale -max/127 with the sign of the largest magnitude, rounded
                // to nearest (ties to even, as ggml's `nearest_int`); stored in the
                // lane order of the weights (`q4k_act_pos`).
                zeroed(&mut a.d, m * k / Q4K_BLOCK, 0.0);
                zeroed(&mut a.bsums, m * k / 32, 0);
                zeroed(&mut a.fsums, m * k / 32, 0.0);
                for (b, (xs, qs)) in x
                    .chunks_exact(Q4K_BLOCK)
                    .zip(a.qs.chunks_exact_mut(Q4K_BLOCK))
                    .enumerate()
                {
                    let (bsums, fsums) = (
                        &mut a.bsums[b * 8..b * 8 + 8],
                        &mut a.fsums[b * 8..b * 8 + 8],
                    );
                    a.d[b] = match level {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: the level was detected on this CPU; the slices
                        // hold a block.
                        Level::Avx512 | Level::Avx512Vnni => unsafe {
                            x86::q8k_block_512(xs, qs, bsums, fsums)
                        },
                        _ => q8k_block(xs, qs, bsums, fsums),
                    };
                }
            }
            Format::Q8_0 => {
                let nb = k / Q8_0_BLOCK;
                zeroed(&mut a.d, m * nb, 0.0);
                zeroed(&mut a.isums, m * nb, 0);
                for (b, xs) in x.chunks_exact(Q8_0_BLOCK).enumerate() {
                    let mut qs = [0i8; Q8_0_BLOCK];
                    let (d, sum) = match level {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: the level was detected on this CPU; the slices
                        // hold a block.
                        Level::Avx512 | Level::Avx512Vnni => unsafe {
                            x86::q8_0_block_512(xs, &mut qs)
                        },
                        _ => q8_0_block(xs, &mut qs),
                    };
                    a.d[b] = d;
                    a.isums[b] = sum;
                    // In the weights' order (`q8_0_pos` keeps runs of 4).
                    let (row, first) = (b / nb * k, b % nb * Q8_0_BLOCK);
                    for (t, four) in qs.chunks_exact(4).enumerate() {
                        let at = row + q8_0_pos(first + 4 * t, k);
                        a.qs[at..at + 4].copy_from_slice(four);
                    }
                }
            }
        }
    }

    fn rows(&self) -> usize {
        self.qs.len() / self.k
    }

    fn row(&self, r: usize) -> &[i8] {
        &self.qs[r * self.k..(r + 1) * self.k]
    }
}

/// The reference q4k kernel: integer sums per sub-block, scaled per block.
fn q4k_scalar(qs: &[u8], meta: &[Q4KMeta], act: &Activations, dots: &mut [f32]) {
    let kb = meta.len();
    for (r, dot) in dots.iter_mut().enumerate() {
        let a = act.row(r);
        let mut sum = 0f32;
        for (b, m) in meta.iter().enumerate() {
            let block = &qs[b * 128..(b + 1) * 128];
            let (mut sumi, mut summ) = (0i32, 0i32);
            for s in 0..8 {
                let mut si = 0i32;
                for j in 0..32 {
                    let i = s * 32 + j;
                    let x = a[b * Q4K_BLOCK + q4k_act_pos(i)];
                    si += q4k_value(block, i) as i32 * x as i32;
                }
                sumi += m.sc[s] as i32 * si;
                summ += m.mn[s] as i32 * act.bsums[(r * kb + b) * 8 + s] as i32;
            }
            let da = act.d[r * kb + b];
            sum += m.d.to_f32() * da * sumi as f32 - m.dmin.to_f32() * da * summ as f32;
        }
        *dot = sum;
    }
}

/// The reference q8_0 kernel: integer sums per block, scaled per block.
fn q8_0_scalar(qs: &[u8], scales: &[f16], act: &Activations, dots: &mut [f32]) {
    let (k, nb) = (act.k, scales.len());
    for (r, dot) in dots.iter_mut().enumerate() {
        let a = act.row(r);
        let mut sum = 0f32;
        let mut b = 0;
        while b < nb {
            // A whole group of eight blocks (`q8_0_pos`: block (i % 32) / 4 at i),
            // or one block of a last, partial group.
            let start = b * Q8_0_BLOCK;
            let whole = start + Q8_0_GROUP <= k;
            let blocks = if whole { 8 } else { 1 };
            let mut si = [0i32; 8];
            let span = start..start + blocks * Q8_0_BLOCK;
            for (vw, va) in qs[span.clone()]
                .chunks_exact(32)
                .zip(a[span].chunks_exact(32))
            {
                for (l, (w4, a4)) in vw.chunks_exact(4).zip(va.chunks_exact(4)).enumerate() {
                    let l = if whole { l } else { 0 };
                    for (&w, &x) in w4.iter().zip(a4) {
                        si[l] += ((w ^ 0x80) as i8) as i32 * x as i32;
                    }
                }
            }
            for (l, si) in si[..blocks].iter().enumerate() {
                sum += scales[b + l].to_f32() * act.d[r * nb + b + l] * *si as f32;
            }
            b += blocks;
        }
        *dot = sum;
    }
}

// The kernels are unsafe for their CPU features and their pointer loads, whose
// bounds follow from the row slices they are given (whole rows of a matrix whose
// shape the format accepted) and the activations quantized for that shape.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_op_in_unsafe_fn, clippy::needless_range_loop)]
mod x86 {
    use super::{Activations, Q4KMeta, MAX_ROWS};
    use half::f16;
    use std::arch::x86_64::*;

    /// The low 4 lanes of a 128-bit float vector, summed.
    #[target_feature(enable = "avx2")]
    unsafe fn hsum128(v: __m128) -> f32 {
        let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2")]
    unsafe fn hsum256(v: __m256) -> f32 {
        hsum128(_mm_add_ps(
            _mm256_castps256_ps128(v),
            _mm256_extractf128_ps(v, 1),
        ))
    }

    /// The largest magnitude of `xs` (16 values a vector): `max(|v|, m)` keeps `m`
    /// for a NaN, as `abs_max` does.
    #[target_feature(enable = "avx512f")]
    unsafe fn abs_max_512(xs: &[f32]) -> f32 {
        let mut m = _mm512_setzero_ps();
        for c in xs.chunks_exact(16) {
            let v = _mm512_abs_ps(_mm512_loadu_ps(c.as_ptr()));
            m = _mm512_max_ps(v, m);
        }
        _mm512_reduce_max_ps(m)
    }

    /// ggml's `nearest_int` of 16 values at once (see `super::nearest_int`).
    #[target_feature(enable = "avx512f")]
    unsafe fn nearest_int_512(x: __m512) -> __m512i {
        let v = _mm512_add_ps(x, _mm512_set1_ps(12_582_912.0));
        _mm512_sub_epi32(
            _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x007f_ffff)),
            _mm512_set1_epi32(0x0040_0000),
        )
    }

    /// `super::q8k_block`, 16 values at a time: the same operations on each value.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn q8k_block_512(
        xs: &[f32],
        qs: &mut [i8],
        bsums: &mut [i16],
        fsums: &mut [f32],
    ) -> f32 {
        assert!(xs.len() == 256 && qs.len() == 256 && bsums.len() == 8 && fsums.len() == 8);
        let amax = abs_max_512(xs);
        if amax == 0.0 {
            return 0.0;
        }
        // The first value of that magnitude gives the sign.
        let target = _mm512_set1_ps(amax);
        let mut max = amax;
        for (c, v) in xs.chunks_exact(16).enumerate() {
            let hit = _mm512_cmpeq_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(v.as_ptr())), target);
            if hit != 0 {
                max = xs[16 * c + hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let d = 1.0 / iscale;
        let is = _mm512_set1_ps(iscale);
        let (lo, hi) = (_mm512_set1_epi32(-128), _mm512_set1_epi32(127));
        for s in 0..8 {
            let mut sum = _mm512_setzero_si512();
            for half in 0..2 {
                let c = 2 * s + half;
                let v = _mm512_loadu_ps(xs.as_ptr().add(16 * c));
                let q = _mm512_min_epi32(
                    _mm512_max_epi32(nearest_int_512(_mm512_mul_ps(is, v)), lo),
                    hi,
                );
                sum = _mm512_add_epi32(sum, q);
                // Values 16c..16c + 16: four runs of 4, each to its place in the
                // lane order (`Q4K_ACT_POS`).
                let bytes: [u32; 4] = std::mem::transmute(_mm512_cvtepi32_epi8(q));
                for (g, four) in bytes.iter().enumerate() {
                    let at = super::Q4K_ACT_POS[16 * c + 4 * g] as usize;
                    std::ptr::write_unaligned(qs.as_mut_ptr().add(at) as *mut u32, *four);
                }
            }
            let total = _mm512_reduce_add_epi32(sum);
            bsums[s] = total as i16;
            fsums[s] = d * total as f32;
        }
        d
    }

    /// `super::q8_0_block`, 16 values at a time.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn q8_0_block_512(xs: &[f32], qs: &mut [i8]) -> (f32, i32) {
        assert!(xs.len() == 32 && qs.len() == 32);
        let v = [
            _mm512_loadu_ps(xs.as_ptr()),
            _mm512_loadu_ps(xs.as_ptr().add(16)),
        ];
        let m = _mm512_max_ps(
            _mm512_abs_ps(v[1]),
            _mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_setzero_ps()),
        );
        let d = _mm512_reduce_max_ps(m) / 127.0;
        let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let q = v.map(|v| nearest_int_512(_mm512_mul_ps(v, id)));
        _mm_storeu_si128(qs.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(q[0]));
        _mm_storeu_si128(
            qs.as_mut_ptr().add(16) as *mut __m128i,
            _mm512_cvtepi32_epi8(q[1]),
        );
        (d, _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1])))
    }

    /// d and dmin of a block, as f32.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn d_dmin(m: &Q4KMeta) -> (f32, f32) {
        let bits = (m.d.to_bits() as i32) | ((m.dmin.to_bits() as i32) << 16);
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1)))
    }

    macro_rules! q4k_512 {
        ($name:ident, $feat:literal, $dp:ident) => {
            /// q4k row times up to 4 activation rows, 512 bits at a time.
            #[target_feature(enable = $feat)]
            pub unsafe fn $name(
                qs_all: &[u8],
                meta_all: &[Q4KMeta],
                kb: usize,
                range: std::ops::Range<usize>,
                act: &Activations,
                out: &mut dyn FnMut(usize, &[f32]),
            ) {
                let rows = act.rows();
                let mask = _mm512_set1_epi8(0x0F);
                // i16 lane j takes the scale of sub-block (j / 2) % 8.
                let mut lanes = [0i16; 32];
                for (j, l) in lanes.iter_mut().enumerate() {
                    *l = ((j / 2) % 8) as i16;
                }
                let idx = _mm512_loadu_si512(lanes.as_ptr() as *const _);
                let mut dots = [0f32; MAX_ROWS];
                for i in range {
                    let qs = &qs_all[i * kb * 128..(i + 1) * kb * 128];
                    let meta = &meta_all[i * kb..(i + 1) * kb];
                    let mut acc = [_mm512_setzero_ps(); MAX_ROWS];
                    let mut macc = [_mm256_setzero_ps(); MAX_ROWS];
                    for (b, m) in meta.iter().enumerate() {
                        let sc16 =
                            _mm_cvtepu8_epi16(_mm_loadl_epi64(m.sc.as_ptr() as *const __m128i));
                        let sc = _mm512_permutexvar_epi16(idx, _mm512_castsi128_si512(sc16));
                        // i32 lane i takes the scale of sub-block i % 8.
                        let sc32 = _mm512_broadcast_i64x4(_mm256_cvtepu16_epi32(sc16));
                        let (d, dmin) = d_dmin(m);
                        let mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            m.mn.as_ptr() as *const __m128i,
                        )));
                        let mn = _mm256_mul_ps(mn, _mm256_set1_ps(dmin));
                        let dv = _mm512_set1_ps(d);
                        let p = qs.as_ptr().add(b * 128);
                        let w0 = _mm512_loadu_si512(p as *const _);
                        let w1 = _mm512_loadu_si512(p.add(64) as *const _);
                        let v0 = _mm512_and_si512(w0, mask);
                        let v1 = _mm512_and_si512(_mm512_srli_epi16(w0, 4), mask);
                        let v2 = _mm512_and_si512(w1, mask);
                        let v3 = _mm512_and_si512(_mm512_srli_epi16(w1, 4), mask);
                        for r in 0..rows {
                            let a = act.qs.as_ptr().add(r * act.k + b * 256);
                            let isum = $dp([v0, v1, v2, v3], a, sc, sc32);
                            let da = _mm512_set1_ps(*act.d.get_unchecked(r * kb + b));
                            acc[r] = _mm512_fmadd_ps(
                                _mm512_cvtepi32_ps(isum),
                                _mm512_mul_ps(dv, da),
                                acc[r],
                            );
                            let fs = _mm256_loadu_ps(act.fsums.as_ptr().add((r * kb + b) * 8));
                            macc[r] = _mm256_fmadd_ps(mn, fs, macc[r]);
                        }
                    }
                    for r in 0..rows {
                        dots[r] = _mm512_reduce_add_ps(acc[r]) - hsum256(macc[r]);
                    }
                    out(i, &dots[..rows]);
                }
            }
        };
    }

    /// A q4k block's sub-block sums times their scales, per i32 lane, for activations
    /// `a` (256 bytes in lane order): VNNI's byte dot products, one multiply.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn isum_vnni(v: [__m512i; 4], a: *const i8, _sc: __m512i, sc32: __m512i) -> __m512i {
        let ld = |o: usize| _mm512_loadu_si512(a.add(o) as *const _);
        let mut s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v[0], ld(0));
        s = _mm512_dpbusd_epi32(s, v[1], ld(64));
        s = _mm512_dpbusd_epi32(s, v[2], ld(128));
        s = _mm512_dpbusd_epi32(s, v[3], ld(192));
        _mm512_mullo_epi32(s, sc32)
    }

    /// The same without VNNI: each product is at most 2 * 15 * 128, so the four
    /// vectors' pair sums add up in 16 bits before one multiply-add by the scales.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn isum_plain(v: [__m512i; 4], a: *const i8, sc: __m512i, _sc32: __m512i) -> __m512i {
        let ld = |o: usize| _mm512_loadu_si512(a.add(o) as *const _);
        let p01 = _mm512_add_epi16(
            _mm512_maddubs_epi16(v[0], ld(0)),
            _mm512_maddubs_epi16(v[1], ld(64)),
        );
        let p23 = _mm512_add_epi16(
            _mm512_maddubs_epi16(v[2], ld(128)),
            _mm512_maddubs_epi16(v[3], ld(192)),
        );
        _mm512_madd_epi16(_mm512_add_epi16(p01, p23), sc)
    }

    q4k_512!(
        q4k_512_vnni,
        "avx512f,avx512bw,avx512vnni,avx2,fma,f16c",
        isum_vnni
    );
    q4k_512!(q4k_512, "avx512f,avx512bw,avx2,fma,f16c", isum_plain);

    /// q4k row times up to 4 activation rows, 256 bits at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4k_256(
        qs_all: &[u8],
        meta_all: &[Q4KMeta],
        kb: usize,
        range: std::ops::Range<usize>,
        act: &Activations,
        out: &mut dyn FnMut(usize, &[f32]),
    ) {
        let rows = act.rows();
        let mask = _mm256_set1_epi8(0x0F);
        let mut dots = [0f32; MAX_ROWS];
        for i in range {
            let qs = &qs_all[i * kb * 128..(i + 1) * kb * 128];
            let meta = &meta_all[i * kb..(i + 1) * kb];
            let mut acc = [_mm256_setzero_ps(); MAX_ROWS];
            let mut macc = [_mm256_setzero_ps(); MAX_ROWS];
            for (b, m) in meta.iter().enumerate() {
                // i16 lane j takes the scale of sub-block j / 2.
                let sc16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(m.sc.as_ptr() as *const __m128i));
                let sc = _mm256_set_m128i(
                    _mm_unpackhi_epi16(sc16, sc16),
                    _mm_unpacklo_epi16(sc16, sc16),
                );
                let (d, dmin) = d_dmin(m);
                let mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    m.mn.as_ptr() as *const __m128i
                )));
                let mn = _mm256_mul_ps(mn, _mm256_set1_ps(dmin));
                let dv = _mm256_set1_ps(d);
                let p = qs.as_ptr().add(b * 128);
                let w = [
                    _mm256_loadu_si256(p as *const _),
                    _mm256_loadu_si256(p.add(32) as *const _),
                    _mm256_loadu_si256(p.add(64) as *const _),
                    _mm256_loadu_si256(p.add(96) as *const _),
                ];
                let lo = w.map(|w| _mm256_and_si256(w, mask));
                let hi = w.map(|w| _mm256_and_si256(_mm256_srli_epi16(w, 4), mask));
                for r in 0..rows {
                    let a = act.qs.as_ptr().add(r * act.k + b * 256);
                    let ld = |o: usize| _mm256_loadu_si256(a.add(o) as *const _);
                    // Eight products of at most 2 * 15 * 128 add up in 16 bits.
                    // Half h of 64-byte load l: its low nibbles are vector 2l, high 2l + 1.
                    let mut p16 = _mm256_maddubs_epi16(lo[0], ld(0));
                    p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(lo[1], ld(32)));
                    p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(hi[0], ld(64)));
                    p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(hi[1], ld(96)));
                    p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(lo[2], ld(128)));
                    p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(lo[3], ld(160)));
                    p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(hi[2], ld(192)));
                    p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(hi[3], ld(224)));
                    let isum = _mm256_madd_epi16(p16, sc);
                    let da = _mm256_set1_ps(*act.d.get_unchecked(r * kb + b));
                    acc[r] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dv, da), acc[r]);
                    let fs = _mm256_loadu_ps(act.fsums.as_ptr().add((r * kb + b) * 8));
                    macc[r] = _mm256_fmadd_ps(mn, fs, macc[r]);
                }
            }
            for r in 0..rows {
                dots[r] = hsum256(acc[r]) - hsum256(macc[r]);
            }
            out(i, &dots[..rows]);
        }
    }

    /// Calls `$f::<R>` with `R` the number of activation rows (1 to 4), so that the
    /// kernels keep each row's sums in registers.
    macro_rules! by_rows {
        ($rows:expr, $f:ident($($arg:expr),*)) => {
            match $rows {
                1 => $f::<1>($($arg),*),
                2 => $f::<2>($($arg),*),
                3 => $f::<3>($($arg),*),
                _ => $f::<4>($($arg),*),
            }
        };
    }

    macro_rules! q8_0_512 {
        ($name:ident, $rows_fn:ident, $feat:literal, $vnni:literal) => {
            /// q8_0 row (k a multiple of 512) times up to 4 activation rows, two
            /// groups of eight blocks at a time.
            pub unsafe fn $name(
                qs_all: &[u8],
                scales_all: &[f16],
                k: usize,
                range: std::ops::Range<usize>,
                act: &Activations,
                out: &mut dyn FnMut(usize, &[f32]),
            ) {
                by_rows!(act.rows(), $rows_fn(qs_all, scales_all, k, range, act, out))
            }

            /// A 64-byte vector of a group holds its even 32-byte vector in lanes
            /// 0-7 and its odd one in lanes 8-15: both halves sum block `lane % 8`.
            /// With VNNI the stored (+128) bytes are its unsigned operand as they
            /// are (the 128 taken back through the activations' sums); without, the
            /// weights' magnitudes times the activations with the weights' signs
            /// (pairs within 16 bits).
            #[target_feature(enable = $feat)]
            unsafe fn $rows_fn<const R: usize>(
                qs_all: &[u8],
                scales_all: &[f16],
                k: usize,
                range: std::ops::Range<usize>,
                act: &Activations,
                out: &mut dyn FnMut(usize, &[f32]),
            ) {
                assert!(qs_all.len() >= range.end * k && act.qs.len() >= R * k);
                let nb = k / 32;
                let zero = _mm512_setzero_si512();
                let (flip, ones) = (_mm512_set1_epi8(-128), _mm512_set1_epi16(1));
                let (aq, ad, ai) = (act.qs.as_ptr(), act.d.as_ptr(), act.isums.as_ptr());
                for i in range {
                    let qs = qs_all.as_ptr().add(i * k);
                    let scales = scales_all.as_ptr().add(i * nb);
                    let mut acc = [_mm512_setzero_ps(); R];
                    for c in 0..k / 512 {
                        let mut sums = [[zero; 2]; R];
                        for h in 0..2 {
                            for v in 0..4 {
                                let off = 512 * c + 256 * h + 64 * v;
                                let w = _mm512_loadu_si512(qs.add(off) as *const _);
                                if $vnni {
                                    for r in 0..R {
                                        let a = _mm512_loadu_si512(aq.add(r * k + off) as *const _);
                                        sums[r][h] = _mm512_dpbusd_epi32(sums[r][h], w, a);
                                    }
                                } else {
                                    let w = _mm512_xor_si512(w, flip);
                                    let (aw, neg) = (_mm512_abs_epi8(w), _mm512_movepi8_mask(w));
                                    for r in 0..R {
                                        let a = _mm512_loadu_si512(aq.add(r * k + off) as *const _);
                                        let a = _mm512_mask_sub_epi8(a, neg, zero, a);
                                        let p =
                                            _mm512_madd_epi16(_mm512_maddubs_epi16(aw, a), ones);
                                        sums[r][h] = _mm512_add_epi32(sums[r][h], p);
                                    }
                                }
                            }
                        }
                        let dw =
                            _mm512_cvtph_ps(_mm256_loadu_si256(scales.add(16 * c) as *const _));
                        for r in 0..R {
                            // Both halves of each group added: blocks 16c..16c + 16 in order.
                            let [g0, g1] = sums[r];
                            let mut s = _mm512_add_epi32(
                                _mm512_shuffle_i32x4(g0, g1, 0x44),
                                _mm512_shuffle_i32x4(g0, g1, 0xEE),
                            );
                            if $vnni {
                                let isum = _mm512_loadu_si512(ai.add(r * nb + 16 * c) as *const _);
                                s = _mm512_sub_epi32(s, _mm512_slli_epi32(isum, 7));
                            }
                            let da = _mm512_loadu_ps(ad.add(r * nb + 16 * c));
                            acc[r] = _mm512_fmadd_ps(
                                _mm512_cvtepi32_ps(s),
                                _mm512_mul_ps(dw, da),
                                acc[r],
                            );
                        }
                    }
                    let mut dots = [0f32; R];
                    for r in 0..R {
                        dots[r] = _mm512_reduce_add_ps(acc[r]);
                    }
                    out(i, &dots);
                }
            }
        };
    }

    q8_0_512!(
        q8_0_512_vnni,
        q8_0_512_vnni_rows,
        "avx512f,avx512bw,avx512vnni,avx2,fma,f16c",
        true
    );
    q8_0_512!(
        q8_0_512,
        q8_0_512_rows,
        "avx512f,avx512bw,avx2,fma,f16c",
        false
    );

    /// q8_0 row times up to 4 activation rows, 256 bits at a time: a group's eight
    /// 32-byte vectors summed per block in their lanes, then a last, partial group
    /// block by block.
    pub unsafe fn q8_0_256(
        qs_all: &[u8],
        scales_all: &[f16],
        k: usize,
        range: std::ops::Range<usize>,
        act: &Activations,
        out: &mut dyn FnMut(usize, &[f32]),
    ) {
        by_rows!(
            act.rows(),
            q8_0_256_rows(qs_all, scales_all, k, range, act, out)
        )
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_256_rows<const R: usize>(
        qs_all: &[u8],
        scales_all: &[f16],
        k: usize,
        range: std::ops::Range<usize>,
        act: &Activations,
        out: &mut dyn FnMut(usize, &[f32]),
    ) {
        assert!(qs_all.len() >= range.end * k && act.qs.len() >= R * k);
        let (nb, groups) = (k / 32, k / super::Q8_0_GROUP);
        let (ones, flip) = (_mm256_set1_epi16(1), _mm256_set1_epi8(-128));
        let (aq, ad) = (act.qs.as_ptr(), act.d.as_ptr());
        // The weights' magnitudes times the activations with the weights' signs.
        let dot = |w: __m256i, a: *const i8| {
            let a = _mm256_loadu_si256(a as *const _);
            _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w)),
                ones,
            )
        };
        for i in range {
            let qs = qs_all.as_ptr().add(i * k);
            let scales = scales_all.as_ptr().add(i * nb);
            let mut acc = [_mm256_setzero_ps(); R];
            for g in 0..groups {
                let mut sums = [_mm256_setzero_si256(); R];
                for t in 0..8 {
                    let off = 256 * g + 32 * t;
                    let w = _mm256_xor_si256(_mm256_loadu_si256(qs.add(off) as *const _), flip);
                    for r in 0..R {
                        sums[r] = _mm256_add_epi32(sums[r], dot(w, aq.add(r * k + off)));
                    }
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(scales.add(8 * g) as *const _));
                for r in 0..R {
                    let da = _mm256_loadu_ps(ad.add(r * nb + 8 * g));
                    acc[r] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[r]), _mm256_mul_ps(dw, da), acc[r]);
                }
            }
            for b in 8 * groups..nb {
                let w = _mm256_xor_si256(_mm256_loadu_si256(qs.add(32 * b) as *const _), flip);
                let bits = (*scales.add(b)).to_bits() as i32;
                let dw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)));
                for r in 0..R {
                    let s = _mm256_set1_ps(dw * *ad.add(r * nb + b));
                    let p = dot(w, aq.add(r * k + 32 * b));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[r]);
                }
            }
            let mut dots = [0f32; R];
            for r in 0..R {
                dots[r] = hsum256(acc[r]);
            }
            out(i, &dots);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Weights with a spread of row scales and an outlier per row, as trained
    /// matrices have.
    fn matrix(n: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        (0..n * k)
            .map(|i| {
                let row = (i / k) as f32;
                let v = next() * (0.02 + 0.01 * (row % 7.0));
                if i % k == (i / k * 37) % k {
                    v * 20.0
                } else {
                    v
                }
            })
            .collect()
    }

    fn pack(format: Format, w: &[f32], n: usize, k: usize) -> (PackedMatrix, QTensor) {
        let dtype = match format {
            Format::Q4K => GgmlDType::Q4K,
            Format::Q8_0 => GgmlDType::Q8_0,
        };
        let t = Tensor::from_slice(w, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        (PackedMatrix::from_qtensor(&q).unwrap().unwrap(), q)
    }

    #[test]
    fn repacking_keeps_candles_dequantized_values_exactly() {
        for format in [Format::Q4K, Format::Q8_0] {
            let (n, k) = (8, 512);
            let (p, q) = pack(format, &matrix(n, k, 1), n, k);
            let want: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(p.dequantize(), want, "{format:?}");
        }
    }

    #[test]
    fn every_level_matches_the_scalar_reference() {
        for format in [Format::Q4K, Format::Q8_0] {
            for (n, k) in [(48, 1024), (17, 512), (32, 4096), (16, 1536), (9, 1792)] {
                let w = matrix(n, k, n as u64 + k as u64);
                let (p, _) = pack(format, &w, n, k);
                for m in 1..=MAX_ROWS {
                    let x = matrix(m, k, 99 + m as u64);
                    let mut want = vec![0f32; m * n];
                    p.matmul_at(Level::Scalar, &x, m, &mut want, false);
                    for level in Level::available() {
                        let mut got = vec![0f32; m * n];
                        p.matmul_at(level, &x, m, &mut got, true);
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            // Only the order of float additions differs.
                            assert!(
                                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                                "{format:?} {level:?} n={n} k={k} m={m} [{i}]: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_level_quantizes_the_activations_alike() {
        let k = 1024;
        let mut x = matrix(3, k, 5);
        // Halves that round to even, a block of zeros, NaNs, a largest magnitude
        // that comes twice with both signs, and values that round to the limits.
        for (i, v) in x[..64].iter_mut().enumerate() {
            *v = (i as f32 - 32.0) * 0.5;
        }
        x[256..512].fill(0.0);
        x[600] = f32::NAN;
        x[700] = -3.0;
        x[710] = 3.0;
        x[1024 + 3] = f32::NAN;
        x[1024 + 300] = -1e-30;
        x[2048..2048 + 32].copy_from_slice(&[127.49; 32]);
        for format in [Format::Q4K, Format::Q8_0] {
            let mut want = Activations::quantize(format, &[], 0, 32);
            want.quantize_into(Level::Scalar, format, &x, 3, k);
            for level in Level::available() {
                let mut got = Activations::quantize(format, &[], 0, 32);
                got.quantize_into(level, format, &x, 3, k);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(got.qs, want.qs, "{format:?} {level:?}");
                assert_eq!(bits(&got.d), bits(&want.d), "{format:?} {level:?}");
                assert_eq!(got.bsums, want.bsums, "{format:?} {level:?}");
                assert_eq!(bits(&got.fsums), bits(&want.fsums), "{format:?} {level:?}");
                assert_eq!(got.isums, want.isums, "{format:?} {level:?}");
            }
            // The first values: the halves, rounded to even.
            if format == Format::Q8_0 {
                let at = |i| want.qs[q8_0_pos(i, k)];
                assert_eq!([at(30), at(31), at(32), at(33)], [-8, -4, 0, 4]);
            }
        }
    }

    #[test]
    fn products_are_close_to_the_dequantized_matrix_times_the_float_rows() {
        // What quantizing the activations costs: well under a percent of the row norm.
        for format in [Format::Q4K, Format::Q8_0] {
            let (n, k, m) = (32, 1024, 2);
            let (p, _) = pack(format, &matrix(n, k, 5), n, k);
            let x = matrix(m, k, 6);
            let wd = p.dequantize();
            let mut y = vec![0f32; m * n];
            p.matmul(&x, m, &mut y);
            for r in 0..m {
                let xr = &x[r * k..(r + 1) * k];
                let xnorm = xr.iter().map(|v| v * v).sum::<f32>().sqrt();
                for i in 0..n {
                    let wr = &wd[i * k..(i + 1) * k];
                    let exact: f32 = wr.iter().zip(xr).map(|(a, b)| a * b).sum();
                    let wnorm = wr.iter().map(|v| v * v).sum::<f32>().sqrt();
                    let err = (y[r * n + i] - exact).abs();
                    assert!(
                        err <= 0.01 * wnorm * xnorm,
                        "{format:?} [{r},{i}]: {} vs {exact}",
                        y[r * n + i]
                    );
                }
            }
        }
    }

    #[test]
    fn agrees_with_candles_quantized_matmul() {
        // q4k: candle runs ggml's q4k x q8_K dot product, the same integer sums, so
        // only rounding differs. q8_0: candle quantizes the activations per 256
        // values on AVX-512 VNNI machines, ggml (and this) per 32: this must be at
        // least as close to the exact product of the dequantized weights.
        for format in [Format::Q4K, Format::Q8_0] {
            let (n, k, m) = (64, 1024, 2);
            let w = matrix(n, k, 11);
            let (p, q) = pack(format, &w, n, k);
            let x = matrix(m, k, 12);
            let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
            let theirs: Vec<f32> = candle_core::quantized::QMatMul::from_qtensor(q)
                .unwrap()
                .forward(&xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let mut ours = vec![0f32; m * n];
            p.matmul(&x, m, &mut ours);
            let wd = p.dequantize();
            let exact: Vec<f32> = (0..m * n)
                .map(|j| {
                    let (r, i) = (j / n, j % n);
                    (0..k).map(|c| x[r * k + c] * wd[i * k + c]).sum()
                })
                .collect();
            let err = |y: &[f32]| -> f32 {
                y.iter()
                    .zip(&exact)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
                    .sqrt()
            };
            match format {
                Format::Q4K => {
                    for (o, t) in ours.iter().zip(&theirs) {
                        assert!((o - t).abs() <= 1e-4 * (1.0 + t.abs()), "{o} vs {t}");
                    }
                }
                Format::Q8_0 => {
                    assert!(
                        err(&ours) <= err(&theirs) * 1.01,
                        "{} vs {}",
                        err(&ours),
                        err(&theirs)
                    )
                }
            }
        }
    }

    #[test]
    fn q8_0_rows_with_a_partial_group_match_the_scalar_reference() {
        // Groups of eight blocks interleaved, then 1 to 7 blocks in order (the
        // 512-bit levels hand these shapes to the 256-bit kernel).
        for k in [32, 96, 288, 352, 480, 544] {
            let (n, m) = (5, 2);
            let (p, q) = pack(Format::Q8_0, &matrix(n, k, k as u64), n, k);
            let want: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(p.dequantize(), want, "k={k}");
            let x = matrix(m, k, 7);
            let mut reference = vec![0f32; m * n];
            p.matmul_at(Level::Scalar, &x, m, &mut reference, false);
            for level in Level::available() {
                let mut got = vec![0f32; m * n];
                p.matmul_at(level, &x, m, &mut got, true);
                for (g, w) in got.iter().zip(&reference) {
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{level:?} k={k}");
                }
            }
        }
    }

    #[test]
    fn the_q8_0_interleaving_is_a_permutation_in_runs_of_four() {
        for k in [32, 256, 288, 1024, 1056] {
            let mut seen = vec![false; k];
            for i in 0..k {
                let at = q8_0_pos(i, k);
                assert!(!std::mem::replace(&mut seen[at], true), "k={k} i={i}");
                assert_eq!(at, q8_0_pos(i - i % 4, k) + i % 4);
                if i < k / Q8_0_GROUP * Q8_0_GROUP {
                    // Lane (at % 32) / 4 of a 32-byte vector holds block (i % 256) / 32.
                    assert_eq!((at % 32) / 4, (i % Q8_0_GROUP) / 32);
                    assert_eq!(at / Q8_0_GROUP, i / Q8_0_GROUP);
                } else {
                    assert_eq!(at, i);
                }
            }
        }
    }

    #[test]
    fn the_lane_order_tables_agree() {
        let mut seen = [false; Q4K_BLOCK];
        for i in 0..Q4K_BLOCK {
            assert_eq!(Q4K_ACT_POS[i] as usize, q4k_act_pos(i));
            // Runs of four, which the quantizer moves as one.
            assert_eq!(q4k_act_pos(i), q4k_act_pos(i - i % 4) + i % 4);
            assert!(!std::mem::replace(&mut seen[q4k_act_pos(i)], true));
        }
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-3.5), -4);
        assert_eq!(nearest_int(126.6), 127);
        assert_eq!(nearest_int(-0.4), 0);
    }

    #[test]
    fn shapes_outside_the_formats_are_refused() {
        assert!(PackedMatrix::from_ggml(Format::Q4K, 2, 128, &[0; 144]).is_none());
        assert!(PackedMatrix::from_ggml(Format::Q8_0, 2, 32, &[0; 33]).is_none());
        let t = Tensor::zeros((4, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q6K).unwrap();
        assert!(PackedMatrix::from_qtensor(&q).unwrap().is_none());
    }

    use candle_core::Module;
}

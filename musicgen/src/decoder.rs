//! MusicGen's audio-token decoder ("Simple and Controllable Music Generation",
//! Copet et al. 2023), after transformers' `modeling_musicgen.py`
//! (`MusicgenDecoder`, `MusicgenForCausalLM`).
//!
//! A pre-norm transformer whose input is the sum of one embedding per codebook
//! plus sinusoidal positions (cos half, then sin half), with causal self-attention
//! (KV cache) and cross-attention to the text encoder's states (keys and values
//! computed once per prompt), and one LM head per codebook.
//!
//! MusicGen-melody's decoder (`modeling_musicgen_melody.py`,
//! `MusicgenMelodyDecoder`) has no cross-attention: its conditioning (projected
//! chroma, then projected text states) is prepended to the first input as a
//! prefix of embeddings, with positions from 0, under the same causal mask.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{kv_cache::KvCache, Embedding, LayerNorm, Linear, VarBuilder};

use rayon::prelude::*;

use crate::config::DecoderConfig;
use crate::gemv::ComputeThreads;
use crate::qgemv::PackedMatrix;

/// A bias-free projection: a float matrix, or a quantized one (the engine's own
/// kernels for q4k and q8_0 on the CPU, candle's quantized matmul otherwise). A
/// matrix whose inner size is not a multiple of the format's block size stays in
/// float.
#[derive(Debug, Clone)]
pub(crate) enum Proj {
    Dense(Linear),
    Packed(std::sync::Arc<PackedMatrix>),
    Quantized(QMatMul),
}

/// Quantizes the decoder's matrices at load, reusing those a previous load left in
/// an on-disk cache and collecting the new ones for it.
#[derive(Debug)]
pub struct Quantizer {
    pub dtype: GgmlDType,
    cached: std::collections::HashMap<String, std::sync::Arc<QTensor>>,
    fresh: std::sync::Mutex<Vec<(String, std::sync::Arc<QTensor>)>>,
}

impl Quantizer {
    pub fn new(
        dtype: GgmlDType,
        cached: std::collections::HashMap<String, std::sync::Arc<QTensor>>,
    ) -> Self {
        Self {
            dtype,
            cached,
            fresh: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The matrices quantized during this load (none when all came from the cache).
    pub fn take_fresh(&self) -> Vec<(String, std::sync::Arc<QTensor>)> {
        std::mem::take(&mut *self.fresh.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// `name`'s quantized matrix from the cache, else `weight()` quantized (when
    /// its inner size fits the blocks), else `None`: keep it in float.
    fn get(
        &self,
        name: &str,
        weight: impl FnOnce() -> Result<Tensor>,
    ) -> Result<std::result::Result<std::sync::Arc<QTensor>, Tensor>> {
        if let Some(q) = self.cached.get(name) {
            return Ok(Ok(q.clone()));
        }
        let weight = weight()?;
        if weight.dim(1)? % self.dtype.block_size() != 0 {
            return Ok(Err(weight));
        }
        let q = std::sync::Arc::new(QTensor::quantize(
            &weight.to_dtype(DType::F32)?,
            self.dtype,
        )?);
        self.fresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), q.clone()));
        Ok(Ok(q))
    }
}

impl Proj {
    /// `name` keys the on-disk cache of quantized matrices.
    pub(crate) fn from_weight(
        name: &str,
        weight: impl FnOnce() -> Result<Tensor>,
        quant: Option<&Quantizer>,
    ) -> Result<Self> {
        match quant {
            Some(q) => match q.get(name, weight)? {
                Ok(m) => match m.device().is_cpu() {
                    true => match PackedMatrix::from_qtensor(&m)? {
                        Some(p) => Ok(Proj::Packed(std::sync::Arc::new(p))),
                        None => Ok(Proj::Quantized(QMatMul::from_arc(m)?)),
                    },
                    false => Ok(Proj::Quantized(QMatMul::from_arc(m)?)),
                },
                Err(w) => Ok(Proj::Dense(Linear::new(w, None))),
            },
            None => Ok(Proj::Dense(Linear::new(weight()?, None))),
        }
    }

    fn load(
        in_dim: usize,
        out_dim: usize,
        quant: Option<&Quantizer>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let name = format!("{}.weight", vb.prefix());
        Self::from_weight(&name, || vb.get((out_dim, in_dim), "weight"), quant)
    }

    /// Bytes of weights one application reads.
    pub(crate) fn weight_bytes(&self) -> usize {
        match self {
            Proj::Dense(l) => l.weight().elem_count() * l.weight().dtype().size_in_bytes(),
            Proj::Packed(p) => p.size_in_bytes(),
            Proj::Quantized(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            Proj::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.elem_count() * t.dtype().size_in_bytes()
            }
        }
    }
}

impl Proj {
    /// `x · Wᵀ` for `m` rows of f32 on the CPU, as [`Module::forward`] computes it
    /// for a `(m, k)` tensor, without the tensors.
    /// The product goes into `y` (resized, reused once it has held that much). A
    /// float matrix's product runs on `workers` (a quantized one's always on
    /// candle's).
    pub(crate) fn forward_rows_into(
        &self,
        workers: ComputeThreads,
        x: &[f32],
        m: usize,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        match self {
            Proj::Packed(p) if (1..=crate::qgemv::MAX_ROWS).contains(&m) => {
                y.clear();
                y.resize(m * p.dims().0, 0.0);
                p.matmul(x, m, y);
                Ok(())
            }
            Proj::Dense(l) if (1..=crate::gemv::MAX_ROWS).contains(&m) => {
                let (n, k) = l.weight().dims2()?;
                let done = crate::gemv::with_f32(l.weight(), |w| {
                    crate::gemv::rows_times_transposed_into(workers, x, m, w, n, k, y)
                });
                if done.is_none() {
                    *y = self.forward_tensor_rows(x, m)?;
                }
                Ok(())
            }
            _ => {
                *y = self.forward_tensor_rows(x, m)?;
                Ok(())
            }
        }
    }

    fn forward_tensor_rows(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let dev = match self {
            Proj::Dense(l) => l.weight().device().clone(),
            Proj::Packed(_) => Device::Cpu,
            Proj::Quantized(q) => match q {
                QMatMul::QTensor(t) => t.device(),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.device().clone(),
            },
        };
        let x = Tensor::from_slice(x, (m, x.len() / m.max(1)), &dev)?;
        self.forward(&x)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()
    }
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            // A decoder step's one or two rows stream the weights once (see gemv).
            Proj::Dense(l) => {
                match crate::gemv::try_small_matmul(ComputeThreads::Rayon, x, l.weight())? {
                    Some(y) => Ok(y),
                    None => l.forward(x),
                }
            }
            // A prefill of many rows (an audio prompt, a window's tail): candle's
            // quantized kernel runs one dot product per row and column there, far
            // slower than dequantizing the matrix once and multiplying in f32.
            Proj::Packed(p) => packed_forward(p, x),
            Proj::Quantized(QMatMul::QTensor(q)) if rows(x) > PREFILL_ROWS => {
                let w = q.dequantize(x.device())?;
                x.to_dtype(DType::F32)?
                    .broadcast_matmul(&w.t()?)?
                    .to_dtype(x.dtype())
            }
            Proj::Quantized(q) => q.forward(x),
        }
    }
}

/// Rows past which a quantized projection dequantizes its matrix instead.
const PREFILL_ROWS: usize = 16;

/// `x · pᵀ`: a decoder step's few rows by the quantized kernels, a prefill's many
/// by the dequantized matrix in f32.
fn packed_forward(p: &PackedMatrix, x: &Tensor) -> Result<Tensor> {
    let (n, k) = p.dims();
    let m = rows(x);
    let mut out_dims = x.dims().to_vec();
    if out_dims.last() != Some(&k) {
        candle_core::bail!("input {:?} does not match a {n}x{k} matrix", x.dims());
    }
    *out_dims.last_mut().expect("x has a last dim") = n;
    if (1..=crate::qgemv::MAX_ROWS).contains(&m) {
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut y = vec![0f32; m * n];
        p.matmul(&xs, m, &mut y);
        return Tensor::from_vec(y, out_dims, x.device())?.to_dtype(x.dtype());
    }
    let w = Tensor::from_vec(p.dequantize(), (n, k), x.device())?;
    x.to_dtype(DType::F32)?
        .broadcast_matmul(&w.t()?)?
        .to_dtype(x.dtype())
}

/// Rows of activations: every dimension but the last.
fn rows(x: &Tensor) -> usize {
    let dims = x.dims();
    dims[..dims.len().saturating_sub(1)].iter().product()
}

fn layer_norm(dim: usize, vb: VarBuilder) -> Result<LayerNorm> {
    // torch.nn.LayerNorm's default epsilon; MusicGen does not configure it.
    candle_nn::layer_norm(dim, 1e-5, vb)
}

/// The `MusicgenSinusoidalPositionalEmbedding` table: `[cos(p * f), sin(p * f)]`.
fn sinusoidal_table(num_positions: usize, dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let step = (10000f64).ln() / (half as f64 - 1.0);
    // torch computes the frequencies and the products in f32: so do we.
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((i as f32) * -(step as f32)).exp())
        .collect();
    let mut table = vec![0f32; num_positions * dim];
    for p in 0..num_positions {
        let row = &mut table[p * dim..(p + 1) * dim];
        for (i, f) in freqs.iter().enumerate() {
            let angle = p as f32 * f;
            row[i] = angle.cos();
            row[half + i] = angle.sin();
        }
    }
    Tensor::from_vec(table, (num_positions, dim), device)
}

/// Switches that undo an optimisation, so a benchmark can measure what each buys.
/// Results are the same either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ablation {
    /// Grow the self-attention cache by concatenation each step instead of
    /// writing into a buffer allocated once for the whole generation.
    pub kv_concat: bool,
    /// Recompute the prompt's cross-attention keys and values at every step.
    pub cross_kv_every_step: bool,
    /// Run a step's layers as candle tensor operations (about 30 a layer) instead
    /// of the fused CPU pass over plain buffers.
    pub unfused: bool,
}

#[derive(Debug, Clone)]
struct SelfAttention {
    /// The query, key and value projections stacked: one product per step.
    qkv_proj: Proj,
    out_proj: Proj,
    num_heads: usize,
    head_dim: usize,
    scaling: f64,
    kv_cache: KvCache,
    /// The cache's element type: f16 in the quantized precisions, where at long
    /// lengths the cache would otherwise outweigh the weights a step reads.
    kv_dtype: DType,
    /// The cache as a growing pair of tensors, under `Ablation::kv_concat`.
    concat: Option<Option<(Tensor, Tensor)>>,
    workers: ComputeThreads,
}

impl SelfAttention {
    fn new(cfg: &DecoderConfig, quant: Option<&Quantizer>, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let head_dim = d / cfg.num_attention_heads;
        let qkv = || {
            let parts = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .map(|name| vb.pp(name).get((d, d), "weight"))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&parts, 0)
        };
        Ok(Self {
            qkv_proj: Proj::from_weight(&format!("{}.qkv_proj.weight", vb.prefix()), qkv, quant)?,
            out_proj: Proj::load(d, d, quant, vb.pp("out_proj"))?,
            num_heads: cfg.num_attention_heads,
            head_dim,
            scaling: (head_dim as f64).powf(-0.5),
            kv_cache: KvCache::new(2, 64),
            kv_dtype: if quant.is_some() {
                DType::F16
            } else {
                vb.dtype()
            },
            concat: None,
            workers: if quant.is_some() {
                ComputeThreads::Candle
            } else {
                ComputeThreads::Rayon
            },
        })
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        x.reshape((b, s, self.num_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn merge_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, s, _) = x.dims4()?;
        x.transpose(1, 2)?
            .reshape((b, s, self.num_heads * self.head_dim))
    }

    fn forward(&mut self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let qkv = self.qkv_proj.forward(x)?;
        let d = self.num_heads * self.head_dim;
        let q = (self.split_heads(&qkv.narrow(2, 0, d)?)? * self.scaling)?;
        let k = self.split_heads(&qkv.narrow(2, d, d)?)?;
        let v = self.split_heads(&qkv.narrow(2, 2 * d, d)?)?;
        let (k, v) = (k.to_dtype(self.kv_dtype)?, v.to_dtype(self.kv_dtype)?);
        let (k, v) = match &mut self.concat {
            Some(cache) => {
                let kv = match cache.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *cache = Some(kv.clone());
                kv
            }
            None => self.kv_cache.append(&k, &v)?,
        };
        if mask.is_none() && self.concat.is_none() {
            // One query per row: attend straight from the cache buffers (CPU, f32).
            let (k_all, v_all) = (
                self.kv_cache.k_cache().all_data(),
                self.kv_cache.v_cache().all_data(),
            );
            if let (Some(k_all), Some(v_all)) = (k_all, v_all) {
                let len = self.kv_cache.current_seq_len();
                if let Some(out) = crate::gemv::try_attend_one(self.workers, &q, k_all, v_all, len)?
                {
                    return self.out_proj.forward(&self.merge_heads(&out)?);
                }
            }
        }
        let (k, v) = (k.to_dtype(q.dtype())?, v.to_dtype(q.dtype())?);
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?;
        self.out_proj.forward(&self.merge_heads(&out)?)
    }

    /// One step's self-attention for `b` rows `h` (f32, `b x d`), straight from the
    /// cache buffer: the same arithmetic as `forward` with one query position. The
    /// output projection lands in `s.proj`.
    fn step(&mut self, h: &[f32], b: usize, device: &Device, s: &mut StepScratch) -> Result<()> {
        let d = self.num_heads * self.head_dim;
        self.qkv_proj
            .forward_rows_into(self.workers, h, b, &mut s.qkv)?;
        let scale = self.scaling as f32;
        s.q.clear();
        s.k.clear();
        s.v.clear();
        for row in s.qkv.chunks_exact(3 * d) {
            s.q.extend(row[..d].iter().map(|x| x * scale));
            s.k.extend_from_slice(&row[d..2 * d]);
            s.v.extend_from_slice(&row[2 * d..]);
        }
        let shape = (b, self.num_heads, 1, self.head_dim);
        let (k, v) = match self.kv_dtype {
            // half's slice conversion (F16C when present) rounds as candle's does.
            DType::F16 => {
                use half::vec::HalfFloatVecExt;
                (
                    Tensor::from_vec(Vec::<half::f16>::from_f32_slice(&s.k), shape, device)?,
                    Tensor::from_vec(Vec::<half::f16>::from_f32_slice(&s.v), shape, device)?,
                )
            }
            dtype => (
                Tensor::from_slice(&s.k, shape, device)?.to_dtype(dtype)?,
                Tensor::from_slice(&s.v, shape, device)?.to_dtype(dtype)?,
            ),
        };
        self.kv_cache.append(&k, &v)?;
        let (Some(k_all), Some(v_all)) = (
            self.kv_cache.k_cache().all_data(),
            self.kv_cache.v_cache().all_data(),
        ) else {
            candle_core::bail!("the self-attention cache is empty after an append");
        };
        let len = self.kv_cache.current_seq_len();
        let pairs = b * self.num_heads;
        if !crate::gemv::attend_rows_into(self.workers, &s.q, pairs, k_all, v_all, len, &mut s.att)?
        {
            candle_core::bail!("the self-attention cache cannot be read in place");
        }
        self.out_proj
            .forward_rows_into(self.workers, &s.att, b, &mut s.proj)
    }

    fn reset(&mut self, capacity: usize) {
        // A fresh cache sized for the whole generation: appends then copy into place
        // instead of reallocating.
        self.kv_cache = KvCache::new(2, capacity.max(1));
        if let Some(cache) = &mut self.concat {
            *cache = None;
        }
    }
}

#[derive(Debug, Clone)]
struct CrossAttention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    out_proj: Proj,
    num_heads: usize,
    head_dim: usize,
    scaling: f64,
    /// Keys and values of the prompt, (1, heads, text_len, head_dim), once per prompt.
    kv: Option<(Tensor, Tensor)>,
    /// The prompt's states, kept to recompute `kv` every step under
    /// `Ablation::cross_kv_every_step`.
    states: Option<Tensor>,
    every_step: bool,
    workers: ComputeThreads,
}

impl CrossAttention {
    fn new(cfg: &DecoderConfig, quant: Option<&Quantizer>, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let head_dim = d / cfg.num_attention_heads;
        Ok(Self {
            q_proj: Proj::load(d, d, quant, vb.pp("q_proj"))?,
            k_proj: Proj::load(d, d, quant, vb.pp("k_proj"))?,
            v_proj: Proj::load(d, d, quant, vb.pp("v_proj"))?,
            out_proj: Proj::load(d, d, quant, vb.pp("out_proj"))?,
            num_heads: cfg.num_attention_heads,
            head_dim,
            scaling: (head_dim as f64).powf(-0.5),
            kv: None,
            states: None,
            every_step: false,
            workers: if quant.is_some() {
                ComputeThreads::Candle
            } else {
                ComputeThreads::Rayon
            },
        })
    }

    fn project_states(&self, states: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.split_heads(&self.k_proj.forward(states)?)?,
            self.split_heads(&self.v_proj.forward(states)?)?,
        ))
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        x.reshape((b, s, self.num_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn set_encoder_states(&mut self, states: Option<&Tensor>) -> Result<()> {
        self.kv = match states {
            Some(states) => Some(self.project_states(states)?),
            None => None,
        };
        self.states = states.cloned();
        Ok(())
    }

    /// Cross-attention for the conditional row 0 of `x`. The other rows are the
    /// unconditional half of classifier-free guidance: the reference feeds them
    /// all-zero states under an all-zero mask, so their values are zero, the
    /// uniform attention over them is zero, and so is their output (the
    /// projections have no bias). They get exact zeros here without the attention.
    fn forward(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let recomputed;
        let (k, v) = match (&self.kv, &self.states) {
            (Some(_), Some(states)) if self.every_step => {
                recomputed = self.project_states(states)?;
                (&recomputed.0, &recomputed.1)
            }
            (Some((k, v)), _) => (k, v),
            (None, _) => return Ok(None),
        };
        let (b, s, d) = x.dims3()?;
        // Projecting every row costs no more weight reads than projecting one.
        let q = self.q_proj.forward(x)?.narrow(0, 0, 1)?;
        let q = (self.split_heads(&q)? * self.scaling)?;
        let text_len = k.dim(2)?;
        let out = match crate::gemv::try_attend_one(self.workers, &q, k, v, text_len)? {
            Some(out) => out,
            None => {
                let scores = q.matmul(&k.t()?)?;
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                probs.matmul(v)?
            }
        };
        let out = out
            .transpose(1, 2)?
            .reshape((1, s, self.num_heads * self.head_dim))?;
        let out = if b == 1 {
            out
        } else {
            let zeros = Tensor::zeros((b - 1, s, d), out.dtype(), out.device())?;
            Tensor::cat(&[&out, &zeros], 0)?
        };
        Ok(Some(self.out_proj.forward(&out)?))
    }

    /// `forward` for one step of the conditional row `h` (f32, `d`): its output
    /// (the other rows' is zero, see `forward`) in `s.proj`; false without a prompt.
    fn step(&self, h: &[f32], s: &mut StepScratch) -> Result<bool> {
        let Some((k, v)) = &self.kv else {
            return Ok(false);
        };
        let scale = self.scaling as f32;
        self.q_proj
            .forward_rows_into(self.workers, h, 1, &mut s.q)?;
        s.q.iter_mut().for_each(|x| *x *= scale);
        let text_len = k.dim(2)?;
        if !crate::gemv::attend_rows_into(
            self.workers,
            &s.q,
            self.num_heads,
            k,
            v,
            text_len,
            &mut s.att,
        )? {
            candle_core::bail!("the prompt's keys and values cannot be read in place");
        }
        self.out_proj
            .forward_rows_into(self.workers, &s.att, 1, &mut s.proj)?;
        Ok(true)
    }
}

/// The buffers of a fused step, allocated by the first step of a take (a few
/// rows of hidden or ffn width each) and reused by every later one.
#[derive(Debug, Clone, Default)]
struct StepScratch {
    /// Normed rows.
    h: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention's output rows.
    att: Vec<f32>,
    /// fc1's output.
    f: Vec<f32>,
    /// The last projection's output (attention's out_proj, fc2).
    proj: Vec<f32>,
}

/// candle's layer norm (`candle_nn::ops::layer_norm`) on one row, the same
/// arithmetic in the same order.
fn layer_norm_row(x: &[f32], norm: &LayerNorm, out: &mut [f32]) -> Result<()> {
    let eps = 1e-5f32;
    let Some(bias) = norm.bias() else {
        candle_core::bail!("a MusicGen layer norm has a bias");
    };
    let n = x.len() as f32;
    let done = crate::gemv::with_f32(norm.weight(), |w| {
        crate::gemv::with_f32(bias, |bias| {
            let (mut sum, mut sum2) = (0f32, 0f32);
            for &v in x {
                sum += v;
                sum2 += v * v;
            }
            let mean = sum / n;
            let var = sum2 / n - mean * mean;
            let inv_std = (var + eps).sqrt().recip();
            for (((o, &s), &a), &b) in out.iter_mut().zip(x).zip(w).zip(bias) {
                *o = (s - mean) * inv_std * a + b;
            }
        })
    });
    match done {
        Some(Some(())) => Ok(()),
        _ => candle_core::bail!("layer norm parameters are not f32 on the CPU"),
    }
}

/// GELU (erf) over `x` in place ([`crate::gemv::gelu_erf_in_place`]), split over
/// the compute threads (a step has `ffn_dim` values per row per layer).
fn gelu_rows(x: &mut [f32], workers: ComputeThreads) {
    crate::gemv::par_pieces_mut(workers, x, 2048, crate::gemv::gelu_erf_in_place);
}

/// GELU (erf) of a tensor: on the CPU in f32 the same arithmetic as the fused
/// step's [`gelu_rows`], elsewhere candle's.
fn gelu_tensor(x: &Tensor, workers: ComputeThreads) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return x.gelu_erf();
    }
    let mut v = x.flatten_all()?.to_vec1::<f32>()?;
    gelu_rows(&mut v, workers);
    Tensor::from_vec(v, x.shape(), x.device())
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: SelfAttention,
    self_attn_layer_norm: LayerNorm,
    /// Cross-attention and its norm; none in a melody decoder.
    encoder_attn: Option<(CrossAttention, LayerNorm)>,
    fc1: Proj,
    fc2: Proj,
    final_layer_norm: LayerNorm,
}

impl DecoderLayer {
    fn new(
        cfg: &DecoderConfig,
        cross_attention: bool,
        quant: Option<&Quantizer>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let encoder_attn = if cross_attention {
            Some((
                CrossAttention::new(cfg, quant, vb.pp("encoder_attn"))?,
                layer_norm(d, vb.pp("encoder_attn_layer_norm"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            self_attn: SelfAttention::new(cfg, quant, vb.pp("self_attn"))?,
            self_attn_layer_norm: layer_norm(d, vb.pp("self_attn_layer_norm"))?,
            encoder_attn,
            fc1: Proj::load(d, cfg.ffn_dim, quant, vb.pp("fc1"))?,
            fc2: Proj::load(cfg.ffn_dim, d, quant, vb.pp("fc2"))?,
            final_layer_norm: layer_norm(d, vb.pp("final_layer_norm"))?,
        })
    }

    fn forward(&mut self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.self_attn_layer_norm.forward(x)?, mask)?;
        let mut x = (x + h)?;
        if let Some((attn, norm)) = &self.encoder_attn {
            if let Some(h) = attn.forward(&norm.forward(&x)?)? {
                x = (x + h)?;
            }
        }
        let h = self.final_layer_norm.forward(&x)?;
        let f = gelu_tensor(&self.fc1.forward(&h)?, self.self_attn.workers)?;
        let h = self.fc2.forward(&f)?;
        x + h
    }

    /// `forward` for one step of `b` f32 rows on the CPU, fused: one pass per
    /// sub-block (norm, projections, attention from the cache, residual) over plain
    /// buffers, with the matrices read by the row kernels; `x` is updated in place.
    fn step(
        &mut self,
        x: &mut [f32],
        b: usize,
        device: &Device,
        s: &mut StepScratch,
    ) -> Result<()> {
        let d = x.len() / b;
        s.h.clear();
        s.h.resize(x.len(), 0.0);
        let norm_rows = |x: &[f32], norm: &LayerNorm, h: &mut [f32]| -> Result<()> {
            for (x, h) in x.chunks_exact(d).zip(h.chunks_exact_mut(d)) {
                layer_norm_row(x, norm, h)?;
            }
            Ok(())
        };
        norm_rows(x, &self.self_attn_layer_norm, &mut s.h)?;
        let h = std::mem::take(&mut s.h);
        let done = self.self_attn.step(&h, b, device, s);
        s.h = h;
        done?;
        x.iter_mut().zip(&s.proj).for_each(|(x, a)| *x += a);
        if let Some((attn, norm)) = &self.encoder_attn {
            layer_norm_row(&x[..d], norm, &mut s.h[..d])?;
            let h = std::mem::take(&mut s.h);
            let ran = attn.step(&h[..d], s);
            s.h = h;
            if ran? {
                x[..d].iter_mut().zip(&s.proj).for_each(|(x, a)| *x += a);
            }
        }
        norm_rows(x, &self.final_layer_norm, &mut s.h)?;
        self.fc1
            .forward_rows_into(self.self_attn.workers, &s.h, b, &mut s.f)?;
        gelu_rows(&mut s.f, self.self_attn.workers);
        self.fc2
            .forward_rows_into(self.self_attn.workers, &s.f, b, &mut s.proj)?;
        x.iter_mut().zip(&s.proj).for_each(|(x, o)| *x += o);
        Ok(())
    }

    /// Whether `step` can run this layer for `b` rows of `dtype`.
    fn can_step(&self, b: usize, dtype: DType, device: &Device) -> bool {
        device.is_cpu()
            && dtype == DType::F32
            && (1..=crate::qgemv::MAX_ROWS.min(crate::gemv::MAX_ROWS)).contains(&b)
            && matches!(self.self_attn.kv_dtype, DType::F32 | DType::F16)
            && self.self_attn.concat.is_none()
            && self
                .encoder_attn
                .as_ref()
                .is_none_or(|(attn, _)| !attn.every_step)
    }
}

/// `MusicgenForCausalLM`: the decoder stack and its per-codebook LM heads.
#[derive(Debug, Clone)]
pub struct Decoder {
    embed_tokens: Vec<Embedding>,
    positions: Tensor,
    layers: Vec<DecoderLayer>,
    layer_norm: LayerNorm,
    /// The K LM heads stacked into one (K * vocab, hidden) matrix: one matmul per step.
    lm_heads: Proj,
    num_codebooks: usize,
    vocab_size: usize,
    offset: usize,
    /// Melody: the conditioning prefix `(batch, len, hidden)` the next forward
    /// prepends to its input.
    prefix: Option<Tensor>,
    /// `Ablation::unfused`.
    unfused: bool,
    /// The fused step's buffers.
    scratch: StepScratch,
}

impl Decoder {
    /// `vb` points at the composite checkpoint's `decoder` prefix; its dtype is the
    /// float type of activations and unquantized weights. `quant` quantizes the
    /// projections and LM heads. `cross_attention` is false for a melody decoder.
    pub fn new(
        cfg: &DecoderConfig,
        cross_attention: bool,
        quant: Option<&Quantizer>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let k = cfg.num_codebooks;
        let vb_m = vb.pp("model").pp("decoder");
        let embed_tokens = (0..k)
            .map(|i| candle_nn::embedding(cfg.vocab_size + 1, d, vb_m.pp("embed_tokens").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        // Layers load (and quantize) in parallel on the caller's pool.
        let layers = (0..cfg.num_hidden_layers)
            .into_par_iter()
            .map(|i| DecoderLayer::new(cfg, cross_attention, quant, vb_m.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let heads = (0..k)
            .map(|i| vb.pp("lm_heads").pp(i).get((cfg.vocab_size, d), "weight"))
            .collect::<Result<Vec<_>>>()?;
        // The LM heads stay in float: they are 2% of the bytes and their error
        // lands on the logits directly.
        let lm_heads = Proj::from_weight("decoder.lm_heads", || Tensor::cat(&heads, 0), None)?;
        Ok(Self {
            embed_tokens,
            positions: sinusoidal_table(cfg.max_position_embeddings, d, vb.device())?
                .to_dtype(vb.dtype())?,
            layers,
            layer_norm: layer_norm(d, vb_m.pp("layer_norm"))?,
            lm_heads,
            num_codebooks: k,
            vocab_size: cfg.vocab_size,
            // `scale_embedding` is read by transformers but never applied (5.24,
            // both decoders), and the published checkpoints leave it off.
            offset: 0,
            prefix: None,
            unfused: false,
            scratch: StepScratch::default(),
        })
    }

    /// Bytes of weights one decoder step reads (the cross-attention key and value
    /// projections run once per prompt, so they are not counted).
    pub fn step_weight_bytes(&self) -> usize {
        let per_layer = |l: &DecoderLayer| {
            let cross = l.encoder_attn.as_ref().map_or(0, |(a, _)| {
                a.q_proj.weight_bytes() + a.out_proj.weight_bytes()
            });
            l.self_attn.qkv_proj.weight_bytes()
                + l.self_attn.out_proj.weight_bytes()
                + cross
                + l.fc1.weight_bytes()
                + l.fc2.weight_bytes()
        };
        self.layers.iter().map(per_layer).sum::<usize>() + self.lm_heads.weight_bytes()
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn max_positions(&self) -> usize {
        self.positions.dim(0).unwrap_or(0)
    }

    /// Whether the layers cross-attend to encoder states (MusicGen) or take a
    /// prefix (MusicGen-melody).
    pub fn has_cross_attention(&self) -> bool {
        self.layers
            .first()
            .is_some_and(|l| l.encoder_attn.is_some())
    }

    /// Starts a new generation: clears the self-attention caches (sized for
    /// `capacity` positions, a prefix's included) and sets the conditioning:
    /// MusicGen's encoder states `(1, text_len, hidden)` for cross-attention, or
    /// a melody decoder's prefix `(batch, len, hidden)` for the first forward to
    /// prepend. `None` for unconditional generation.
    pub fn reset(&mut self, conditioning: Option<&Tensor>, capacity: usize) -> Result<()> {
        self.offset = 0;
        let states = match conditioning {
            Some(s) => Some(s.to_dtype(self.positions.dtype())?),
            None => None,
        };
        let cross = self.has_cross_attention();
        self.prefix = if cross { None } else { states.clone() };
        for layer in self.layers.iter_mut() {
            layer.self_attn.reset(capacity);
            if let Some((attn, _)) = &mut layer.encoder_attn {
                attn.set_encoder_states(states.as_ref())?;
            }
        }
        Ok(())
    }

    /// Undoes optimisations for measuring them (see [`Ablation`]).
    #[cfg(feature = "bench")]
    pub fn set_ablation(&mut self, ablation: Ablation) {
        self.unfused = ablation.unfused;
        for layer in self.layers.iter_mut() {
            layer.self_attn.concat = ablation.kv_concat.then_some(None);
            if let Some((attn, _)) = &mut layer.encoder_attn {
                attn.every_step = ablation.cross_kv_every_step;
            }
        }
    }

    /// Frees the self-attention caches and the prompt's keys and values, e.g.
    /// before the audio decode so the two never hold memory at once.
    pub fn release(&mut self) {
        self.offset = 0;
        self.prefix = None;
        self.scratch = StepScratch::default();
        for layer in self.layers.iter_mut() {
            layer.self_attn.reset(1);
            if let Some((attn, _)) = &mut layer.encoder_attn {
                attn.kv = None;
                attn.states = None;
            }
        }
    }

    /// Runs the decoder on `ids` of shape `(batch, codebooks, seq)` (u32) following the
    /// cached prefix, and returns logits `(batch, codebooks, seq, vocab)` in f32.
    /// The first forward after [`Decoder::reset`] with a melody prefix runs the
    /// prefix too (its logits are not returned).
    pub fn forward(&mut self, ids: &Tensor) -> Result<Tensor> {
        let (b, k, s) = ids.dims3()?;
        if k != self.num_codebooks {
            candle_core::bail!(
                "decoder input has {k} codebooks, the checkpoint has {}",
                self.num_codebooks
            );
        }
        let mut x = self.embed_tokens[0].forward(&ids.narrow(1, 0, 1)?.squeeze(1)?)?;
        for (i, embed) in self.embed_tokens.iter().enumerate().skip(1) {
            x = (x + embed.forward(&ids.narrow(1, i, 1)?.squeeze(1)?)?)?;
        }
        if let Some(prefix) = self.prefix.take() {
            if prefix.dim(0)? != b {
                candle_core::bail!(
                    "the conditioning prefix has {} rows, the input {b}",
                    prefix.dim(0)?
                );
            }
            x = Tensor::cat(&[&prefix, &x], 1)?;
        }
        let total = x.dim(1)?;
        if self.offset + total > self.max_positions() {
            candle_core::bail!(
                "decoder position {} is past max_position_embeddings {}",
                self.offset + total,
                self.max_positions()
            );
        }
        let pos = self.positions.narrow(0, self.offset, total)?;
        let mut x = x.broadcast_add(&pos)?;
        let mask = if total > 1 {
            Some(causal_mask(total, self.offset, x.dtype(), x.device())?)
        } else {
            None
        };
        let b = x.dim(0)?;
        let fused = total == 1
            && !self.unfused
            && self
                .layers
                .iter()
                .all(|l| l.can_step(b, x.dtype(), x.device()));
        if fused {
            let device = x.device().clone();
            let mut rows = x.flatten_all()?.to_vec1::<f32>()?;
            for layer in self.layers.iter_mut() {
                layer.step(&mut rows, b, &device, &mut self.scratch)?;
            }
            // The final norm and the LM heads, on the layers' threads too.
            self.offset += total;
            let d = rows.len() / b;
            let s = &mut self.scratch;
            s.h.clear();
            s.h.resize(rows.len(), 0.0);
            for (x, h) in rows.chunks_exact(d).zip(s.h.chunks_exact_mut(d)) {
                layer_norm_row(x, &self.layer_norm, h)?;
            }
            let workers = self
                .layers
                .first()
                .map_or(ComputeThreads::Rayon, |l| l.self_attn.workers);
            let mut logits = Vec::new();
            self.lm_heads
                .forward_rows_into(workers, &s.h, b, &mut logits)?;
            return Tensor::from_vec(logits, (b, k, 1, self.vocab_size), &device);
        } else {
            for layer in self.layers.iter_mut() {
                x = layer.forward(&x, mask.as_ref())?;
            }
        }
        self.offset += total;
        // Only the input's own positions get logits.
        let x = if total > s {
            x.narrow(1, total - s, s)?
        } else {
            x
        };
        let x = self.layer_norm.forward(&x)?;
        let logits = self.lm_heads.forward(&x)?; // (b, s, k * vocab)
        logits
            .reshape((b, s, k, self.vocab_size))?
            .transpose(1, 2)?
            .to_dtype(DType::F32)
    }
}

fn causal_mask(s: usize, offset: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let total = offset + s;
    let mask: Vec<f32> = (0..s)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (1, 1, s, total), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoidal_table_is_cos_then_sin() {
        let t = sinusoidal_table(5, 8, &Device::Cpu).unwrap();
        let rows = t.to_vec2::<f32>().unwrap();
        // Position 0: cos(0) = 1 in the first half, sin(0) = 0 in the second.
        assert_eq!(&rows[0][..4], &[1.0; 4]);
        assert_eq!(&rows[0][4..], &[0.0; 4]);
        // Position 3, frequency 0 is 1: cos(3) and sin(3).
        assert!((rows[3][0] - 3f32.cos()).abs() < 1e-6);
        assert!((rows[3][4] - 3f32.sin()).abs() < 1e-6);
        // The last frequency is 1/10000.
        assert!((rows[3][3] - (3e-4f32).cos()).abs() < 1e-6);
    }

    #[test]
    fn a_quantized_prefill_matches_the_row_by_row_kernel() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (96, 64), &dev).unwrap();
        let q = Quantizer::new(GgmlDType::Q8_0, Default::default());
        let p = Proj::from_weight("w", || Ok(w.clone()), Some(&q)).unwrap();
        assert!(matches!(p, Proj::Packed(_)));
        let x = Tensor::randn(0f32, 1.0, (2, 20, 64), &dev).unwrap();
        // 40 rows: the dequantizing path; one row at a time: the quantized kernel.
        let all = p.forward(&x).unwrap();
        let by_row: Vec<Tensor> = (0..20)
            .map(|i| {
                p.forward(&x.narrow(1, i, 1).unwrap().contiguous().unwrap())
                    .unwrap()
            })
            .collect();
        let by_row = Tensor::cat(&by_row, 1).unwrap();
        let exact = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        let max = |t: Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let peak = max(exact.clone()).to_scalar::<f32>().unwrap();
        let d_rows = max((&all - &by_row).unwrap()).to_scalar::<f32>().unwrap();
        let d_exact = max((&all - &exact).unwrap()).to_scalar::<f32>().unwrap();
        assert_eq!(all.dims(), &[2, 20, 96]);
        assert!(d_rows < 0.02 * peak, "{d_rows} of {peak}");
        assert!(d_exact < 0.02 * peak, "{d_exact} of {peak}");
    }

    #[test]
    fn causal_mask_hides_the_future_only() {
        let m = causal_mask(2, 3, DType::F32, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(&m[..5], &[0.0, 0.0, 0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(&m[5..], &[0.0; 5]);
    }
}

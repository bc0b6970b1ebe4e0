//! EnCodec ("High Fidelity Neural Audio Compression", Défossez et al. 2022), after
//! transformers' `modeling_encodec.py`: the SEANet encoder and residual vector
//! quantization (audio to codes, for audio prompts), and the quantizer decode and
//! SEANet decoder with its LSTM (codes to audio).
//!
//! candle-transformers' `encodec` cannot load MusicGen's codec: it refuses reflect
//! padding, does not trim the transposed convolutions, and parses neither
//! `"weight_norm"` nor `"reflect"` from a Hugging Face config. This module matches
//! the reference: the non-causal padding split, reflect padding that first
//! zero-extends inputs shorter than the pad, the trim after each transposed
//! convolution, and the identity shortcut when `use_conv_shortcut` is false.

use candle_core::{bail, DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::config::EncodecConfig;

/// A weight-normalised convolution weight: `g * v / ||v||`, the norm taken over
/// every dimension but the first, read from either naming of the checkpoint
/// (`weight_g`/`weight_v`, or newer transformers' parametrizations).
fn weight_norm(vb: &VarBuilder, shape: (usize, usize, usize)) -> Result<Tensor> {
    let (g, v) = if vb.contains_tensor("weight_g") {
        (
            vb.get((shape.0, 1, 1), "weight_g")?,
            vb.get(shape, "weight_v")?,
        )
    } else if vb.contains_tensor("parametrizations.weight.original0") {
        (
            vb.get((shape.0, 1, 1), "parametrizations.weight.original0")?,
            vb.get(shape, "parametrizations.weight.original1")?,
        )
    } else {
        // A checkpoint whose weight norm was already folded into plain weights.
        return vb.get(shape, "weight");
    };
    let norm = v.sqr()?.sum_keepdim((1, 2))?.sqrt()?;
    v.broadcast_mul(&g.broadcast_div(&norm)?)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PadMode {
    Reflect,
    Zero,
}

/// Pads the last dimension of `x` (batch, channels, time). Reflect padding of an
/// input no longer than the pad first appends zeros, as the reference's `_pad1d`.
fn pad1d(x: &Tensor, left: usize, right: usize, mode: PadMode) -> Result<Tensor> {
    if left == 0 && right == 0 {
        return Ok(x.clone());
    }
    match mode {
        PadMode::Zero => x.pad_with_zeros(D::Minus1, left, right),
        PadMode::Reflect => {
            let len = x.dim(D::Minus1)?;
            let max_pad = left.max(right);
            let (x, extra) = if len <= max_pad {
                let extra = max_pad - len + 1;
                (x.pad_with_zeros(D::Minus1, 0, extra)?, extra)
            } else {
                (x.clone(), 0)
            };
            let n = x.dim(D::Minus1)?;
            // Reflection without repeating the edge sample: index -i maps to i.
            let idx: Vec<u32> = (0..left + n + right)
                .map(|i| {
                    let p = i as i64 - left as i64;
                    let p = if p < 0 {
                        -p
                    } else if p >= n as i64 {
                        2 * (n as i64 - 1) - p
                    } else {
                        p
                    };
                    p as u32
                })
                .collect();
            let idx = Tensor::from_vec(idx, left + n + right, x.device())?;
            let padded = x.index_select(&idx, 2)?;
            padded.narrow(D::Minus1, 0, left + n + right - extra)
        }
    }
}

/// `EncodecConv1d`: a weight-normalised convolution with EnCodec's padding.
#[derive(Debug, Clone)]
struct Conv1d {
    weight: Tensor,
    /// The weight per kernel tap, (kernel, out, in), contiguous.
    taps: Tensor,
    bias: Tensor,
    stride: usize,
    dilation: usize,
    kernel_size: usize,
    causal: bool,
    pad_mode: PadMode,
}

impl Conv1d {
    fn new(
        cfg: &EncodecConfig,
        in_c: usize,
        out_c: usize,
        kernel_size: usize,
        dilation: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::strided(cfg, in_c, out_c, kernel_size, 1, dilation, vb)
    }

    fn strided(
        cfg: &EncodecConfig,
        in_c: usize,
        out_c: usize,
        kernel_size: usize,
        stride: usize,
        dilation: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("conv");
        let weight = weight_norm(&vb, (out_c, in_c, kernel_size))?;
        Ok(Self {
            taps: weight.permute((2, 0, 1))?.contiguous()?,
            weight,
            bias: vb.get(out_c, "bias")?,
            stride,
            dilation,
            kernel_size,
            causal: cfg.use_causal_conv,
            pad_mode: pad_mode(cfg),
        })
    }
}

fn pad_mode(cfg: &EncodecConfig) -> PadMode {
    if cfg.pad_mode == "reflect" {
        PadMode::Reflect
    } else {
        PadMode::Zero
    }
}

impl Conv1d {
    /// A stride-1 convolution of an already padded `(1, in, len)` input as one
    /// matrix product per kernel tap over shifted views of the input: no im2col
    /// copy seven times the size of the input.
    fn conv_by_taps(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.squeeze(0)?.contiguous()?; // (in, len)
        let (_, len) = x.dims2()?;
        let span = (self.kernel_size - 1) * self.dilation;
        let out_len = len - span;
        let mut y: Option<Tensor> = None;
        for j in 0..self.kernel_size {
            let w = self.taps.get(j)?; // (out, in)
            let part = w.matmul(&x.narrow(1, j * self.dilation, out_len)?)?;
            y = Some(match y {
                Some(y) => (y + part)?,
                None => part,
            });
        }
        y.expect("kernel_size >= 1").unsqueeze(0)
    }
}

impl Conv1d {
    /// Frames of input before and after an output frame that it reads (stride 1).
    fn context(&self) -> (usize, usize) {
        let k = (self.kernel_size - 1) * self.dilation + 1;
        let total = k.saturating_sub(self.stride);
        if self.causal {
            (total, 0)
        } else {
            (total - total / 2, total / 2)
        }
    }
}

impl Module for Conv1d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let len = x.dim(D::Minus1)? as i64;
        let k = ((self.kernel_size - 1) * self.dilation + 1) as i64;
        let stride = self.stride as i64;
        let padding_total = k - stride;
        // `_get_extra_padding_for_conv1d`: room for one more full window at the end.
        let n_frames = ((len - k + padding_total) as f64 / stride as f64 + 1.0).ceil() as i64 - 1;
        let ideal = n_frames * stride + k - padding_total;
        let extra = (ideal - len).max(0) as usize;
        let padding_total = padding_total as usize;
        let x = if self.causal {
            pad1d(x, padding_total, extra, self.pad_mode)?
        } else {
            let right = padding_total / 2;
            let left = padding_total - right;
            pad1d(x, left, right + extra, self.pad_mode)?
        };
        let y = if self.stride == 1 && x.dim(0)? == 1 {
            self.conv_by_taps(&x)?
        } else {
            x.conv1d(&self.weight, 0, self.stride, self.dilation, 1)?
        };
        y.broadcast_add(&self.bias.reshape((1, (), 1))?)
    }
}

/// ELU (alpha 1) of a tensor: in f32 on the CPU eight values a vector
/// ([`crate::gemv::elu_in_place`]) split over the compute pool, elsewhere
/// candle's. The decoder's upsampling stack applies it to every sample of every
/// channel, three times a stage.
fn elu(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return x.elu(1.0);
    }
    x.contiguous()?.apply_op1_no_bwd(&EluOp)
}

struct EluOp;

impl candle_core::CustomOp1 for EluOp {
    fn name(&self) -> &'static str {
        "elu-f32"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (candle_core::CpuStorage::F32(v), Some((a, b))) =
            (storage, layout.contiguous_offsets())
        else {
            bail!("elu: a contiguous f32 tensor expected");
        };
        let src = &v[a..b];
        let mut out = vec![0f32; src.len()];
        // Pieces that stay in the cache between the copy and the pass.
        out.par_chunks_mut(1 << 15)
            .zip(src.par_chunks(1 << 15))
            .for_each(|(o, s)| {
                o.copy_from_slice(s);
                crate::gemv::elu_in_place(o);
            });
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `EncodecConvTranspose1d`: upsampling, then trimming the fixed padding.
#[derive(Debug, Clone)]
struct ConvTranspose1d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    kernel_size: usize,
    causal: bool,
    trim_right_ratio: f64,
}

impl ConvTranspose1d {
    fn new(
        cfg: &EncodecConfig,
        in_c: usize,
        out_c: usize,
        kernel_size: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("conv");
        Ok(Self {
            // ConvTranspose1d weights are (in, out, kernel); weight norm is over dim 0 too.
            weight: weight_norm(&vb, (in_c, out_c, kernel_size))?,
            bias: vb.get(out_c, "bias")?,
            stride,
            kernel_size,
            causal: cfg.use_causal_conv,
            trim_right_ratio: cfg.trim_right_ratio,
        })
    }
}

impl Module for ConvTranspose1d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv_transpose1d(&self.weight, 0, 0, self.stride, 1, 1)?;
        let y = y.broadcast_add(&self.bias.reshape((1, (), 1))?)?;
        let padding_total = self.kernel_size - self.stride;
        let right = if self.causal {
            (padding_total as f64 * self.trim_right_ratio).ceil() as usize
        } else {
            padding_total / 2
        };
        let left = padding_total - right;
        let len = y.dim(D::Minus1)?;
        y.narrow(D::Minus1, left, len - left - right)
    }
}

/// `EncodecResnetBlock`: ELU, dilated conv, ELU, 1x1 conv, plus the shortcut.
#[derive(Debug, Clone)]
struct ResnetBlock {
    convs: Vec<Conv1d>,
    shortcut: Option<Conv1d>,
}

impl ResnetBlock {
    fn new(cfg: &EncodecConfig, dim: usize, dilations: [usize; 2], vb: VarBuilder) -> Result<Self> {
        let kernel_sizes = [cfg.residual_kernel_size, 1];
        let hidden = dim / cfg.compress;
        let mut convs = Vec::with_capacity(2);
        for (i, (&k, &d)) in kernel_sizes.iter().zip(dilations.iter()).enumerate() {
            let in_c = if i == 0 { dim } else { hidden };
            let out_c = if i == kernel_sizes.len() - 1 {
                dim
            } else {
                hidden
            };
            // Block modules alternate ELU (even index) and conv (odd index).
            convs.push(Conv1d::new(
                cfg,
                in_c,
                out_c,
                k,
                d,
                vb.pp("block").pp(2 * i + 1),
            )?);
        }
        let shortcut = if cfg.use_conv_shortcut {
            Some(Conv1d::new(cfg, dim, dim, 1, 1, vb.pp("shortcut"))?)
        } else {
            None
        };
        Ok(Self { convs, shortcut })
    }
}

impl Module for ResnetBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for conv in &self.convs {
            h = conv.forward(&elu(&h)?)?;
        }
        let residual = match &self.shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        residual + h
    }
}

/// `EncodecLSTM`: a multi-layer LSTM over time with a residual connection.
#[derive(Debug, Clone)]
struct Lstm {
    /// Per layer: (W_ih^T, W_hh as stored (4h, h), b_ih + b_hh), gates in torch's
    /// order i, f, g, o.
    layers: Vec<(Tensor, Tensor, Tensor)>,
    hidden: usize,
}

impl Lstm {
    fn new(dim: usize, num_layers: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("lstm");
        let layers = (0..num_layers)
            .map(|l| {
                let w_ih = vb.get((4 * dim, dim), &format!("weight_ih_l{l}"))?;
                let w_hh = vb.get((4 * dim, dim), &format!("weight_hh_l{l}"))?;
                let b_ih = vb.get(4 * dim, &format!("bias_ih_l{l}"))?;
                let b_hh = vb.get(4 * dim, &format!("bias_hh_l{l}"))?;
                Ok((w_ih.t()?.contiguous()?, w_hh, (b_ih + b_hh)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            hidden: dim,
        })
    }
}

impl Lstm {
    /// The LSTM over one stretch of time `x` (batch, channels, time), carrying
    /// the recurrent state (`h`, `c` per layer, `(batch, hidden)`; empty: zeros)
    /// from the stretch before: the decoder runs the take in units this way.
    fn forward_carrying(&self, x: &Tensor, state: &mut Vec<(Tensor, Tensor)>) -> Result<Tensor> {
        let (b, c, t) = x.dims3()?;
        let input = x.transpose(1, 2)?.contiguous()?; // (b, t, c)
        let mut seq = input.clone();
        let hd = self.hidden;
        if state.is_empty() {
            for _ in &self.layers {
                state.push((
                    Tensor::zeros((b, hd), x.dtype(), x.device())?,
                    Tensor::zeros((b, hd), x.dtype(), x.device())?,
                ));
            }
        }
        for ((w_ih, w_hh, bias), (h, cell)) in self.layers.iter().zip(state.iter_mut()) {
            // The input projection for every step at once; only the recurrence loops.
            let gates_x = seq.broadcast_matmul(w_ih)?.broadcast_add(bias)?; // (b, t, 4h)
            let mut outputs = Vec::with_capacity(t);
            for step in 0..t {
                // One row times W_hhᵀ per step: the streaming product (see gemv).
                let hw = match crate::gemv::try_small_matmul(
                    crate::gemv::ComputeThreads::Rayon,
                    h,
                    w_hh,
                )? {
                    Some(y) => y,
                    None => h.matmul(&w_hh.t()?)?,
                };
                let gates = (gates_x.narrow(1, step, 1)?.squeeze(1)? + hw)?;
                let i = candle_nn::ops::sigmoid(&gates.narrow(1, 0, hd)?)?;
                let f = candle_nn::ops::sigmoid(&gates.narrow(1, hd, hd)?)?;
                let g = gates.narrow(1, 2 * hd, hd)?.tanh()?;
                let o = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * hd, hd)?)?;
                *cell = ((f * &*cell)? + (i * g)?)?;
                *h = (o * cell.tanh()?)?;
                outputs.push(h.clone());
            }
            seq = Tensor::stack(&outputs, 1)?;
        }
        debug_assert_eq!(seq.dims3()?, (b, t, c));
        (seq + input)?.transpose(1, 2)
    }
}

impl Module for Lstm {
    /// `x`: (batch, channels, time), from a zero state.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_carrying(x, &mut Vec::new())
    }
}

#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv1d),
    Lstm(Lstm),
    Elu,
    ConvTranspose(ConvTranspose1d),
    Resnet(ResnetBlock),
}

/// Codes to audio: the quantizer's codebooks and the SEANet decoder.
#[derive(Debug, Clone)]
pub struct EncodecDecoder {
    /// Per quantizer layer, the codebook (codebook_size, codebook_dim).
    codebooks: Vec<Tensor>,
    /// The first convolution and the LSTM, run over the whole sequence.
    layers: Vec<Layer>,
    /// The upsampling stack after the LSTM: only convolutions, so it runs in
    /// overlapping time chunks, bounding memory for long takes.
    tail: Vec<Layer>,
    hop_length: usize,
    chunk_frames: usize,
}

/// Frames per chunk of the upsampling stack: keeps its buffers to a few tens of MB
/// for the published 32 kHz model.
const CHUNK_FRAMES: usize = 32;
/// Frames of context on each side of a chunk; the stack's receptive field is under
/// two frames, so the kept samples are computed exactly as in one pass.
const HALO_FRAMES: usize = 4;
/// Frames per unit of the first convolution and the LSTM: small, so the first
/// audio of a take being generated comes early (the upsampling stack's first
/// unit needs its halo after it).
const LSTM_UNIT_FRAMES: usize = 8;

impl EncodecDecoder {
    /// `vb` points at the composite checkpoint's `audio_encoder` prefix.
    pub fn new(cfg: &EncodecConfig, num_codebooks: usize, vb: VarBuilder) -> Result<Self> {
        if cfg.audio_channels != 1 {
            bail!(
                "EnCodec with {} audio channels is not supported",
                cfg.audio_channels
            );
        }
        if cfg.codebook_dim() != cfg.hidden_size {
            bail!(
                "EnCodec codebook_dim {} differs from hidden_size {}: not supported",
                cfg.codebook_dim(),
                cfg.hidden_size
            );
        }
        let codebooks = (0..num_codebooks)
            .map(|i| {
                vb.pp("quantizer")
                    .pp("layers")
                    .pp(i)
                    .pp("codebook")
                    .get((cfg.codebook_size, cfg.codebook_dim()), "embed")
            })
            .collect::<Result<Vec<_>>>()?;

        let vb = vb.pp("decoder").pp("layers");
        let mut scaling = 1usize << cfg.upsampling_ratios.len();
        let mut layers = Vec::new();
        let mut idx = 0usize;
        let mut next = || {
            idx += 1;
            idx - 1
        };
        layers.push(Layer::Conv(Conv1d::new(
            cfg,
            cfg.hidden_size,
            scaling * cfg.num_filters,
            cfg.kernel_size,
            1,
            vb.pp(next()),
        )?));
        layers.push(Layer::Lstm(Lstm::new(
            scaling * cfg.num_filters,
            cfg.num_lstm_layers,
            vb.pp(next()),
        )?));
        for &ratio in &cfg.upsampling_ratios {
            let scale = scaling * cfg.num_filters;
            next();
            layers.push(Layer::Elu);
            layers.push(Layer::ConvTranspose(ConvTranspose1d::new(
                cfg,
                scale,
                scale / 2,
                ratio * 2,
                ratio,
                vb.pp(next()),
            )?));
            for j in 0..cfg.num_residual_layers {
                let dilation = cfg.dilation_growth_rate.pow(j as u32);
                layers.push(Layer::Resnet(ResnetBlock::new(
                    cfg,
                    scale / 2,
                    [dilation, 1],
                    vb.pp(next()),
                )?));
            }
            scaling /= 2;
        }
        next();
        layers.push(Layer::Elu);
        layers.push(Layer::Conv(Conv1d::new(
            cfg,
            cfg.num_filters,
            cfg.audio_channels,
            cfg.last_kernel_size,
            1,
            vb.pp(next()),
        )?));
        let tail = layers.split_off(2);
        Ok(Self {
            codebooks,
            layers,
            tail,
            hop_length: cfg.hop_length(),
            chunk_frames: CHUNK_FRAMES,
        })
    }

    fn run(layers: &[Layer], mut x: Tensor) -> Result<Tensor> {
        for layer in layers {
            x = match layer {
                Layer::Conv(c) => c.forward(&x)?,
                Layer::Lstm(l) => l.forward(&x)?,
                Layer::Elu => elu(&x)?,
                Layer::ConvTranspose(c) => c.forward(&x)?,
                Layer::Resnet(r) => r.forward(&x)?,
            };
        }
        Ok(x)
    }

    pub fn num_codebooks(&self) -> usize {
        self.codebooks.len()
    }

    pub fn hop_length(&self) -> usize {
        self.hop_length
    }

    /// Decodes codes `(codebooks, frames)` (u32) to mono PCM of `frames * hop`
    /// samples: a [`DecodeStream`] given every frame at once, so a decode in
    /// pieces is this one exactly.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let (k, frames) = codes.dims2()?;
        if k != self.codebooks.len() {
            bail!(
                "EnCodec decode got {k} codebooks, expected {}",
                self.codebooks.len()
            );
        }
        if frames == 0 {
            bail!("EnCodec decode needs at least one frame");
        }
        let mut stream = self.stream();
        stream.push(&codes.to_vec2::<u32>()?)?;
        let pcm = stream.finish()?;
        Tensor::from_vec(pcm, frames * self.hop_length, codes.device())
    }

    /// A decode that takes codes as they are generated and gives back audio
    /// as soon as it is final.
    pub fn stream(&self) -> DecodeStream {
        DecodeStream {
            dec: self.clone(),
            codes: vec![Vec::new(); self.codebooks.len()],
            post: Vec::new(),
            post_from: 0,
            lstm_frames: 0,
            state: Vec::new(),
            emitted: 0,
        }
    }

    /// The codes' embeddings `(1, dim, b - a)` for frames `a..b`.
    fn embed(
        &self,
        codes: &[Vec<u32>],
        a: usize,
        b: usize,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        let mut emb: Option<Tensor> = None;
        for (codebook, row) in self.codebooks.iter().zip(codes) {
            let ids = Tensor::new(&row[a..b], device)?;
            let q = codebook.embedding(&ids)?; // (frames, dim)
            emb = Some(match emb {
                Some(e) => (e + q)?,
                None => q,
            });
        }
        emb.expect("at least one codebook")
            .t()?
            .unsqueeze(0)?
            .contiguous()
    }
}

/// An EnCodec decode fed codes as they come. The take is decoded in fixed
/// units, by the same operations whether the codes come at once or frame by
/// frame: the first convolution over [`LSTM_UNIT_FRAMES`] frames and their
/// context (3 frames each side), the LSTM carrying its state from unit to
/// unit, then the upsampling stack over [`CHUNK_FRAMES`] frames and a
/// [`HALO_FRAMES`] halo. A unit
/// runs once the frames it reads exist, so every sample it gives back is final
/// and the pieces joined are the whole decode, bit for bit.
pub struct DecodeStream {
    dec: EncodecDecoder,
    /// The codes so far, per codebook.
    codes: Vec<Vec<u32>>,
    /// LSTM outputs `(1, dim, n)` per unit, from unit `post_from` on.
    post: Vec<Tensor>,
    post_from: usize,
    /// Frames through the LSTM.
    lstm_frames: usize,
    /// The LSTM's state after them.
    state: Vec<(Tensor, Tensor)>,
    /// Frames given back as audio.
    emitted: usize,
}

impl DecodeStream {
    /// Appends frames of codes `(codebooks, frames)`.
    pub fn push(&mut self, codes: &[Vec<u32>]) -> Result<()> {
        if codes.len() != self.codes.len() {
            bail!(
                "EnCodec decode got {} codebooks, expected {}",
                codes.len(),
                self.codes.len()
            );
        }
        for (row, new) in self.codes.iter_mut().zip(codes) {
            row.extend_from_slice(new);
        }
        Ok(())
    }

    /// Frames of codes pushed so far.
    pub fn frames(&self) -> usize {
        self.codes[0].len()
    }

    /// Samples given back so far.
    pub fn samples(&self) -> usize {
        self.emitted * self.dec.hop_length
    }

    /// The audio that is final now (empty when none is yet).
    pub fn ready(&mut self) -> Result<Vec<f32>> {
        self.advance(false)
    }

    /// The rest of the audio, once every frame is pushed.
    pub fn finish(mut self) -> Result<Vec<f32>> {
        if self.frames() == 0 {
            bail!("EnCodec decode needs at least one frame");
        }
        self.advance(true)
    }

    fn advance(&mut self, last: bool) -> Result<Vec<f32>> {
        let total = self.frames();
        let unit = self.dec.chunk_frames;
        let lstm_unit = LSTM_UNIT_FRAMES;
        let hop = self.dec.hop_length;
        let device = self.dec.codebooks[0].device().clone();
        let (Layer::Conv(conv), Layer::Lstm(lstm)) = (&self.dec.layers[0], &self.dec.layers[1])
        else {
            bail!("EnCodec decoder layers out of order");
        };
        let (before, after) = conv.context();
        // The convolution and the LSTM, unit by unit.
        while self.lstm_frames < total {
            let s = self.lstm_frames;
            let e = (s + lstm_unit).min(total);
            if !last && (e - s < lstm_unit || e + after > total) {
                break;
            }
            let a = s.saturating_sub(before);
            let b = (e + after).min(total);
            let x = self.dec.embed(&self.codes, a, b, &device)?;
            let x = conv.forward(&x)?.narrow(2, s - a, e - s)?;
            self.post.push(lstm.forward_carrying(&x, &mut self.state)?);
            self.lstm_frames = e;
        }
        // The upsampling stack, unit by unit with its halo.
        let mut out = Vec::new();
        while self.emitted < total {
            let s = self.emitted;
            let e = (s + unit).min(total);
            if !last && (e - s < unit || e + HALO_FRAMES > self.lstm_frames) {
                break;
            }
            let a = s.saturating_sub(HALO_FRAMES);
            let b = (e + HALO_FRAMES).min(total);
            let x = self.post_frames(a, b)?;
            let y = EncodecDecoder::run(&self.dec.tail, x)?;
            let y = y.narrow(2, (s - a) * hop, (e - s) * hop)?;
            out.extend(y.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
            self.emitted = e;
            // Units no later halo reaches are let go.
            let keep_from = self.emitted.saturating_sub(HALO_FRAMES) / lstm_unit;
            while self.post_from < keep_from && !self.post.is_empty() {
                self.post.remove(0);
                self.post_from += 1;
            }
        }
        Ok(out)
    }

    /// LSTM outputs for frames `a..b`, from the units that hold them.
    fn post_frames(&self, a: usize, b: usize) -> Result<Tensor> {
        let unit = LSTM_UNIT_FRAMES;
        let mut parts = Vec::new();
        for i in a / unit..=(b - 1) / unit {
            let t = &self.post[i - self.post_from];
            let start = i * unit;
            let lo = a.max(start) - start;
            let hi = b.min(start + t.dim(2)?) - start;
            parts.push(t.narrow(2, lo, hi - lo)?);
        }
        Tensor::cat(&parts, 2)
    }
}

/// Audio to codes: the SEANet encoder, then residual vector quantization.
#[derive(Debug, Clone)]
pub struct EncodecEncoder {
    layers: Vec<Layer>,
    /// Per quantizer layer, the codebook (codebook_size, codebook_dim).
    codebooks: Vec<Tensor>,
    /// Per codebook, the squared norm of every code, (1, codebook_size).
    code_norms: Vec<Tensor>,
    hop_length: usize,
}

impl EncodecEncoder {
    /// `vb` points at the composite checkpoint's `audio_encoder` prefix;
    /// `num_codebooks` is the number of quantizers to run (see
    /// [`EncodecConfig::num_quantizers`]).
    pub fn new(cfg: &EncodecConfig, num_codebooks: usize, vb: VarBuilder) -> Result<Self> {
        if cfg.audio_channels != 1 {
            bail!(
                "EnCodec with {} audio channels is not supported",
                cfg.audio_channels
            );
        }
        let codebooks = (0..num_codebooks)
            .map(|i| {
                vb.pp("quantizer")
                    .pp("layers")
                    .pp(i)
                    .pp("codebook")
                    .get((cfg.codebook_size, cfg.codebook_dim()), "embed")
            })
            .collect::<Result<Vec<_>>>()?;
        let code_norms = codebooks
            .iter()
            .map(|c| c.sqr()?.sum_keepdim(1)?.t())
            .collect::<Result<Vec<_>>>()?;
        let vb = vb.pp("encoder").pp("layers");
        let mut idx = 0usize;
        let mut next = || {
            idx += 1;
            idx - 1
        };
        let nf = cfg.num_filters;
        let mut layers = vec![Layer::Conv(Conv1d::new(
            cfg,
            cfg.audio_channels,
            nf,
            cfg.kernel_size,
            1,
            vb.pp(next()),
        )?)];
        let mut scaling = 1usize;
        for &ratio in cfg.upsampling_ratios.iter().rev() {
            let scale = scaling * nf;
            for j in 0..cfg.num_residual_layers {
                let dilation = cfg.dilation_growth_rate.pow(j as u32);
                layers.push(Layer::Resnet(ResnetBlock::new(
                    cfg,
                    scale,
                    [dilation, 1],
                    vb.pp(next()),
                )?));
            }
            next();
            layers.push(Layer::Elu);
            layers.push(Layer::Conv(Conv1d::strided(
                cfg,
                scale,
                scale * 2,
                ratio * 2,
                ratio,
                1,
                vb.pp(next()),
            )?));
            scaling *= 2;
        }
        layers.push(Layer::Lstm(Lstm::new(
            scaling * nf,
            cfg.num_lstm_layers,
            vb.pp(next()),
        )?));
        next();
        layers.push(Layer::Elu);
        layers.push(Layer::Conv(Conv1d::new(
            cfg,
            scaling * nf,
            cfg.hidden_size,
            cfg.last_kernel_size,
            1,
            vb.pp(next()),
        )?));
        Ok(Self {
            layers,
            codebooks,
            code_norms,
            hop_length: cfg.hop_length(),
        })
    }

    pub fn num_codebooks(&self) -> usize {
        self.codebooks.len()
    }

    /// The SEANet encoder's output `(1, hidden, frames)` for mono PCM: one frame
    /// per `hop_length` samples, the last one padded.
    pub fn embeddings(&self, pcm: &Tensor) -> Result<Tensor> {
        let n = pcm.dim(0)?;
        if n == 0 {
            bail!("EnCodec encode needs at least one sample");
        }
        let x = pcm.to_dtype(DType::F32)?.reshape((1, 1, n))?;
        EncodecDecoder::run(&self.layers, x)
    }

    /// Residual vector quantization of embeddings `(1, hidden, frames)`: per
    /// codebook, the nearest code by squared distance (computed as the reference
    /// does, `|r|² - 2 r·e + |e|²`), subtracted before the next. Codes
    /// `(codebooks, frames)`, u32.
    pub fn quantize(&self, embeddings: &Tensor) -> Result<Tensor> {
        let mut residual = embeddings.squeeze(0)?.t()?.contiguous()?; // (frames, dim)
        let mut rows = Vec::with_capacity(self.codebooks.len());
        for (codebook, norms) in self.codebooks.iter().zip(&self.code_norms) {
            let r2 = residual.sqr()?.sum_keepdim(1)?; // (frames, 1)
            let dots = residual.matmul(&codebook.t()?)?; // (frames, codes)
            let dist = (r2.broadcast_sub(&(dots * 2.0)?)?).broadcast_add(norms)?;
            let idx = dist.argmin_keepdim(1)?.squeeze(1)?; // (frames,)
            residual = (residual - codebook.embedding(&idx)?)?;
            rows.push(idx);
        }
        Tensor::stack(&rows, 0)
    }

    /// Mono PCM at the codec's rate to codes `(codebooks, ceil(samples / hop))`.
    pub fn encode(&self, pcm: &Tensor) -> Result<Tensor> {
        let emb = self.embeddings(pcm)?;
        let frames = pcm.dim(0)?.div_ceil(self.hop_length);
        if emb.dim(2)? != frames {
            bail!(
                "EnCodec encoder gave {} frames for {} samples, expected {frames}",
                emb.dim(2)?,
                pcm.dim(0)?
            );
        }
        self.quantize(&emb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn row(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn reflect_pad_matches_torch() {
        let x = Tensor::new(&[[[1f32, 2., 3., 4.]]], &Device::Cpu).unwrap();
        // torch.nn.functional.pad(x, (2, 3), "reflect") = [3, 2, 1, 2, 3, 4, 3, 2, 1]
        assert_eq!(
            row(&pad1d(&x, 2, 3, PadMode::Reflect).unwrap()),
            vec![3., 2., 1., 2., 3., 4., 3., 2., 1.]
        );
    }

    #[test]
    fn reflect_pad_of_a_short_input_zero_extends_first() {
        // Length 2 with pads (3, 3): the reference appends 2 zeros, reflects, and
        // drops the 2 extra samples from the end.
        let x = Tensor::new(&[[[1f32, 2.]]], &Device::Cpu).unwrap();
        // [1, 2, 0, 0] reflected by 3: [0, 0, 2 | 1, 2, 0, 0 | 0, 2, 1]; minus 2 at the end.
        assert_eq!(
            row(&pad1d(&x, 3, 3, PadMode::Reflect).unwrap()),
            vec![0., 0., 2., 1., 2., 0., 0., 0.]
        );
    }

    #[test]
    fn chunked_decode_equals_one_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/models/tiny-a");
        let cfg: crate::config::Config =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
        }
        .unwrap();
        let mut dec = EncodecDecoder::new(&cfg.audio_encoder, 4, vb.pp("audio_encoder")).unwrap();
        let frames = 45;
        let codes: Vec<u32> = (0..4 * frames as u32).map(|i| (i * 37 + 11) % 64).collect();
        let codes = Tensor::from_vec(codes, (4, frames), &Device::Cpu).unwrap();
        let whole = row(&dec.decode(&codes).unwrap());
        dec.chunk_frames = 7;
        let chunked = row(&dec.decode(&codes).unwrap());
        assert_eq!(whole.len(), frames * 640);
        assert_eq!(chunked.len(), whole.len());
        let peak = whole.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = whole
            .iter()
            .zip(&chunked)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-6 * peak,
            "chunked decode differs by {err} (peak {peak})"
        );
    }

    #[test]
    fn zero_pad() {
        let x = Tensor::new(&[[[1f32, 2.]]], &Device::Cpu).unwrap();
        assert_eq!(
            row(&pad1d(&x, 1, 2, PadMode::Zero).unwrap()),
            vec![0., 1., 2., 0., 0.]
        );
    }
}

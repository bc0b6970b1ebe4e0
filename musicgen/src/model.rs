//! The whole pipeline, after transformers' `MusicgenForConditionalGeneration`:
//! prompt -> tokenizer -> T5 -> (projection) -> decoder loop with the codebook
//! delay pattern and classifier-free guidance -> EnCodec -> 32 kHz PCM; an audio
//! prompt goes through the EnCodec encoder first and its codes lead the decoder
//! input (`generate(input_values=...)`). Takes over 30 s are generated in windows
//! as audiocraft's `MusicGen.generate` does with `extend_stride`.
//!
//! MusicGen-melody checkpoints (`MusicgenMelodyForConditionalGeneration`) run the
//! same loop with a decoder that takes its conditioning as a prefix: the
//! melody's chroma (or the null chroma) projected to the decoder's width and
//! tiled or cut to `chroma_length` frames, then the projected text states.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::models::t5;

use crate::chroma::{self, Chroma, ChromaConfig, NUM_CHROMA};
use crate::config::{Config, GenerationConfig, MELODY_CHECKPOINTS};
use crate::decoder::Decoder;
use crate::encodec::{EncodecDecoder, EncodecEncoder};
use crate::error::{Error, Result};
use crate::hub::{self, DownloadProgress, HubOptions, ModelFiles};
use crate::request::{
    DeviceChoice, GenerationDefaults, GenerationRequest, Melody, ModelSource, Pcm, Precision,
    MAX_FRAMES, MAX_PROMPT_TOKENS,
};
use crate::sampling::LogitsProcessor;

/// What the engine is doing, reported as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Download(DownloadProgress),
    Loading,
    EncodingText,
    /// The audio prompt goes through the EnCodec encoder.
    EncodingAudio,
    /// The melody's chroma is computed (once per window).
    EncodingMelody,
    /// Audio that is final, as it is generated: `pcm` (interleaved when
    /// stereo) starts `start` samples (per channel) into the take. The pieces
    /// joined are the take's audio exactly.
    Audio {
        start: usize,
        pcm: Vec<f32>,
    },
    /// Window `index` (from 1) of `count` starts; its steps follow. Takes up to
    /// 30 s are one window.
    Window {
        index: usize,
        count: usize,
    },
    /// Decoder step `step` of `total` (of the current window) is done.
    Step {
        step: usize,
        total: usize,
    },
    DecodingAudio,
}

/// How each step's codes are chosen.
pub enum CodeSource<'a> {
    /// Drawn by the logits processor.
    Sample(&'a mut LogitsProcessor),
    /// Teacher forcing: the given codes `(codebooks, frames)` are fed back whatever
    /// the logits say; used to compare logits with a reference run.
    Forced(&'a [Vec<u32>]),
}

/// What the decoder is conditioned on, made by [`MusicGen::encode_prompt`] or
/// [`MusicGen::conditioning`].
#[derive(Debug, Clone)]
pub enum Conditioning {
    /// MusicGen: the prompt's T5 states, projected to the decoder's width,
    /// `(1, tokens, hidden)`; the decoder cross-attends to them.
    Text(Tensor),
    /// MusicGen-melody: the prefix the decoder input follows, `(1, len, hidden)`
    /// (chroma frames, then text states), and classifier-free guidance's null
    /// prefix of the same shape (the null chroma, then zeros), as transformers'
    /// `_prepare_encoder_hidden_states_kwargs_for_generation` builds them.
    Prefix { cond: Tensor, null: Tensor },
}

impl Conditioning {
    /// Decoder positions the conditioning takes ahead of the codes.
    pub fn prefix_len(&self) -> usize {
        match self {
            Conditioning::Text(_) => 0,
            Conditioning::Prefix { cond, .. } => cond.dim(1).unwrap_or(0),
        }
    }
}

/// Told after each step how many of a window's frames are final, with the
/// codes so far; what it returns is reported as progress.
type FinalFrames<'a> = &'a mut dyn FnMut(&[Vec<u32>], usize) -> Option<Progress>;

/// Sees each decoder step's guided logits `(codebooks, vocab)`.
pub type LogitsObserver<'a> = &'a mut dyn FnMut(usize, &Tensor);

/// Time spent in each stage of one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub text: Duration,
    /// The EnCodec encoder on the audio prompt.
    pub prompt_audio: Duration,
    /// Melody chroma, all windows together.
    pub melody: Duration,
    /// One entry per decoder step.
    pub steps: Vec<Duration>,
    pub audio: Duration,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// `(codebooks, frames)` in the decoder's order (stereo: even rows left, odd
    /// rows right), the delay pattern undone; the audio prompt's frames first.
    pub codes: Vec<Vec<u32>>,
    /// PCM at `sample_rate`, `frames * hop_length` samples per channel,
    /// interleaved when `channels` is 2. Holds the audio prompt's frames too.
    pub audio: Vec<f32>,
    pub sample_rate: u32,
    /// 1 for mono checkpoints, 2 for stereo ones.
    pub channels: usize,
    /// Frames at the start of `codes` (and `audio`) that come from the audio
    /// prompt (after trimming it to one window minus the stride); 0 without one.
    pub prompt_frames: usize,
    pub timings: Timings,
}

impl Generation {
    /// Samples per channel.
    pub fn len(&self) -> usize {
        self.audio.len() / self.channels.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.audio.is_empty()
    }

    /// The interleaved PCM after the audio prompt: what a continuation adds.
    pub fn continuation(&self) -> &[f32] {
        let hop = self.len() / self.codes.first().map(|r| r.len()).unwrap_or(1).max(1);
        &self.audio[(self.prompt_frames * hop * self.channels).min(self.audio.len())..]
    }
}

/// A take's audio decoded as its codes come (one EnCodec stream per channel):
/// [`AudioStream::ready`] gives back the audio that is final, interleaved; the
/// pieces joined are [`MusicGen::decode_audio`] of all the codes exactly.
pub struct AudioStream {
    streams: Vec<crate::encodec::DecodeStream>,
}

impl AudioStream {
    /// Appends frames of codes `(codebooks, frames)` in the decoder's order.
    pub fn push(&mut self, codes: &[Vec<u32>]) -> Result<()> {
        let ch = self.streams.len();
        for (side, stream) in self.streams.iter_mut().enumerate() {
            let rows: Vec<Vec<u32>> = codes.iter().skip(side).step_by(ch).cloned().collect();
            stream.push(&rows)?;
        }
        Ok(())
    }

    /// Frames of codes pushed so far.
    pub fn frames(&self) -> usize {
        self.streams.first().map_or(0, |s| s.frames())
    }

    /// Samples per channel given back so far.
    pub fn samples(&self) -> usize {
        self.streams.first().map_or(0, |s| s.samples())
    }

    /// The audio that is final now, interleaved (empty when none is yet).
    pub fn ready(&mut self) -> Result<Vec<f32>> {
        let sides = self
            .streams
            .iter_mut()
            .map(|s| s.ready())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(interleave_sides(sides))
    }

    /// The rest, once every frame is pushed.
    pub fn finish(self) -> Result<Vec<f32>> {
        let sides = self
            .streams
            .into_iter()
            .map(|s| s.finish())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(interleave_sides(sides))
    }
}

fn interleave_sides(mut sides: Vec<Vec<f32>>) -> Vec<f32> {
    if sides.len() == 1 {
        return sides.pop().unwrap_or_default();
    }
    crate::wav::interleave(&Pcm {
        channels: sides,
        sample_rate: 0,
    })
}

/// The windows a take of `total` frames (audio prompt included) is made in, when
/// its first window starts from `prompt` frames: `(start, frames)` per window, in
/// frames of the take. audiocraft's loop: each window after the first starts
/// `stride` frames after the one before, with that window's last `window - stride`
/// frames as its prompt.
pub fn plan_windows(
    total: usize,
    prompt: usize,
    window: usize,
    stride: usize,
) -> Vec<(usize, usize)> {
    if total <= window || stride == 0 || stride >= window {
        return vec![(0, total)];
    }
    let mut out = Vec::new();
    let (mut offset, mut prompt_len) = (0, prompt);
    while offset + prompt_len < total {
        let len = (total - offset).min(window);
        out.push((offset, len));
        prompt_len = len.saturating_sub(stride);
        offset += stride;
    }
    out
}

/// A dedicated rayon pool for the engine's compute, so a generation neither
/// competes with nor waits behind other users of rayon's global pool.
pub fn compute_pool(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("musicgen-compute-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Device(format!("cannot start the compute pool: {e}")))
}

/// The candle device for a choice: a GPU only when compiled in and present.
pub fn select_device(choice: DeviceChoice) -> Result<Device> {
    let cuda = || {
        // One explicit stream for every thread: the step runs on the compute
        // pool and its logits are read on the caller's thread, which with
        // CUDA's per-thread default stream would be unordered.
        Device::new_cuda_with_stream(0)
            .map(one_stream)
            .map_err(|e| {
                Error::Device(if cfg!(feature = "cuda") {
                    format!("no usable CUDA GPU: {e}")
                } else {
                    "this build has no CUDA support: rebuild with `--features cuda`".to_string()
                })
            })
    };
    let metal = || {
        Device::new_metal(0).map_err(|e| {
            Error::Device(if cfg!(feature = "metal") {
                format!("no usable Metal GPU: {e}")
            } else {
                "this build has no Metal support: rebuild with `--features metal`".to_string()
            })
        })
    };
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => cuda(),
        DeviceChoice::Metal => metal(),
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = cuda() {
                    return Ok(d);
                }
            }
            if candle_core::utils::metal_is_available() {
                if let Ok(d) = metal() {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

/// A device whose work all goes to one stream needs no cross-stream events.
#[cfg(feature = "cuda")]
fn one_stream(device: Device) -> Device {
    if let Ok(cuda) = device.as_cuda_device() {
        // SAFETY: called before any tensor exists on the device, and the engine
        // only ever uses its one stream, so no use can race another stream.
        unsafe { cuda.disable_event_tracking() }
    }
    device
}

#[cfg(not(feature = "cuda"))]
fn one_stream(device: Device) -> Device {
    device
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.to_path_buf(),
        },
        _ => Error::BadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })?;
    serde_json::from_str(&text).map_err(|e| Error::BadFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Where quantized matrices are kept between loads: `$PROMPTLOOP_CACHE_DIR`, else
/// the user's cache folder (`~/.cache/promptloop/quantized` on Linux).
pub fn default_quant_cache() -> Option<std::path::PathBuf> {
    match std::env::var_os("PROMPTLOOP_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => Some(std::path::PathBuf::from(dir).join("quantized")),
        _ => dirs::cache_dir().map(|d| d.join("promptloop").join("quantized")),
    }
}

/// The cache file name for a checkpoint's quantized matrices: changes whenever
/// the weight files, the precision or the engine do.
fn quant_cache_name(files: &ModelFiles, precision: Precision) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    crate::ENGINE_VERSION.hash(&mut h);
    precision.name().hash(&mut h);
    for w in &files.weights {
        std::fs::canonicalize(w)
            .unwrap_or_else(|_| w.clone())
            .hash(&mut h);
        if let Ok(meta) = std::fs::metadata(w) {
            meta.len().hash(&mut h);
            meta.modified().ok().hash(&mut h);
        }
    }
    format!("decoder-{}-{:016x}.gguf", precision.name(), h.finish())
}

type QuantTensors = std::collections::HashMap<String, Arc<candle_core::quantized::QTensor>>;

fn read_quant_cache(file: &Path, device: &Device) -> Option<QuantTensors> {
    use candle_core::quantized::gguf_file;
    let mut f = std::fs::File::open(file).ok()?;
    let content = gguf_file::Content::read(&mut f).ok()?;
    let mut out = QuantTensors::new();
    for name in content.tensor_infos.keys() {
        let t = content.tensor(&mut f, name, device).ok()?;
        out.insert(name.clone(), Arc::new(t));
    }
    Some(out)
}

fn write_quant_cache(
    file: &Path,
    tensors: &[(String, Arc<candle_core::quantized::QTensor>)],
) -> Result<()> {
    use candle_core::quantized::gguf_file;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Written beside, then renamed: a reader never sees half a file.
    let tmp = file.with_extension("gguf.partial");
    let mut f = std::fs::File::create(&tmp)?;
    let refs: Vec<(&str, &candle_core::quantized::QTensor)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_ref()))
        .collect();
    gguf_file::write(&mut f, &[], &refs)?;
    drop(f);
    std::fs::rename(&tmp, file)?;
    Ok(())
}

/// Hands memory freed by a window (its caches, the prefill's temporaries)
/// back to the system. glibc raises its mmap threshold after large frees and
/// then keeps such blocks in its arenas: without this a 120 s take grew by
/// ~350 MB over its windows.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn check_cancel(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}

/// A loaded MusicGen checkpoint, ready to generate. Keep it between generations.
pub struct MusicGen {
    config: Config,
    defaults: GenerationDefaults,
    pad_token: u32,
    tokenizer: tokenizers::Tokenizer,
    text_encoder: t5::T5EncoderModel,
    enc_to_dec_proj: Option<Linear>,
    /// Melody: chroma (12 bins) to the decoder's width, where they differ.
    audio_enc_to_dec_proj: Option<Linear>,
    /// Melody: the feature extractor's settings; `None` for text-only checkpoints.
    chroma: Option<ChromaConfig>,
    decoder: Decoder,
    audio: EncodecDecoder,
    audio_in: EncodecEncoder,
    /// 1 (mono) or 2 (stereo: codebooks interleaved left, right).
    channels: usize,
    device: Device,
    precision: Precision,
    pool: Arc<rayon::ThreadPool>,
}

impl MusicGen {
    /// Resolves `source` (downloading it if needed) and loads it.
    pub fn from_source(
        source: &ModelSource,
        hub: &HubOptions,
        device: DeviceChoice,
        precision: Precision,
        pool: Arc<rayon::ThreadPool>,
        progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
    ) -> Result<Self> {
        check_cancel(cancel)?;
        let files = hub::resolve(source, hub, &mut |p| progress(Progress::Download(p)))?;
        check_cancel(cancel)?;
        progress(Progress::Loading);
        let device = select_device(device)?;
        Self::load_with_cache(
            &files,
            &device,
            precision,
            pool,
            default_quant_cache().as_deref(),
        )
    }

    /// Loads a checkpoint from its files on local disk.
    pub fn load(
        files: &ModelFiles,
        device: &Device,
        precision: Precision,
        pool: Arc<rayon::ThreadPool>,
    ) -> Result<Self> {
        Self::load_with_cache(files, device, precision, pool, None)
    }

    /// [`MusicGen::load`], keeping quantized decoder matrices in `quant_cache` (a
    /// folder): the first load of a checkpoint in a quantized precision writes
    /// them there, later loads read them instead of quantizing again. A cache file
    /// that cannot be read is ignored and rewritten.
    pub fn load_with_cache(
        files: &ModelFiles,
        device: &Device,
        precision: Precision,
        pool: Arc<rayon::ThreadPool>,
        quant_cache: Option<&Path>,
    ) -> Result<Self> {
        let config: Config = read_json(&files.config)?;
        let dir = files
            .config
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        config
            .check_supported()
            .map_err(|reason| Error::UnsupportedModel {
                path: dir.clone(),
                reason,
            })?;
        let gen: GenerationConfig = match &files.generation_config {
            Some(p) => read_json(p)?,
            None => GenerationConfig::default(),
        };
        let mut tokenizer = tokenizers::Tokenizer::from_file(&files.tokenizer).map_err(|e| {
            Error::Tokenizer(format!("cannot read {}: {e}", files.tokenizer.display()))
        })?;
        // The request decides the length; never let tokenizer.json truncate or pad.
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);

        for w in &files.weights {
            if !w.is_file() {
                return Err(Error::MissingFile { path: w.clone() });
            }
        }
        let weights_err = |source: candle_core::Error| Error::Weights {
            path: files.weights.first().cloned().unwrap_or_default(),
            source,
        };
        // SAFETY: the files are memory-mapped read-only; like every safetensors
        // loader we rely on them not being modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files.weights, DType::F32, device) }
            .map_err(weights_err)?;
        let cache_file = match (precision.quantization(), quant_cache) {
            (Some(_), Some(dir)) => Some(dir.join(quant_cache_name(files, precision))),
            _ => None,
        };
        let quantizer = precision.quantization().map(|dtype| {
            let cached = cache_file
                .as_deref()
                .and_then(|f| read_quant_cache(f, device))
                .unwrap_or_default();
            crate::decoder::Quantizer::new(dtype, cached)
        });
        let chroma = if config.is_melody() {
            Some(match &files.preprocessor_config {
                Some(p) => ChromaConfig::from_file(p)?,
                None => ChromaConfig::default(),
            })
        } else {
            None
        };
        let channels = config.decoder.audio_channels;
        let per_channel = config.decoder.num_codebooks / channels;
        let (text_encoder, enc_to_dec_proj, audio_enc_to_dec_proj, decoder, audio, audio_in) = pool
            .install(|| -> candle_core::Result<_> {
                let text_encoder =
                    t5::T5EncoderModel::load(vb.pp("text_encoder"), &config.text_encoder)?;
                let (dt, dd) = (config.text_encoder.d_model, config.decoder.hidden_size);
                let enc_to_dec_proj = if dt != dd {
                    Some(candle_nn::linear(dt, dd, vb.pp("enc_to_dec_proj"))?)
                } else {
                    None
                };
                let audio_enc_to_dec_proj = if config.is_melody() && config.num_chroma != dd {
                    Some(candle_nn::linear(
                        config.num_chroma,
                        dd,
                        vb.pp("audio_enc_to_dec_proj"),
                    )?)
                } else {
                    None
                };
                let decoder = Decoder::new(
                    &config.decoder,
                    !config.is_melody(),
                    quantizer.as_ref(),
                    vb.pp("decoder").set_dtype(precision.float_dtype()),
                )?;
                let audio = EncodecDecoder::new(
                    &config.audio_encoder,
                    per_channel,
                    vb.pp("audio_encoder"),
                )?;
                let audio_in = EncodecEncoder::new(
                    &config.audio_encoder,
                    per_channel,
                    vb.pp("audio_encoder"),
                )?;
                Ok((
                    text_encoder,
                    enc_to_dec_proj,
                    audio_enc_to_dec_proj,
                    decoder,
                    audio,
                    audio_in,
                ))
            })
            .map_err(weights_err)?;
        if let (Some(q), Some(file)) = (&quantizer, &cache_file) {
            let fresh = q.take_fresh();
            if !fresh.is_empty() {
                // A cache: failing to write it only costs the next load time.
                let _ = write_quant_cache(file, &fresh);
            }
        }
        let defaults = GenerationDefaults::from_config(&gen, config.decoder.num_codebooks);
        let pad_token = config.pad_token_id(&gen);
        Ok(Self {
            config,
            defaults,
            pad_token,
            tokenizer,
            text_encoder,
            enc_to_dec_proj,
            audio_enc_to_dec_proj,
            chroma,
            decoder,
            audio,
            audio_in,
            channels,
            device: device.clone(),
            precision,
            pool,
        })
    }

    /// Undoes decoder optimisations, to measure what each buys (benchmarks only).
    #[cfg(feature = "bench")]
    pub fn set_ablation(&mut self, ablation: crate::decoder::Ablation) {
        self.decoder.set_ablation(ablation);
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The checkpoint's sampling defaults (`generation_config.json`).
    pub fn defaults(&self) -> GenerationDefaults {
        self.defaults
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn num_codebooks(&self) -> usize {
        self.config.decoder.num_codebooks
    }

    /// Audio channels: 1, or 2 for the stereo checkpoints.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Frames in one decoder window (30 s, or fewer where the checkpoint's
    /// positions run out first; a melody decoder's positions also hold the
    /// chroma and the longest text prompt).
    pub fn window_frames(&self) -> usize {
        let max_delay = self.num_codebooks() / self.channels - 1;
        let prefix = match self.chroma {
            Some(_) => self.config.chroma_length + MAX_PROMPT_TOKENS,
            None => 0,
        };
        MAX_FRAMES.min(
            self.decoder
                .max_positions()
                .saturating_sub(max_delay + 1 + prefix),
        )
    }

    /// Whether this checkpoint takes a melody (MusicGen-melody).
    pub fn has_melody(&self) -> bool {
        self.chroma.is_some()
    }

    /// The melody feature extractor's settings (melody checkpoints only).
    pub fn chroma_config(&self) -> Option<&ChromaConfig> {
        self.chroma.as_ref()
    }

    /// Frames a window after the first adds, for a stride in seconds: audiocraft's
    /// `int(frame_rate * extend_stride)`.
    pub fn stride_frames(&self, stride_s: f64) -> usize {
        (self.frame_rate() * stride_s) as usize
    }

    pub fn sample_rate(&self) -> u32 {
        self.config.audio_encoder.sampling_rate as u32
    }

    /// Code frames per second (50 for MusicGen).
    pub fn frame_rate(&self) -> f64 {
        self.config.audio_encoder.frame_rate()
    }

    /// Audio samples per frame (640 for MusicGen).
    pub fn hop_length(&self) -> usize {
        self.audio.hop_length()
    }

    /// The prompt's token ids (end-of-sequence included); an error past 256 tokens.
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        if ids.len() > MAX_PROMPT_TOKENS {
            return Err(Error::PromptTooLong {
                tokens: ids.len(),
                max: MAX_PROMPT_TOKENS,
            });
        }
        Ok(ids)
    }

    /// The T5 encoder's last hidden states `(1, tokens, d_text)` for token ids.
    pub fn text_states(&mut self, ids: &[u32]) -> Result<Tensor> {
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let encoder = &mut self.text_encoder;
        Ok(self.pool.install(|| encoder.forward(&input))?)
    }

    /// The prompt's T5 states, projected to the decoder's width when they differ
    /// (times the all-ones attention mask), `(1, tokens, hidden)`; `None` for an
    /// empty prompt, which is MusicGen's unconditional generation.
    pub fn encode_text(&mut self, prompt: &str) -> Result<Option<Tensor>> {
        if prompt.trim().is_empty() {
            return Ok(None);
        }
        let ids = self.tokenize(prompt)?;
        let states = self.text_states(&ids)?;
        let states = match &self.enc_to_dec_proj {
            Some(proj) => self.pool.install(|| proj.forward(&states))?,
            None => states,
        };
        Ok(Some(states))
    }

    /// The decoder's conditioning for a prompt alone (a melody checkpoint gets
    /// the null chroma); `None` for an empty prompt.
    pub fn encode_prompt(&mut self, prompt: &str) -> Result<Option<Conditioning>> {
        let text = self.encode_text(prompt)?;
        self.conditioning(text.as_ref(), None)
    }

    /// The decoder's conditioning from projected text states ([`MusicGen::encode_text`])
    /// and, for a melody checkpoint, one-hot chroma frames (`None`: the null
    /// chroma, a one at bin 0). Nothing at all gives `None`: unconditional.
    pub fn conditioning(
        &self,
        text: Option<&Tensor>,
        chroma: Option<&Chroma>,
    ) -> Result<Option<Conditioning>> {
        if self.chroma.is_none() {
            if chroma.is_some() {
                return Err(self.no_melody());
            }
            return Ok(text.cloned().map(Conditioning::Text));
        }
        if text.is_none() && chroma.is_none() {
            return Ok(None);
        }
        let chroma_length = self.config.chroma_length;
        let project = |frames: &[[f32; NUM_CHROMA]]| -> Result<Tensor> {
            if frames.is_empty() {
                return Err(Error::EmptyAudio { what: "melody" });
            }
            let flat: Vec<f32> = frames.iter().flatten().copied().collect();
            let t = Tensor::from_vec(flat, (1, frames.len(), NUM_CHROMA), &self.device)?;
            let t = match &self.audio_enc_to_dec_proj {
                Some(proj) => self.pool.install(|| proj.forward(&t))?,
                None => t,
            };
            // Tiled up to chroma_length when shorter, then cut to it.
            let n = frames.len();
            let t = if n < chroma_length {
                let copies = vec![&t; chroma_length.div_ceil(n)];
                Tensor::cat(&copies, 1)?
            } else {
                t
            };
            Ok(t.narrow(1, 0, chroma_length)?)
        };
        let mut null_frame = [0f32; NUM_CHROMA];
        null_frame[0] = 1.0;
        let null_melody = project(&[null_frame])?;
        let cond_melody = match chroma {
            Some(frames) => project(frames)?,
            None => null_melody.clone(),
        };
        let (cond, null) = match text {
            Some(states) => {
                let states = states.to_dtype(cond_melody.dtype())?;
                (
                    Tensor::cat(&[&cond_melody, &states], 1)?,
                    Tensor::cat(&[&null_melody, &states.zeros_like()?], 1)?,
                )
            }
            None => (cond_melody, null_melody),
        };
        Ok(Some(Conditioning::Prefix { cond, null }))
    }

    fn no_melody(&self) -> Error {
        Error::MelodyUnsupported {
            checkpoints: MELODY_CHECKPOINTS.join(", "),
        }
    }

    /// The chroma a window that starts `start_s` seconds into the take is
    /// conditioned on. The first window's is the feature extractor's, exactly
    /// (audio), or the same frames from notes; a later window's melody moves with
    /// it as audiocraft's does: the melody, looped, from `start_s` on, for the
    /// extractor's `chunk_length` seconds.
    pub fn melody_chroma(&self, melody: &Melody, start_s: f64) -> Result<Chroma> {
        let config = self.chroma.as_ref().ok_or_else(|| self.no_melody())?;
        let rate = config.sampling_rate as f64;
        let span = config.chunk_length as f64;
        match melody {
            Melody::Audio(pcm) if start_s <= 0.0 => chroma::chroma_from_audio(config, pcm),
            Melody::Audio(pcm) => {
                pcm.check("melody")?;
                let mono = crate::wav::to_channels(pcm, 1);
                let at_rate = crate::wav::resample_pcm(&mono, config.sampling_rate)?;
                let src = &at_rate.channels[0];
                if src.is_empty() {
                    return Err(Error::EmptyAudio { what: "melody" });
                }
                let from = (start_s * rate).round() as usize;
                let looped: Vec<f32> = (0..(span * rate) as usize)
                    .map(|i| src[(from + i) % src.len()])
                    .collect();
                chroma::chroma_from_audio(config, &Pcm::mono(looped, config.sampling_rate))
            }
            Melody::Notes { notes, duration_s } => {
                let (offset, frames) = if start_s <= 0.0 {
                    (0.0, config.frames_for((duration_s * rate).round() as usize))
                } else {
                    (start_s, config.frames_for((span * rate) as usize))
                };
                chroma::chroma_from_looped_notes(config, notes, *duration_s, offset, frames)
            }
        }
    }

    /// Runs the decoder loop and returns codes `(codebooks, frames)`. `on_logits`
    /// sees each step's guided logits `(codebooks, vocab)`.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_codes(
        &mut self,
        conditioning: Option<&Conditioning>,
        frames: usize,
        guidance_scale: f64,
        codes_from: CodeSource<'_>,
        on_logits: Option<LogitsObserver<'_>>,
        progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
        step_times: &mut Vec<Duration>,
    ) -> Result<Vec<Vec<u32>>> {
        let prompt = vec![Vec::new(); self.num_codebooks()];
        self.continue_codes(
            conditioning,
            &prompt,
            frames,
            guidance_scale,
            codes_from,
            on_logits,
            progress,
            cancel,
            step_times,
        )
    }

    /// One window of the decoder loop after `prompt` codes `(codebooks, prompt
    /// frames)`, as transformers' `generate` with `decoder_input_ids` from an audio
    /// prompt: the start column and the prompt, in the delay pattern, run as one
    /// prefill; then one step per column until `new_frames` frames follow the
    /// prompt. Returns prompt + new codes `(codebooks, prompt + new frames)`.
    /// `on_logits` sees each step's guided logits `(codebooks, vocab)`; forced
    /// codes index the whole take, prompt included.
    #[allow(clippy::too_many_arguments)]
    pub fn continue_codes(
        &mut self,
        conditioning: Option<&Conditioning>,
        prompt: &[Vec<u32>],
        new_frames: usize,
        guidance_scale: f64,
        codes_from: CodeSource<'_>,
        on_logits: Option<LogitsObserver<'_>>,
        progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
        step_times: &mut Vec<Duration>,
    ) -> Result<Vec<Vec<u32>>> {
        self.continue_codes_with(
            conditioning,
            prompt,
            new_frames,
            guidance_scale,
            codes_from,
            on_logits,
            progress,
            cancel,
            step_times,
            &mut |_, _| None,
        )
    }

    /// [`MusicGen::continue_codes`], telling `on_final` after every step how
    /// many of the window's frames are final (every codebook sampled) with the
    /// codes so far; what it returns is reported as progress.
    #[allow(clippy::too_many_arguments)]
    fn continue_codes_with(
        &mut self,
        conditioning: Option<&Conditioning>,
        prompt: &[Vec<u32>],
        new_frames: usize,
        guidance_scale: f64,
        mut codes_from: CodeSource<'_>,
        mut on_logits: Option<LogitsObserver<'_>>,
        progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
        step_times: &mut Vec<Duration>,
        on_final: FinalFrames<'_>,
    ) -> Result<Vec<Vec<u32>>> {
        let k = self.num_codebooks();
        let ch = self.channels;
        if new_frames == 0 {
            return Err(Error::InvalidRequest("zero frames asked".into()));
        }
        let p = prompt.first().map(|r| r.len()).unwrap_or(0);
        if prompt.len() != k || prompt.iter().any(|r| r.len() != p) {
            return Err(Error::InvalidRequest(format!(
                "prompt codes must be {k} rows of one length"
            )));
        }
        let vocab = self.config.decoder.vocab_size as u32;
        if let Some(bad) = prompt.iter().flatten().find(|&&c| c >= vocab) {
            return Err(Error::InvalidRequest(format!(
                "prompt code {bad} is outside the codebook (0..{vocab})"
            )));
        }
        let frames = p + new_frames;
        // Stereo codebooks 2c and 2c + 1 share codebook c's delay.
        let max_delay = k / ch - 1;
        let last_column = frames + max_delay;
        let prefix_len = conditioning.map_or(0, Conditioning::prefix_len);
        // The start column plus one column per frame and delay, after any prefix.
        if prefix_len + last_column + 1 > self.decoder.max_positions() {
            return Err(Error::InvalidRequest(format!(
                "{frames} frames (and {prefix_len} positions of conditioning) need {} decoder positions; this checkpoint has {}",
                prefix_len + last_column + 1,
                self.decoder.max_positions()
            )));
        }
        if let Some(c) = conditioning {
            if matches!(c, Conditioning::Text(_)) != self.decoder.has_cross_attention() {
                return Err(Error::InvalidRequest(
                    "the conditioning was made for another kind of checkpoint".into(),
                ));
            }
        }
        if let CodeSource::Forced(forced) = &codes_from {
            if forced.len() != k || forced.iter().any(|row| row.len() < frames) {
                return Err(Error::InvalidRequest(format!(
                    "forced codes must be {k} rows of at least {frames} frames"
                )));
            }
        }
        // Classifier-free guidance doubles the batch: row 0 conditional, row 1
        // unconditional. Without conditioning both rows would be equal, and so
        // uncond + s * (cond - uncond) = uncond: one row does.
        let guided = guidance_scale > 1.0 && conditioning.is_some();
        let batch = if guided { 2 } else { 1 };
        let pad = self.pad_token;
        let device = self.device.clone();
        let decoder = &mut self.decoder;
        let pool = self.pool.clone();
        let mut codes: Vec<Vec<u32>> = prompt
            .iter()
            .map(|r| {
                let mut row = r.clone();
                row.resize(frames, pad);
                row
            })
            .collect();
        // Column j of the delay pattern: codebook c holds frame j - delay(c) - 1
        // when in range, else padding.
        let column_of = |codes: &[Vec<u32>], j: usize, out: &mut Vec<u32>| {
            for (c, row) in codes.iter().enumerate() {
                let d = c / ch;
                out.push(if j > d && j <= d + frames {
                    row[j - d - 1]
                } else {
                    pad
                });
            }
        };

        let states = match conditioning {
            None => None,
            Some(Conditioning::Text(t)) => Some(t.clone()),
            Some(Conditioning::Prefix { cond, .. }) if !guided => Some(cond.clone()),
            Some(Conditioning::Prefix { cond, null }) => Some(Tensor::cat(&[cond, null], 0)?),
        };
        pool.install(|| decoder.reset(states.as_ref(), prefix_len + last_column + 1))?;
        // Columns 0..=p hold only the start token, the prompt and padding: one prefill.
        let mut input = Vec::with_capacity(batch * k * (p + 1));
        let mut col = Vec::with_capacity(k);
        let mut prefill = vec![Vec::with_capacity(p + 1); k];
        for j in 0..=p {
            col.clear();
            column_of(&codes, j, &mut col);
            for (c, &v) in col.iter().enumerate() {
                prefill[c].push(v);
            }
        }
        for _ in 0..batch {
            for row in &prefill {
                input.extend_from_slice(row);
            }
        }
        let mut width = p + 1;
        let steps = last_column - p;
        for step in 0..steps {
            check_cancel(cancel)?;
            let t0 = Instant::now();
            // Only the tensor work runs in the compute pool; callbacks stay on the caller's thread.
            let logits = pool.install(|| -> candle_core::Result<Tensor> {
                let ids = Tensor::from_slice(&input, (batch, k, width), &device)?;
                let logits = decoder.forward(&ids)?; // (batch, k, width, vocab)
                let logits = logits.narrow(2, width - 1, 1)?.squeeze(2)?;
                if guided {
                    let cond = logits.get(0)?;
                    let uncond = logits.get(1)?;
                    &uncond + ((&cond - &uncond)? * guidance_scale)?
                } else {
                    logits.get(0)
                }
            })?;
            if let Some(f) = on_logits.as_mut() {
                f(step, &logits);
            }
            let j = p + 1 + step;
            // Only the sampler needs the logits on the host.
            let rows: Vec<Vec<f32>> = match codes_from {
                CodeSource::Sample(_) => logits.to_vec2()?,
                CodeSource::Forced(_) => Vec::new(),
            };
            for c in 0..k {
                let d = c / ch;
                if j > d && j <= d + frames {
                    let f = j - d - 1;
                    if f >= p {
                        codes[c][f] = match &mut codes_from {
                            CodeSource::Forced(forced) => forced[c][f],
                            CodeSource::Sample(s) => s.sample(&rows[c]),
                        };
                    }
                }
            }
            input.clear();
            col.clear();
            column_of(&codes, j, &mut col);
            for _ in 0..batch {
                input.extend_from_slice(&col);
            }
            width = 1;
            step_times.push(t0.elapsed());
            // Column j completes frame j - max_delay - 1 in the last codebook.
            let final_frames = j.saturating_sub(max_delay).clamp(p, frames);
            if let Some(piece) = on_final(&codes, final_frames) {
                progress(piece);
            }
            progress(Progress::Step {
                step: step + 1,
                total: steps,
            });
        }
        decoder.release();
        Ok(codes)
    }

    /// The whole decoder side of a take: `new_frames` after `prompt`, in windows
    /// of [`MusicGen::window_frames`] that start `stride` frames apart (see
    /// [`plan_windows`]); one window, exactly [`MusicGen::continue_codes`], when
    /// the take fits. `text` is [`MusicGen::encode_text`]'s; a melody's chroma
    /// is made for each window ([`MusicGen::melody_chroma`]). Memory is one
    /// window's caches plus the codes.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_windows(
        &mut self,
        text: Option<&Tensor>,
        melody: Option<&Melody>,
        prompt: &[Vec<u32>],
        new_frames: usize,
        stride: usize,
        guidance_scale: f64,
        sampler: &mut LogitsProcessor,
        progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
        timings: &mut Timings,
        mut stream: Option<&mut AudioStream>,
    ) -> Result<Vec<Vec<u32>>> {
        if melody.is_some() && !self.has_melody() {
            return Err(self.no_melody());
        }
        let window = self.window_frames();
        let p = prompt.first().map(|r| r.len()).unwrap_or(0);
        let total = p + new_frames;
        if total > window && !(1..window).contains(&stride) {
            return Err(Error::InvalidRequest(format!(
                "a stride of {stride} frames does not fit windows of {window} frames"
            )));
        }
        if total > window && p > window - stride {
            return Err(Error::InvalidRequest(format!(
                "a prompt of {p} frames is longer than a window minus the stride ({} frames)",
                window - stride
            )));
        }
        let plan = plan_windows(total, p, window, stride);
        let mut out: Vec<Vec<u32>> = prompt.to_vec();
        let mut window_prompt: Vec<Vec<u32>> = prompt.to_vec();
        for (i, &(start, len)) in plan.iter().enumerate() {
            check_cancel(cancel)?;
            progress(Progress::Window {
                index: i + 1,
                count: plan.len(),
            });
            let have = window_prompt.first().map(|r| r.len()).unwrap_or(0);
            debug_assert_eq!(start + have, out[0].len());
            let chroma = match melody {
                Some(m) => {
                    progress(Progress::EncodingMelody);
                    let t0 = Instant::now();
                    let c = self.melody_chroma(m, start as f64 / self.frame_rate())?;
                    timings.melody += t0.elapsed();
                    check_cancel(cancel)?;
                    Some(c)
                }
                None => None,
            };
            let conditioning = self.conditioning(text, chroma.as_ref())?;
            let pool = self.pool.clone();
            let channels = self.channels;
            let mut failed = None;
            let mut decode_time = Duration::ZERO;
            let mut stream = stream.as_deref_mut();
            let mut on_final = |codes: &[Vec<u32>], n: usize| -> Option<Progress> {
                let stream = stream.as_deref_mut()?;
                let fed = stream.frames().checked_sub(start)?;
                if n <= fed || failed.is_some() {
                    return None;
                }
                let t0 = Instant::now();
                let new: Vec<Vec<u32>> = codes.iter().map(|r| r[fed..n].to_vec()).collect();
                let pcm = pool.install(|| stream.push(&new).and_then(|_| stream.ready()));
                decode_time += t0.elapsed();
                match pcm {
                    Ok(pcm) if !pcm.is_empty() => Some(Progress::Audio {
                        start: stream.samples() - pcm.len() / channels,
                        pcm,
                    }),
                    Ok(_) => None,
                    Err(e) => {
                        failed = Some(e);
                        None
                    }
                }
            };
            let codes = self.continue_codes_with(
                conditioning.as_ref(),
                &window_prompt,
                len - have,
                guidance_scale,
                CodeSource::Sample(sampler),
                None,
                progress,
                cancel,
                &mut timings.steps,
                &mut on_final,
            )?;
            timings.audio += decode_time;
            if let Some(e) = failed {
                return Err(e);
            }
            for (o, row) in out.iter_mut().zip(&codes) {
                o.extend_from_slice(&row[have..]);
            }
            window_prompt = codes
                .into_iter()
                .map(|row| row[stride.min(row.len())..].to_vec())
                .collect();
            release_freed_memory();
        }
        Ok(out)
    }

    /// An audio prompt's codes `(codebooks, frames)`: mapped to the model's
    /// channels (averaged for mono, copied for stereo), resampled to its rate,
    /// trimmed to its last `max_frames` frames, and encoded by EnCodec, each
    /// channel on its own, stereo codebooks interleaved left, right.
    pub fn encode_prompt_audio(&self, pcm: &Pcm, max_frames: usize) -> Result<Vec<Vec<u32>>> {
        pcm.check("audio prompt")?;
        let rate = self.sample_rate();
        let hop = self.hop_length();
        let min_in = (hop as u64 * pcm.sample_rate as u64).div_ceil(rate as u64) as usize;
        if pcm.len() < min_in {
            return Err(Error::AudioTooShort {
                samples: pcm.len(),
                sample_rate: pcm.sample_rate,
                min: min_in,
            });
        }
        let mapped = crate::wav::to_channels(pcm, self.channels);
        // Trim before resampling (with a little context for the filter), then exactly.
        let keep_in = ((max_frames * hop) as u64 * pcm.sample_rate as u64).div_ceil(rate as u64)
            as usize
            + 4096;
        let mapped = if mapped.len() > keep_in {
            Pcm {
                channels: mapped
                    .channels
                    .iter()
                    .map(|c| c[c.len() - keep_in..].to_vec())
                    .collect(),
                sample_rate: mapped.sample_rate,
            }
        } else {
            mapped
        };
        let mut at_rate = crate::wav::resample_pcm(&mapped, rate)?;
        let keep = max_frames * hop;
        if at_rate.len() < hop {
            return Err(Error::AudioTooShort {
                samples: pcm.len(),
                sample_rate: pcm.sample_rate,
                min: min_in,
            });
        }
        if at_rate.len() > keep {
            for c in at_rate.channels.iter_mut() {
                c.drain(..c.len() - keep);
            }
        }
        self.encode_audio(&at_rate.channels)
    }

    /// The SEANet encoder's output `(1, hidden, frames)` for mono PCM at the
    /// model's rate, before quantization.
    pub fn audio_embeddings(&self, samples: &[f32]) -> Result<Tensor> {
        let t = Tensor::from_slice(samples, samples.len(), &self.device)?;
        Ok(self.pool.install(|| self.audio_in.embeddings(&t))?)
    }

    /// EnCodec encode of PCM at the model's rate, one slice per model channel:
    /// codes `(codebooks, ceil(samples / hop))`, stereo interleaved left, right.
    pub fn encode_audio(&self, channels: &[Vec<f32>]) -> Result<Vec<Vec<u32>>> {
        if channels.len() != self.channels {
            return Err(Error::InvalidRequest(format!(
                "{} channels given to a {}-channel model",
                channels.len(),
                self.channels
            )));
        }
        let per_channel = channels
            .iter()
            .map(|c| {
                let t = Tensor::from_slice(c, c.len(), &self.device)?;
                let codes = self.pool.install(|| self.audio_in.encode(&t))?;
                Ok(codes.to_vec2::<u32>()?)
            })
            .collect::<Result<Vec<_>>>()?;
        let q = per_channel[0].len();
        let mut out = Vec::with_capacity(q * self.channels);
        for i in 0..q {
            for ch in &per_channel {
                out.push(ch[i].clone());
            }
        }
        Ok(out)
    }

    /// EnCodec: codes `(codebooks, frames)` to PCM at the model's rate; a stereo
    /// model decodes its even and odd codebooks as left and right, interleaved.
    pub fn decode_audio(&self, codes: &[Vec<u32>]) -> Result<Vec<f32>> {
        let k = codes.len();
        let frames = codes.first().map(|r| r.len()).unwrap_or(0);
        if k != self.num_codebooks() || codes.iter().any(|r| r.len() != frames) || frames == 0 {
            return Err(Error::InvalidRequest(format!(
                "codes must be {} rows of one equal, non-zero length",
                self.num_codebooks()
            )));
        }
        let vocab = self.config.decoder.vocab_size as u32;
        if let Some(bad) = codes.iter().flatten().find(|&&c| c >= vocab) {
            return Err(Error::InvalidRequest(format!(
                "code {bad} is outside the codebook (0..{vocab})"
            )));
        }
        let ch = self.channels;
        let mut sides = Vec::with_capacity(ch);
        for side in 0..ch {
            let flat: Vec<u32> = codes
                .iter()
                .skip(side)
                .step_by(ch)
                .flatten()
                .copied()
                .collect();
            let t = Tensor::from_vec(flat, (k / ch, frames), &self.device)?;
            sides.push(
                self.pool
                    .install(|| self.audio.decode(&t))?
                    .to_vec1::<f32>()?,
            );
        }
        if ch == 1 {
            return Ok(sides.pop().unwrap_or_default());
        }
        Ok(crate::wav::interleave(&Pcm {
            channels: sides,
            sample_rate: self.sample_rate(),
        }))
    }

    /// A stream that decodes this model's codes as they come.
    pub fn audio_stream(&self) -> AudioStream {
        AudioStream {
            streams: (0..self.channels).map(|_| self.audio.stream()).collect(),
        }
    }

    /// The whole request: text, decoder loop, audio.
    pub fn generate(
        &mut self,
        request: &GenerationRequest,
        progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
    ) -> Result<Generation> {
        request.validate()?;
        if request.melody.is_some() && !self.has_melody() {
            return Err(self.no_melody());
        }
        check_cancel(cancel)?;
        let mut timings = Timings::default();
        let t0 = Instant::now();
        progress(Progress::EncodingText);
        let text = self.encode_text(&request.prompt)?;
        timings.text = t0.elapsed();
        let window = self.window_frames();
        let stride = self.stride_frames(request.extend_stride_s());
        let prompt = match &request.audio_prompt {
            Some(pcm) => {
                check_cancel(cancel)?;
                progress(Progress::EncodingAudio);
                let t0 = Instant::now();
                let codes = self.encode_prompt_audio(pcm, window.saturating_sub(stride).max(1))?;
                timings.prompt_audio = t0.elapsed();
                codes
            }
            None => vec![Vec::new(); self.num_codebooks()],
        };
        let prompt_frames = prompt[0].len();
        let mut processor = LogitsProcessor::new(request.sampling, request.seed);
        // The audio is decoded as its frames become final, and handed out as it
        // comes (`Progress::Audio`); what is left is decoded at the end.
        let mut stream = self.audio_stream();
        let mut audio = Vec::new();
        let mut report = |p: Progress| {
            if let Progress::Audio { pcm, .. } = &p {
                audio.extend_from_slice(pcm);
            }
            progress(p);
        };
        let codes = self.generate_windows(
            text.as_ref(),
            request.melody.as_ref(),
            &prompt,
            request.frames,
            stride,
            request.guidance_scale,
            &mut processor,
            &mut report,
            cancel,
            &mut timings,
            Some(&mut stream),
        )?;
        check_cancel(cancel)?;
        report(Progress::DecodingAudio);
        let t0 = Instant::now();
        let start = stream.samples();
        let rest = self.pool.install(|| stream.finish())?;
        timings.audio += t0.elapsed();
        report(Progress::Audio { start, pcm: rest });
        Ok(Generation {
            codes,
            audio,
            sample_rate: self.sample_rate(),
            channels: self.channels,
            prompt_frames,
            timings,
        })
    }

    /// Runs the decoder on a prompt and returns the codes with every step's guided
    /// logits, flattened `(steps, codebooks, vocab)`: with `CodeSource::Forced`,
    /// teacher forcing for comparing two precisions on the same inputs.
    pub fn codes_and_logits(
        &mut self,
        prompt: &str,
        frames: usize,
        guidance_scale: f64,
        codes_from: CodeSource<'_>,
        cancel: &AtomicBool,
    ) -> Result<(Vec<Vec<u32>>, Vec<f32>)> {
        let conditioning = self.encode_prompt(prompt)?;
        let mut logits = Vec::new();
        let mut failed = None;
        let mut collect =
            |_: usize, t: &Tensor| match t.flatten_all().and_then(|t| t.to_vec1::<f32>()) {
                Ok(v) => logits.extend(v),
                Err(e) => failed = Some(e),
            };
        let codes = self.generate_codes(
            conditioning.as_ref(),
            frames,
            guidance_scale,
            codes_from,
            Some(&mut collect),
            &mut |_| {},
            cancel,
            &mut Vec::new(),
        )?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        Ok((codes, logits))
    }

    /// Bytes of decoder weights one step reads, in their precision.
    pub fn step_weight_bytes(&self) -> usize {
        self.decoder.step_weight_bytes()
    }

    /// Bytes one decoder step reads on average over a generation of `frames`: the
    /// decoder's weights (in their precision) plus the self-attention KV cache at
    /// its mean length and the prompt's cross-attention keys and values.
    pub fn step_bytes(&self, frames: usize, guided: bool, text_tokens: usize) -> usize {
        let d = self.config.decoder.hidden_size;
        let layers = self.decoder.num_layers();
        // The quantized precisions keep the self-attention cache in f16.
        let float = self.precision.float_dtype().size_in_bytes();
        let kv_size = match self.precision.quantization() {
            Some(_) => 2,
            None => float,
        };
        let batch = if guided { 2 } else { 1 };
        let steps = frames + self.num_codebooks() - 1;
        // A melody decoder's cache also holds its prefix: chroma and text.
        let (prefix, cross_tokens) = match self.chroma {
            Some(_) => (self.config.chroma_length + text_tokens, 0),
            None => (0, text_tokens),
        };
        let mean_len = prefix + steps.div_ceil(2);
        let self_kv = layers * 2 * batch * d * mean_len * kv_size;
        let cross_kv = layers * 2 * d * cross_tokens * float;
        self.decoder.step_weight_bytes() + self_kv + cross_kv
    }

    /// A request for this model with its checkpoint's defaults.
    pub fn default_request(&self, source: ModelSource) -> GenerationRequest {
        GenerationRequest {
            model: source,
            precision: self.precision,
            guidance_scale: self.defaults.guidance_scale,
            sampling: self.defaults.sampling,
            ..Default::default()
        }
    }
}

impl std::fmt::Debug for MusicGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MusicGen")
            .field("decoder", &self.config.decoder)
            .field("device", &self.device)
            .field("precision", &self.precision)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::plan_windows;

    #[test]
    fn one_window_when_the_take_fits() {
        assert_eq!(plan_windows(1500, 0, 1500, 900), vec![(0, 1500)]);
        assert_eq!(plan_windows(700, 200, 1500, 900), vec![(0, 700)]);
    }

    #[test]
    fn windows_start_a_stride_apart_and_end_at_the_take() {
        // 40 s at 50 Hz, audiocraft's 30 s windows and 18 s stride.
        assert_eq!(
            plan_windows(2000, 0, 1500, 900),
            vec![(0, 1500), (900, 1100)]
        );
        // 120 s: each window's prompt is the previous one's last 12 s.
        let plan = plan_windows(6000, 0, 1500, 900);
        assert_eq!(plan.first(), Some(&(0, 1500)));
        assert_eq!(plan.last().map(|(s, l)| s + l), Some(6000));
        for w in plan.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 900);
            assert!(w[1].1 > 600, "every window adds frames: {plan:?}");
        }
        // A take that ends exactly where a window's prompt does needs no more window.
        assert_eq!(
            plan_windows(2400, 0, 1500, 900),
            vec![(0, 1500), (900, 1500)]
        );
        // An audio prompt of 600 frames leads the first window.
        assert_eq!(
            plan_windows(2000, 600, 1500, 900),
            vec![(0, 1500), (900, 1100)]
        );
    }
}

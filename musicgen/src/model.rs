//! The whole pipeline, after transformers' `MusicgenForConditionalGeneration`:
//! prompt -> tokenizer -> T5 -> (projection) -> decoder loop with the codebook
//! delay pattern and classifier-free guidance -> EnCodec -> 32 kHz PCM.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::models::t5;

use crate::config::{Config, GenerationConfig};
use crate::decoder::Decoder;
use crate::encodec::EncodecDecoder;
use crate::error::{Error, Result};
use crate::hub::{self, DownloadProgress, HubOptions, ModelFiles};
use crate::request::{
    DeviceChoice, GenerationDefaults, GenerationRequest, ModelSource, Precision, MAX_PROMPT_TOKENS,
};
use crate::sampling::LogitsProcessor;

/// What the engine is doing, reported as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Download(DownloadProgress),
    Loading,
    EncodingText,
    /// Decoder step `step` of `total` is done.
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

/// Sees each decoder step's guided logits `(codebooks, vocab)`.
pub type LogitsObserver<'a> = &'a mut dyn FnMut(usize, &Tensor);

/// Time spent in each stage of one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub text: Duration,
    /// One entry per decoder step.
    pub steps: Vec<Duration>,
    pub audio: Duration,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// `(codebooks, frames)`, the delay pattern undone.
    pub codes: Vec<Vec<u32>>,
    /// Mono PCM at `sample_rate`, `frames * hop_length` samples.
    pub audio: Vec<f32>,
    pub sample_rate: u32,
    pub timings: Timings,
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
        Device::new_cuda(0).map_err(|e| {
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
    decoder: Decoder,
    audio: EncodecDecoder,
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
        let (text_encoder, enc_to_dec_proj, decoder, audio) = pool
            .install(|| -> candle_core::Result<_> {
                let text_encoder =
                    t5::T5EncoderModel::load(vb.pp("text_encoder"), &config.text_encoder)?;
                let (dt, dd) = (config.text_encoder.d_model, config.decoder.hidden_size);
                let enc_to_dec_proj = if dt != dd {
                    Some(candle_nn::linear(dt, dd, vb.pp("enc_to_dec_proj"))?)
                } else {
                    None
                };
                let decoder = Decoder::new(
                    &config.decoder,
                    quantizer.as_ref(),
                    vb.pp("decoder").set_dtype(precision.float_dtype()),
                )?;
                let audio = EncodecDecoder::new(
                    &config.audio_encoder,
                    config.decoder.num_codebooks,
                    vb.pp("audio_encoder"),
                )?;
                Ok((text_encoder, enc_to_dec_proj, decoder, audio))
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
            decoder,
            audio,
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

    /// The decoder's conditioning for a prompt: T5 states, projected to the
    /// decoder's width when they differ (times the all-ones attention mask), or
    /// `None` for an empty prompt, which is MusicGen's unconditional generation.
    pub fn encode_prompt(&mut self, prompt: &str) -> Result<Option<Tensor>> {
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

    /// Runs the decoder loop and returns codes `(codebooks, frames)`. `on_logits`
    /// sees each step's guided logits `(codebooks, vocab)`.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_codes(
        &mut self,
        conditioning: Option<&Tensor>,
        frames: usize,
        guidance_scale: f64,
        mut codes_from: CodeSource<'_>,
        mut on_logits: Option<LogitsObserver<'_>>,
        progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
        step_times: &mut Vec<Duration>,
    ) -> Result<Vec<Vec<u32>>> {
        let k = self.num_codebooks();
        let steps = frames + k - 1;
        if frames == 0 {
            return Err(Error::InvalidRequest("zero frames asked".into()));
        }
        // The delay pattern's start column plus one column per step.
        if steps + 1 > self.decoder.max_positions() {
            return Err(Error::InvalidRequest(format!(
                "{frames} frames need {} decoder positions; this checkpoint has {}",
                steps + 1,
                self.decoder.max_positions()
            )));
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

        pool.install(|| decoder.reset(conditioning, steps + 1))?;
        let mut column = vec![pad; k];
        let mut codes = vec![vec![pad; frames]; k];
        let mut input = Vec::with_capacity(batch * k);
        for step in 0..steps {
            check_cancel(cancel)?;
            let t0 = Instant::now();
            input.clear();
            for _ in 0..batch {
                input.extend_from_slice(&column);
            }
            // Only the tensor work runs in the compute pool; callbacks stay on the caller's thread.
            let logits = pool.install(|| -> candle_core::Result<Tensor> {
                let ids = Tensor::from_slice(&input, (batch, k, 1), &device)?;
                let logits = decoder.forward(&ids)?.squeeze(2)?; // (batch, k, vocab)
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
            // Column `step + 1`: codebook c holds frame `step - c` when in range,
            // else the delay pattern's padding.
            let j = step + 1;
            // Only the sampler needs the logits on the host.
            let rows: Vec<Vec<f32>> = match codes_from {
                CodeSource::Sample(_) => logits.to_vec2()?,
                CodeSource::Forced(_) => Vec::new(),
            };
            for c in 0..k {
                if j > c && j <= c + frames {
                    let f = j - c - 1;
                    let code = match &mut codes_from {
                        CodeSource::Forced(forced) => forced[c][f],
                        CodeSource::Sample(p) => p.sample(&rows[c]),
                    };
                    codes[c][f] = code;
                    column[c] = code;
                } else {
                    column[c] = pad;
                }
            }
            step_times.push(t0.elapsed());
            progress(Progress::Step {
                step: step + 1,
                total: steps,
            });
        }
        decoder.release();
        Ok(codes)
    }

    /// EnCodec: codes `(codebooks, frames)` to mono PCM at the model's rate.
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
        let flat: Vec<u32> = codes.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (k, frames), &self.device)?;
        Ok(self
            .pool
            .install(|| self.audio.decode(&t))?
            .to_vec1::<f32>()?)
    }

    /// The whole request: text, decoder loop, audio.
    pub fn generate(
        &mut self,
        request: &GenerationRequest,
        progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
    ) -> Result<Generation> {
        request.validate()?;
        check_cancel(cancel)?;
        let mut timings = Timings::default();
        let t0 = Instant::now();
        progress(Progress::EncodingText);
        let conditioning = self.encode_prompt(&request.prompt)?;
        timings.text = t0.elapsed();
        let mut processor = LogitsProcessor::new(request.sampling, request.seed);
        let codes = self.generate_codes(
            conditioning.as_ref(),
            request.frames,
            request.guidance_scale,
            CodeSource::Sample(&mut processor),
            None,
            progress,
            cancel,
            &mut timings.steps,
        )?;
        check_cancel(cancel)?;
        progress(Progress::DecodingAudio);
        let t0 = Instant::now();
        let audio = self.decode_audio(&codes)?;
        timings.audio = t0.elapsed();
        Ok(Generation {
            codes,
            audio,
            sample_rate: self.sample_rate(),
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
        let mean_len = steps.div_ceil(2);
        let self_kv = layers * 2 * batch * d * mean_len * kv_size;
        let cross_kv = layers * 2 * d * text_tokens * float;
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

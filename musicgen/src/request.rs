//! `GenerationRequest`: everything that decides a take, so a take can be made again.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::GenerationConfig;
use crate::error::{Error, Result};
use crate::sampling::Sampling;

/// The hub model used when none is named.
pub const DEFAULT_MODEL: &str = "facebook/musicgen-small";
/// One window of the decoder: the reference's limit, 30 s of audio (1500 frames at
/// 50 Hz). Longer takes are generated window by window (see `extend_stride`).
pub const MAX_FRAMES: usize = 1500;
/// The longest take: 300 s (15000 frames at 50 Hz), by windows.
pub const MAX_TOTAL_FRAMES: usize = 15_000;
/// audiocraft's default `extend_stride`: each window after the first adds 18 s.
pub const DEFAULT_EXTEND_STRIDE_S: f64 = 18.0;
/// Longest prompt, in tokens (including the end-of-sequence token).
pub const MAX_PROMPT_TOKENS: usize = 256;
/// MusicGen's published defaults (`generation_config.json` of facebook/musicgen-*).
pub const DEFAULT_GUIDANCE: f64 = 3.0;
pub const DEFAULT_TOP_K: usize = 250;

/// Where the checkpoint comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ModelSource {
    /// A Hugging Face hub repository, downloaded into the standard cache.
    Hub { id: String, revision: String },
    /// A folder holding config.json, the weights and tokenizer.json.
    Local { path: PathBuf },
}

impl ModelSource {
    /// A hub id (`owner/name`) or, when it names an existing folder or looks like a
    /// path, a local folder.
    pub fn parse(s: &str) -> Self {
        let path = PathBuf::from(s);
        let looks_like_path = s.starts_with('.')
            || s.starts_with('/')
            || s.starts_with('~')
            || s.contains('\\')
            || s.matches('/').count() != 1;
        if path.is_dir() || looks_like_path {
            ModelSource::Local { path }
        } else {
            ModelSource::Hub {
                id: s.to_string(),
                revision: "main".to_string(),
            }
        }
    }
}

impl Default for ModelSource {
    fn default() -> Self {
        ModelSource::Hub {
            id: DEFAULT_MODEL.to_string(),
            revision: "main".to_string(),
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Hub { id, revision } if revision == "main" => write!(f, "{id}"),
            ModelSource::Hub { id, revision } => write!(f, "{id}@{revision}"),
            ModelSource::Local { path } => write!(f, "{}", path.display()),
        }
    }
}

/// Numeric format of the decoder's weights during generation. The text encoder
/// and EnCodec run once per take and stay in f32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Full precision: the reference for parity.
    #[default]
    F32,
    /// Half precision floats: for GPUs (CPUs have no fast path for them).
    F16,
    /// bfloat16: for GPUs.
    Bf16,
    /// 8-bit blocks of 32 (candle's q8_0 quantized matmul), f32 activations.
    Q8_0,
    /// 4-bit blocks of 32 (q4_0).
    Q4_0,
    /// 4-bit k-quant super-blocks of 256 (q4k).
    Q4K,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Q8_0 => "q8_0",
            Precision::Q4_0 => "q4_0",
            Precision::Q4K => "q4k",
        }
    }

    /// The float type of the decoder's activations and unquantized weights.
    pub fn float_dtype(self) -> candle_core::DType {
        match self {
            Precision::F16 => candle_core::DType::F16,
            Precision::Bf16 => candle_core::DType::BF16,
            _ => candle_core::DType::F32,
        }
    }

    /// The quantized format of the decoder's matrices, if any.
    pub fn quantization(self) -> Option<candle_core::quantized::GgmlDType> {
        use candle_core::quantized::GgmlDType;
        match self {
            Precision::Q8_0 => Some(GgmlDType::Q8_0),
            Precision::Q4_0 => Some(GgmlDType::Q4_0),
            Precision::Q4K => Some(GgmlDType::Q4K),
            _ => None,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.to_ascii_lowercase().replace('-', "_");
        match s.as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "q8" | "q8_0" => Ok(Precision::Q8_0),
            "q4_0" => Ok(Precision::Q4_0),
            "q4" | "q4k" | "q4_k" => Ok(Precision::Q4K),
            other => Err(format!(
                "unknown precision \"{other}\" (f32, f16, bf16, q8_0, q4_0, q4k)"
            )),
        }
    }
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// A GPU when the build has one compiled in and one is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The first CUDA GPU (needs the `cuda` feature).
    Cuda,
    /// The Metal GPU (needs the `metal` feature).
    Metal,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            "metal" => Ok(DeviceChoice::Metal),
            other => Err(format!(
                "unknown device \"{other}\" (auto, cpu, cuda, metal)"
            )),
        }
    }
}

/// PCM audio, one vector per channel (planar), at `sample_rate`: an audio prompt
/// or a melody. Channels must have equal lengths.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pcm {
    pub channels: Vec<Vec<f32>>,
    pub sample_rate: u32,
}

impl Pcm {
    pub fn mono(samples: Vec<f32>, sample_rate: u32) -> Self {
        Self {
            channels: vec![samples],
            sample_rate,
        }
    }

    /// Samples per channel (0 when there is no channel).
    pub fn len(&self) -> usize {
        self.channels.first().map(|c| c.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn duration_s(&self) -> f64 {
        self.len() as f64 / self.sample_rate.max(1) as f64
    }

    /// Refuses PCM with no channel, no sample, no rate, unequal channel lengths or
    /// non-finite samples. `what` names it in the error ("audio prompt", "melody").
    pub fn check(&self, what: &'static str) -> Result<()> {
        if self.channels.is_empty() || self.is_empty() {
            return Err(Error::EmptyAudio { what });
        }
        if self.sample_rate == 0 {
            return Err(Error::InvalidRequest(format!(
                "the {what} has a sample rate of 0 Hz"
            )));
        }
        let lengths: Vec<usize> = self.channels.iter().map(|c| c.len()).collect();
        if lengths.iter().any(|&l| l != lengths[0]) {
            return Err(Error::ChannelLengths { what, lengths });
        }
        if self.channels.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::InvalidRequest(format!(
                "the {what} holds samples that are not finite numbers"
            )));
        }
        Ok(())
    }
}

/// A melody to condition a MusicGen-melody checkpoint on.
#[derive(Debug, Clone, PartialEq)]
pub enum Melody {
    /// Audio, whose chroma the feature extractor's way is computed.
    Audio(Pcm),
    /// Notes (a MIDI melody) over `duration_s` seconds: the same one-hot chroma
    /// without rendering audio. A take longer than the melody loops it.
    Notes {
        notes: Vec<crate::chroma::Note>,
        duration_s: f64,
    },
}

impl Melody {
    /// Refuses an empty or unreadable melody before any work is done.
    pub fn check(&self) -> Result<()> {
        match self {
            Melody::Audio(pcm) => pcm.check("melody"),
            Melody::Notes { notes, duration_s } => {
                if !duration_s.is_finite() || *duration_s <= 0.0 {
                    return Err(Error::InvalidRequest(format!(
                        "a melody of notes must last more than 0 s (got {duration_s} s)"
                    )));
                }
                if notes.is_empty() {
                    return Err(Error::InvalidRequest("the melody has no notes".into()));
                }
                crate::chroma::check_notes(notes)
            }
        }
    }
}

/// Everything that decides a take. Stored with every take so it can be regenerated
/// (apart from the audio prompt's PCM, which is never serialized).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRequest {
    /// The text prompt. Empty (or only white space) means MusicGen's unconditional
    /// generation: no text conditioning at all.
    pub prompt: String,
    pub model: ModelSource,
    pub precision: Precision,
    pub device: DeviceChoice,
    /// Audio frames to generate (50 per second for MusicGen), 1 to 15000; past
    /// 1500 (30 s) by windows. With an audio prompt, the frames after it.
    pub frames: usize,
    /// Classifier-free guidance scale, >= 1; 1 turns guidance off.
    pub guidance_scale: f64,
    pub sampling: Sampling,
    /// Seed of the sampler: the same request and seed give the same codes.
    pub seed: u64,
    /// Seconds each window after the first adds, 1 to 29, for takes over 30 s
    /// (audiocraft's `extend_stride`); `None` means 18 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extend_stride: Option<f64>,
    /// Audio to continue (transformers' `generate(input_values=...)`): the take holds
    /// it, re-encoded, followed by `frames` new frames. Not serialized: a take
    /// stores where its prompt came from, not the samples.
    #[serde(skip)]
    pub audio_prompt: Option<Pcm>,
    /// A melody (MusicGen-melody checkpoints only). Not serialized, like the
    /// audio prompt: a take stores where its melody came from.
    #[serde(skip)]
    pub melody: Option<Melody>,
}

impl Default for GenerationRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            model: ModelSource::default(),
            precision: Precision::F32,
            device: DeviceChoice::Auto,
            frames: 500,
            guidance_scale: DEFAULT_GUIDANCE,
            sampling: Sampling::Sample {
                temperature: 1.0,
                top_k: Some(DEFAULT_TOP_K),
                top_p: None,
            },
            seed: 0,
            extend_stride: None,
            audio_prompt: None,
            melody: None,
        }
    }
}

/// The sampling defaults a checkpoint ships in `generation_config.json`, with
/// MusicGen's published values where a field is absent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationDefaults {
    pub guidance_scale: f64,
    pub sampling: Sampling,
    pub max_frames: usize,
}

impl GenerationDefaults {
    pub fn from_config(gen: &GenerationConfig, num_codebooks: usize) -> Self {
        let sampling = if gen.do_sample == Some(false) {
            Sampling::Greedy
        } else {
            Sampling::Sample {
                temperature: gen.temperature.unwrap_or(1.0),
                top_k: match gen.top_k {
                    Some(0) => None,
                    Some(k) => Some(k),
                    None => Some(DEFAULT_TOP_K),
                },
                top_p: gen.top_p.filter(|p| *p < 1.0),
            }
        };
        // max_length counts the start column and the delay pattern's tail.
        let max_frames = gen
            .max_length
            .map(|l| l.saturating_sub(num_codebooks))
            .unwrap_or(MAX_FRAMES)
            .clamp(1, MAX_FRAMES);
        Self {
            guidance_scale: gen.guidance_scale.unwrap_or(DEFAULT_GUIDANCE).max(1.0),
            sampling,
            max_frames,
        }
    }
}

/// Frames for a duration at a frame rate, rounded to the nearest frame; at most
/// 300 s.
pub fn frames_for_duration(seconds: f64, frame_rate: f64) -> Result<usize> {
    let max_s = MAX_TOTAL_FRAMES as f64 / frame_rate;
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(Error::InvalidRequest(format!(
            "duration must be more than 0 s (got {seconds} s)"
        )));
    }
    if seconds > max_s + 1e-9 {
        return Err(Error::InvalidRequest(format!(
            "duration {seconds} s is over the limit of {max_s} s"
        )));
    }
    Ok(((seconds * frame_rate).round() as usize).max(1))
}

impl GenerationRequest {
    /// Seconds each window after the first adds.
    pub fn extend_stride_s(&self) -> f64 {
        self.extend_stride.unwrap_or(DEFAULT_EXTEND_STRIDE_S)
    }

    /// Checks every field, so a bad request fails before any work is done.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if self.frames == 0 {
            return bad("the length must be at least one frame (1/50 s)".into());
        }
        if self.frames > MAX_TOTAL_FRAMES {
            return bad(format!(
                "{} frames asked; at most {MAX_TOTAL_FRAMES} frames (300 s) are generated",
                self.frames
            ));
        }
        if let Some(stride) = self.extend_stride {
            if !(1.0..=29.0).contains(&stride) {
                return bad(format!(
                    "extend stride must be between 1 and 29 s (got {stride} s)"
                ));
            }
        }
        if let Some(pcm) = &self.audio_prompt {
            pcm.check("audio prompt")?;
        }
        if let Some(melody) = &self.melody {
            melody.check()?;
        }
        if !self.guidance_scale.is_finite() || self.guidance_scale < 1.0 {
            return bad(format!(
                "guidance scale must be at least 1 (1 turns guidance off), got {}",
                self.guidance_scale
            ));
        }
        if let Sampling::Sample {
            temperature,
            top_k,
            top_p,
        } = self.sampling
        {
            if !temperature.is_finite() || temperature <= 0.0 {
                return bad(format!(
                    "temperature must be more than 0 (got {temperature}); use greedy decoding for the most likely codes"
                ));
            }
            if top_k == Some(0) {
                return bad("top-k must be at least 1".into());
            }
            if let Some(p) = top_p {
                if !(0.0..=1.0).contains(&p) {
                    return bad(format!("top-p must be between 0 and 1, got {p}"));
                }
            }
        }
        if let ModelSource::Hub { id, revision } = &self.model {
            if id.trim().is_empty() || revision.trim().is_empty() {
                return bad("the hub model id and revision must not be empty".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect_invalid(r: GenerationRequest, needle: &str) {
        match r.validate() {
            Err(Error::InvalidRequest(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("expected an invalid request about {needle}, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        GenerationRequest::default().validate().unwrap();
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let base = GenerationRequest::default;
        expect_invalid(
            GenerationRequest {
                frames: 0,
                ..base()
            },
            "at least one frame",
        );
        expect_invalid(
            GenerationRequest {
                frames: 15_001,
                ..base()
            },
            "at most 15000",
        );
        expect_invalid(
            GenerationRequest {
                guidance_scale: 0.5,
                ..base()
            },
            "at least 1",
        );
        expect_invalid(
            GenerationRequest {
                guidance_scale: f64::NAN,
                ..base()
            },
            "at least 1",
        );
        let s = |temperature, top_k, top_p| Sampling::Sample {
            temperature,
            top_k,
            top_p,
        };
        expect_invalid(
            GenerationRequest {
                sampling: s(0.0, None, None),
                ..base()
            },
            "temperature",
        );
        expect_invalid(
            GenerationRequest {
                sampling: s(-1.0, None, None),
                ..base()
            },
            "greedy",
        );
        expect_invalid(
            GenerationRequest {
                sampling: s(1.0, Some(0), None),
                ..base()
            },
            "top-k",
        );
        expect_invalid(
            GenerationRequest {
                sampling: s(1.0, None, Some(1.5)),
                ..base()
            },
            "top-p",
        );
        expect_invalid(
            GenerationRequest {
                sampling: s(1.0, None, Some(-0.1)),
                ..base()
            },
            "top-p",
        );
        GenerationRequest {
            sampling: s(1.0, None, Some(0.0)),
            ..base()
        }
        .validate()
        .unwrap();
        GenerationRequest {
            sampling: s(1.0, None, Some(1.0)),
            ..base()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn durations_map_to_frames() {
        assert_eq!(frames_for_duration(1.0, 50.0).unwrap(), 50);
        assert_eq!(frames_for_duration(10.667, 50.0).unwrap(), 533);
        assert_eq!(frames_for_duration(30.0, 50.0).unwrap(), 1500);
        assert!(frames_for_duration(0.0, 50.0).is_err());
        assert!(frames_for_duration(-2.0, 50.0).is_err());
        assert_eq!(frames_for_duration(300.0, 50.0).unwrap(), 15_000);
        assert!(frames_for_duration(300.1, 50.0).is_err());
        assert!(frames_for_duration(f64::NAN, 50.0).is_err());
    }

    #[test]
    fn strides_and_prompts_are_checked() {
        let base = GenerationRequest::default;
        for stride in [0.5, 29.5, f64::NAN] {
            expect_invalid(
                GenerationRequest {
                    extend_stride: Some(stride),
                    ..base()
                },
                "between 1 and 29",
            );
        }
        for stride in [1.0, 29.0] {
            GenerationRequest {
                extend_stride: Some(stride),
                ..base()
            }
            .validate()
            .unwrap();
        }
        let uneven = Pcm {
            channels: vec![vec![0.0; 10], vec![0.0; 9]],
            sample_rate: 32_000,
        };
        let r = GenerationRequest {
            audio_prompt: Some(uneven),
            ..base()
        };
        assert!(matches!(
            r.validate(),
            Err(Error::ChannelLengths { ref lengths, .. }) if lengths == &[10, 9]
        ));
        let r = GenerationRequest {
            audio_prompt: Some(Pcm::mono(Vec::new(), 32_000)),
            ..base()
        };
        assert!(matches!(r.validate(), Err(Error::EmptyAudio { .. })));
    }

    #[test]
    fn old_requests_deserialize_and_prompts_are_not_serialized() {
        // A take saved before issue 10: no stride, no prompt.
        let old = r#"{"prompt":"p","model":{"kind":"hub","id":"facebook/musicgen-small","revision":"main"},
            "precision":"f32","device":"auto","frames":500,"guidance_scale":3.0,
            "sampling":{"mode":"greedy"},"seed":7}"#;
        let r: GenerationRequest = serde_json::from_str(old).unwrap();
        assert_eq!(r.frames, 500);
        assert_eq!(r.extend_stride, None);
        assert_eq!(r.audio_prompt, None);
        let with_prompt = GenerationRequest {
            audio_prompt: Some(Pcm::mono(vec![0.5; 1000], 32_000)),
            ..Default::default()
        };
        let json = serde_json::to_string(&with_prompt).unwrap();
        assert!(
            !json.contains("audio_prompt") && !json.contains("0.5"),
            "{json}"
        );
        assert!(!json.contains("extend_stride"), "{json}");
    }

    #[test]
    fn model_source_parses_hub_ids_and_paths() {
        assert_eq!(
            ModelSource::parse("facebook/musicgen-medium"),
            ModelSource::Hub {
                id: "facebook/musicgen-medium".into(),
                revision: "main".into()
            }
        );
        assert!(matches!(
            ModelSource::parse("./models/tiny"),
            ModelSource::Local { .. }
        ));
        assert!(matches!(
            ModelSource::parse("/abs/dir"),
            ModelSource::Local { .. }
        ));
    }

    #[test]
    fn request_round_trips_through_json() {
        let r = GenerationRequest {
            prompt: "dusty boom-bap drums, 90 bpm".into(),
            model: ModelSource::Local { path: "/m".into() },
            seed: 42,
            ..Default::default()
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<GenerationRequest>(&json).unwrap(), r);
    }

    #[test]
    fn defaults_follow_generation_config() {
        let gen = GenerationConfig {
            guidance_scale: Some(3.0),
            top_k: Some(250),
            max_length: Some(1500),
            do_sample: Some(true),
            ..Default::default()
        };
        let d = GenerationDefaults::from_config(&gen, 4);
        assert_eq!(d.guidance_scale, 3.0);
        assert_eq!(d.max_frames, 1496);
        assert_eq!(
            d.sampling,
            Sampling::Sample {
                temperature: 1.0,
                top_k: Some(250),
                top_p: None
            }
        );
        let greedy = GenerationConfig {
            do_sample: Some(false),
            ..Default::default()
        };
        assert_eq!(
            GenerationDefaults::from_config(&greedy, 4).sampling,
            Sampling::Greedy
        );
    }
}

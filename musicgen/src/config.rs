//! Configuration of a MusicGen checkpoint in the Hugging Face layout.
//!
//! `config.json` is the composite `MusicgenConfig` of transformers'
//! `configuration_musicgen.py`: a `text_encoder` (T5), an `audio_encoder` (EnCodec)
//! and a `decoder` section. Field names match the checkpoint's JSON.

use candle_transformers::models::t5;
use serde::Deserialize;

/// The composite `config.json` of a `MusicgenForConditionalGeneration` checkpoint,
/// or of a `MusicgenMelodyForConditionalGeneration` one (`model_type`
/// "musicgen_melody", which adds the chroma fields).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub model_type: String,
    pub text_encoder: t5::Config,
    pub audio_encoder: EncodecConfig,
    pub decoder: DecoderConfig,
    /// Melody: chroma bins per frame (12).
    #[serde(default = "default_num_chroma")]
    pub num_chroma: usize,
    /// Melody: chroma frames the decoder is conditioned on (235 for the published
    /// checkpoints: 30 s at the feature extractor's hop); shorter melodies are
    /// tiled up to it, longer ones cut.
    #[serde(default = "default_chroma_length")]
    pub chroma_length: usize,
}

fn default_num_chroma() -> usize {
    12
}

fn default_chroma_length() -> usize {
    235
}

/// The published checkpoints that take a melody.
pub const MELODY_CHECKPOINTS: [&str; 4] = [
    "facebook/musicgen-melody",
    "facebook/musicgen-melody-large",
    "facebook/musicgen-stereo-melody",
    "facebook/musicgen-stereo-melody-large",
];

fn default_gelu() -> String {
    "gelu".to_string()
}

fn one() -> usize {
    1
}

/// The `decoder` section: `MusicgenDecoderConfig`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct DecoderConfig {
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub num_hidden_layers: usize,
    pub ffn_dim: usize,
    pub num_attention_heads: usize,
    pub hidden_size: usize,
    #[serde(default = "default_gelu")]
    pub activation_function: String,
    pub num_codebooks: usize,
    #[serde(default = "one")]
    pub audio_channels: usize,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub scale_embedding: bool,
    #[serde(default)]
    pub cross_attention_hidden_size: Option<usize>,
}

fn default_pad_mode() -> String {
    "reflect".to_string()
}

fn default_norm_type() -> String {
    "weight_norm".to_string()
}

/// The `audio_encoder` section: `EncodecConfig`. Only the fields the decoder path reads.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct EncodecConfig {
    pub sampling_rate: usize,
    #[serde(default = "one")]
    pub audio_channels: usize,
    pub hidden_size: usize,
    pub num_filters: usize,
    pub num_residual_layers: usize,
    pub upsampling_ratios: Vec<usize>,
    #[serde(default = "default_norm_type")]
    pub norm_type: String,
    pub kernel_size: usize,
    pub last_kernel_size: usize,
    pub residual_kernel_size: usize,
    pub dilation_growth_rate: usize,
    pub use_causal_conv: bool,
    #[serde(default = "default_pad_mode")]
    pub pad_mode: String,
    pub compress: usize,
    pub num_lstm_layers: usize,
    #[serde(default = "default_trim_right_ratio")]
    pub trim_right_ratio: f64,
    pub codebook_size: usize,
    #[serde(default)]
    pub codebook_dim: Option<usize>,
    #[serde(default)]
    pub use_conv_shortcut: bool,
    #[serde(default)]
    pub normalize: bool,
    /// kbps the codec can run at; the first sets how many quantizers encode.
    #[serde(default = "default_bandwidths")]
    pub target_bandwidths: Vec<f64>,
}

fn default_bandwidths() -> Vec<f64> {
    vec![2.2]
}

fn default_trim_right_ratio() -> f64 {
    1.0
}

impl EncodecConfig {
    /// Audio samples per code frame (640 for the 32 kHz model).
    pub fn hop_length(&self) -> usize {
        self.upsampling_ratios.iter().product()
    }

    /// Code frames per second of audio (50 for the 32 kHz model).
    pub fn frame_rate(&self) -> f64 {
        self.sampling_rate as f64 / self.hop_length() as f64
    }

    pub fn codebook_dim(&self) -> usize {
        self.codebook_dim.unwrap_or(self.hidden_size)
    }

    /// Quantizers `encode` runs at its default bandwidth, as transformers'
    /// `get_num_quantizers_for_bandwidth`: floor(kbps * 1000 / (bits per code *
    /// ceil(frame rate))), at least 1 (4 for the published 32 kHz model, 2.2 kbps).
    pub fn num_quantizers(&self) -> usize {
        let bandwidth = self.target_bandwidths.first().copied().unwrap_or(2.2);
        let bits = (self.codebook_size as f64).log2();
        let frame_rate = self.frame_rate().ceil();
        ((bandwidth * 1000.0 / (bits * frame_rate)).floor() as usize).max(1)
    }
}

/// `generation_config.json`: the checkpoint's own sampling defaults.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct GenerationConfig {
    pub decoder_start_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub do_sample: Option<bool>,
    pub guidance_scale: Option<f64>,
    pub max_length: Option<usize>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub temperature: Option<f64>,
}

impl Config {
    /// Refuses checkpoints this engine cannot run, by name, before any weight is read.
    pub fn check_supported(&self) -> Result<(), String> {
        match self.model_type.as_str() {
            "musicgen" => {}
            "musicgen_melody" => {
                if self.num_chroma != crate::chroma::NUM_CHROMA {
                    return Err(format!(
                        "melody checkpoints with {} chroma bins are not supported (MusicGen-melody uses 12)",
                        self.num_chroma
                    ));
                }
                if self.chroma_length == 0 {
                    return Err("a melody checkpoint needs chroma_length of at least 1".into());
                }
            }
            other => {
                return Err(format!(
                    "config.json describes a \"{other}\" model, not MusicGen (model_type \"musicgen\" or \"musicgen_melody\")"
                ))
            }
        }
        let d = &self.decoder;
        if d.audio_channels != 1 && d.audio_channels != 2 {
            return Err(format!(
                "decoder audio_channels {} is not supported (1 for mono, 2 for stereo)",
                d.audio_channels
            ));
        }
        if self.audio_encoder.audio_channels != 1 {
            return Err(format!(
                "EnCodec with {} audio channels is not supported (MusicGen's EnCodec is mono; stereo checkpoints run it per channel)",
                self.audio_encoder.audio_channels
            ));
        }
        let quantizers = self.audio_encoder.num_quantizers();
        if d.num_codebooks != d.audio_channels * quantizers {
            let kind = if d.audio_channels == 2 {
                "stereo"
            } else {
                "mono"
            };
            return Err(format!(
                "a {kind} checkpoint needs {} decoder codebooks ({} per channel, from EnCodec's bandwidth), this one has {}",
                d.audio_channels * quantizers,
                quantizers,
                d.num_codebooks
            ));
        }
        if d.activation_function != "gelu" {
            return Err(format!(
                "decoder activation \"{}\" is not supported (MusicGen uses \"gelu\")",
                d.activation_function
            ));
        }
        if d.num_attention_heads == 0 || !d.hidden_size.is_multiple_of(d.num_attention_heads) {
            return Err(format!(
                "decoder hidden_size {} is not divisible by num_attention_heads {}",
                d.hidden_size, d.num_attention_heads
            ));
        }
        if d.cross_attention_hidden_size.is_some() {
            return Err("decoder.cross_attention_hidden_size is not supported".into());
        }
        let a = &self.audio_encoder;
        if a.norm_type != "weight_norm" {
            return Err(format!(
                "EnCodec norm_type \"{}\" is not supported (MusicGen's EnCodec uses \"weight_norm\")",
                a.norm_type
            ));
        }
        if a.pad_mode != "reflect" && a.pad_mode != "constant" {
            return Err(format!(
                "EnCodec pad_mode \"{}\" is not supported",
                a.pad_mode
            ));
        }
        if a.normalize {
            return Err("EnCodec checkpoints with normalize = true are not supported".into());
        }
        if a.codebook_size != d.vocab_size {
            return Err(format!(
                "EnCodec codebook_size {} differs from the decoder's vocab_size {}",
                a.codebook_size, d.vocab_size
            ));
        }
        Ok(())
    }

    /// A MusicGen-melody checkpoint: decoder-only, its conditioning (chroma, then
    /// text) prepended to the decoder input instead of cross-attended.
    pub fn is_melody(&self) -> bool {
        self.model_type == "musicgen_melody"
    }

    /// The decoder's padding token: the delay pattern's filler and the start column.
    pub fn pad_token_id(&self, gen: &GenerationConfig) -> u32 {
        gen.pad_token_id
            .or(self.decoder.pad_token_id)
            .unwrap_or(self.decoder.vocab_size as u32)
    }
}

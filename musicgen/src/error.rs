//! The engine's error type: what went wrong, with the numbers and paths involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's cancel flag was raised; nothing was produced.
    #[error("generation cancelled")]
    Cancelled,

    /// A request that cannot be run as asked.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    #[error("the prompt is {tokens} tokens long; at most {max} are allowed: shorten it")]
    PromptTooLong { tokens: usize, max: usize },

    /// A file of the checkpoint is missing.
    #[error("model file not found: {}", path.display())]
    MissingFile { path: PathBuf },

    /// A checkpoint folder that is not a MusicGen checkpoint, or one not supported.
    #[error("unsupported model in {}: {reason}", path.display())]
    UnsupportedModel { path: PathBuf, reason: String },

    /// A JSON file that does not parse or lacks fields.
    #[error("cannot read {}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },

    /// Weights that cannot be read or do not fit the config (names the tensor and shapes).
    #[error("cannot load the weights in {}: {source}", path.display())]
    Weights {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },

    /// A melody given to a checkpoint that cannot take one.
    #[error("this checkpoint takes no melody; melody conditioning needs a MusicGen-melody checkpoint: {checkpoints}")]
    MelodyUnsupported { checkpoints: String },

    /// Audio (a prompt, a melody) with no samples.
    #[error("the {what} has no samples")]
    EmptyAudio { what: &'static str },

    /// An audio prompt shorter than one code frame.
    #[error("the audio prompt is {samples} samples at {sample_rate} Hz; at least one frame ({min} samples at that rate) is needed")]
    AudioTooShort {
        samples: usize,
        sample_rate: u32,
        min: usize,
    },

    /// Multi-channel audio whose channels differ in length.
    #[error("the {what}'s channels have different lengths: {lengths:?} samples")]
    ChannelLengths {
        what: &'static str,
        lengths: Vec<usize>,
    },

    /// A WAV file that cannot be read as audio.
    #[error("cannot read the WAV file {}: {reason}", path.display())]
    BadWav { path: PathBuf, reason: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The hub could not be reached and the model is not in the local cache.
    #[error("{0}")]
    Hub(String),

    #[error("device: {0}")]
    Device(String),

    #[error(transparent)]
    Io(#[from] std::io::Error),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

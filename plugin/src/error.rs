//! The plugin's errors: what went wrong, with the numbers involved. The editor
//! picks its advice by variant (see `editor::view::advice`).

use std::path::PathBuf;
use std::sync::Arc;

use crate::take::TakeId;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    /// Asked to generate before the host activated the plugin.
    #[error("the plugin is not active yet: start the host's audio engine")]
    NotActive,

    #[error("the prompt is {chars} characters long; the limit is {max}")]
    PromptTooLong { chars: usize, max: usize },

    #[error("a take must be longer than 0 s (got {seconds} s)")]
    EmptyLength { seconds: f64 },

    /// Longer than the engine makes; `bars` and `tempo` when asked for in bars.
    #[error("{}; a take is at most {max} s (5 minutes): choose fewer bars or seconds", describe(*seconds, *bars, *tempo))]
    TooLong {
        seconds: f64,
        max: f64,
        bars: Option<f64>,
        tempo: Option<f64>,
    },

    #[error("no take {0}")]
    NoSuchTake(TakeId),

    #[error("the take is still loading")]
    TakeNotReady,

    /// A take made from another one whose audio is not there.
    #[error("take {0}, which this take is made from, has no audio (deleted and purged, or its file is missing)")]
    SourceGone(TakeId),

    /// A take that was not generated cannot be generated again.
    #[error("this take was {0}, not generated: there is nothing to generate again")]
    NotGenerated(&'static str),

    /// A melody asked of a model that takes none.
    #[error("{model} takes no melody: pick a melody model (MusicGen melody or stereo melody), or clear the melody")]
    MelodyUnsupported { model: String },

    /// A recording that could not finish.
    #[error("the recording stopped: {0}")]
    CaptureStopped(String),

    /// An audio file that cannot become a take.
    #[error("cannot import {}: {reason}", path.display())]
    Import { path: PathBuf, reason: String },

    /// The engine failed: loading, generating or decoding.
    #[error("{0}")]
    Engine(Arc<musicgen::Error>),

    /// A file could not be written or read; `what` says which and why.
    #[error("cannot {what} {}: {reason}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    /// A take's WAV that is not the audio its metadata describes.
    #[error("{}: {reason}", path.display())]
    BadTakeFile { path: PathBuf, reason: String },

    #[error("cannot resample the take to {rate} Hz: {reason}")]
    Resample { rate: u32, reason: String },

    #[error("cannot start the compute threads: {0}")]
    ComputePool(String),
}

fn describe(seconds: f64, bars: Option<f64>, tempo: Option<f64>) -> String {
    match (bars, tempo) {
        (Some(b), Some(t)) => format!("{b} bars at {t:.1} bpm is {seconds:.2} s"),
        _ => format!("{seconds:.2} s"),
    }
}

impl From<musicgen::Error> for PluginError {
    fn from(e: musicgen::Error) -> Self {
        PluginError::Engine(Arc::new(e))
    }
}

impl PluginError {
    pub(crate) fn file(what: &'static str, path: &std::path::Path, e: impl ToString) -> Self {
        PluginError::File {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }
}

/// Errors compare by what they say (the engine's error has no equality).
impl PartialEq for PluginError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

pub type Result<T, E = PluginError> = std::result::Result<T, E>;

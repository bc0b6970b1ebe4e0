//! The take: the unit the producer sees. Its metadata is saved with the project
//! (see `document`), its audio at the model's rate lives in a WAV in the data
//! folder (see `store`), and its clip at the host's rate is what the audio
//! thread plays (see `clip`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use musicgen::GenerationRequest;
use serde::{Deserialize, Serialize};

use crate::clip::{beats_per_bar, Clip};

/// A take's id, `take-<unix ms>-<random hex>`: sortable by creation, and the
/// stem of its WAV's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TakeId(String);

impl TakeId {
    /// A new, unique id.
    pub fn new() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        TakeId(format!("take-{ms}-{:08x}", unique_bits() as u32))
    }

    #[cfg_attr(not(any(test, feature = "test-hooks")), allow(dead_code))]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as the audio thread and the playhead know it.
    pub fn key(&self) -> TakeKey {
        // FNV-1a: stable across runs and platforms.
        TakeKey(self.0.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        }))
    }
}

impl Default for TakeId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for TakeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TakeId {
    fn from(s: &str) -> Self {
        TakeId(s.to_string())
    }
}

impl From<String> for TakeId {
    fn from(s: String) -> Self {
        TakeId(s)
    }
}

impl PartialEq<str> for TakeId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TakeId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A take's id as a number, for atomics and the audio thread (never 0 in
/// practice; 0 means "nothing" to the playhead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TakeKey(pub u64);

/// Where a take's audio came from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TakeSource {
    /// Generated from the settings (text, and a melody if `melody` says so).
    #[default]
    Text,
    /// Generated to carry on from the end of take `of`, whose last
    /// `prompt_seconds` were the audio prompt; holds only the new part.
    Continuation { of: TakeId, prompt_seconds: f64 },
    /// Recorded from the plugin's audio input.
    Captured,
    /// Read from a file; `path` is where it was.
    Imported { path: PathBuf },
}

impl TakeSource {
    /// The take this one was made from, if any.
    pub fn depends_on(&self) -> Option<&TakeId> {
        match self {
            TakeSource::Continuation { of, .. } => Some(of),
            _ => None,
        }
    }

    /// Whether the take was generated.
    pub fn generated(&self) -> bool {
        matches!(self, TakeSource::Text | TakeSource::Continuation { .. })
    }

    /// Whether it can be made again: generated, or imported (read again).
    pub fn repeatable(&self) -> bool {
        !matches!(self, TakeSource::Captured)
    }
}

/// A note of a MIDI melody, as a take stores it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NoteRecord {
    pub start_s: f64,
    pub end_s: f64,
    pub pitch: u8,
}

/// What a melody model's take followed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MelodySource {
    /// Another take's audio.
    Take { of: TakeId },
    /// Notes lasting `seconds` (a MIDI melody), no audio at all.
    Notes {
        notes: Vec<NoteRecord>,
        seconds: f64,
    },
}

/// A take's metadata, saved with the project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TakeMeta {
    pub id: TakeId,
    /// Everything that decided the take (the seed included).
    pub request: GenerationRequest,
    pub engine_version: String,
    /// Length of the loop in seconds, and in samples (per channel) at `sample_rate`.
    pub seconds: f64,
    pub samples: usize,
    /// The rate the WAV is stored at: the model's for generated takes.
    pub sample_rate: u32,
    /// 1 (mono) or 2 (stereo: stereo models, stereo imports and captures).
    #[serde(default = "one_channel")]
    pub channels: usize,
    /// Host tempo when it was made, if the host gave one.
    pub tempo: Option<f64>,
    /// Length in bars, for bar-length takes.
    pub bars: Option<f64>,
    pub time_signature: Option<(u32, u32)>,
    /// Unix time, seconds.
    pub created: u64,
    /// The WAV at the model rate.
    pub file: PathBuf,
    /// Deleted by the user: hidden, its file kept until a purge.
    #[serde(default)]
    pub hidden: bool,
    /// Where the audio came from (state version 2; version 1 takes are text).
    #[serde(default)]
    pub source: TakeSource,
    /// The melody it followed, for melody models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub melody: Option<MelodySource>,
}

impl TakeMeta {
    /// The takes this one was made from (what it continues, its melody).
    pub fn depends_on(&self) -> impl Iterator<Item = &TakeId> {
        let melody = match &self.melody {
            Some(MelodySource::Take { of }) => Some(of),
            _ => None,
        };
        self.source.depends_on().into_iter().chain(melody)
    }

    /// Length in quarter-note beats at its own tempo (bar takes only).
    pub fn beats(&self) -> Option<f64> {
        let (n, d) = self.time_signature?;
        Some(self.bars? * beats_per_bar(n, d))
    }
}

fn one_channel() -> usize {
    1
}

/// Where a take's audio stands.
#[derive(Debug, Clone, PartialEq)]
pub enum TakeStatus {
    /// Being read from disk and resampled.
    Loading,
    Ready,
    /// The WAV is gone or unreadable; the metadata stays.
    Missing(String),
}

/// A take as an instance holds it: metadata plus audio once loaded.
#[derive(Debug, Clone)]
pub struct Take {
    pub meta: TakeMeta,
    pub status: TakeStatus,
    /// PCM at `meta.sample_rate`, interleaved when stereo: the source of every
    /// resampling.
    pub pcm: Option<Arc<Vec<f32>>>,
    /// The clip at the host rate the audio thread was last given.
    pub clip: Option<Arc<Clip>>,
}

impl Take {
    /// A take known only by its metadata, whose audio is still to load.
    pub fn unloaded(meta: TakeMeta) -> Self {
        Self {
            meta,
            status: TakeStatus::Loading,
            pcm: None,
            clip: None,
        }
    }
}

fn unique_bits() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// A seed for "random" mode; kept with the take so it can be reused.
pub fn random_seed() -> u64 {
    unique_bits() >> 16
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_sortable_and_keyed_stably() {
        let a = TakeId::new();
        let b = TakeId::new();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("take-"));
        assert_eq!(a.key(), TakeId::from(a.as_str()).key());
        assert_ne!(a.key(), b.key());
        // FNV-1a of the empty string is its offset basis.
        assert_eq!(TakeId::from("").key(), TakeKey(0xcbf2_9ce4_8422_2325));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!("\"{a}\""), "saved as a plain string");
    }
}

//! Take files: where they go, writing and reading them back (checked against
//! the metadata), and purging the ones nothing refers to.

use std::path::{Path, PathBuf};

use crate::error::{PluginError, Result};
use crate::take::TakeMeta;

/// The folder take WAVs go in: the configured one, else `$PROMPTLOOP_DATA_DIR`,
/// else the user's data directory.
pub fn takes_folder(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured.filter(|p| !p.as_os_str().is_empty()) {
        return p.to_path_buf();
    }
    match std::env::var_os("PROMPTLOOP_DATA_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("takes"),
        _ => dirs::data_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("Promptloop")
            .join("takes"),
    }
}

/// Writes a take's WAV (32-bit float, `channels` interleaved), creating its
/// folder.
pub fn write_take(file: &Path, pcm: &[f32], channels: usize, sample_rate: u32) -> Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| PluginError::file("create the takes folder", dir, e))?;
    }
    musicgen::wav::write_wav_interleaved(file, pcm, channels as u16, sample_rate)
        .map_err(|e| PluginError::file("save the take", file, e))
}

/// Reads a take's WAV (interleaved when stereo) and checks it is the audio the
/// metadata describes.
pub fn read_take(meta: &TakeMeta) -> Result<Vec<f32>> {
    let bad = |reason: String| PluginError::BadTakeFile {
        path: meta.file.clone(),
        reason,
    };
    if !meta.file.exists() {
        return Err(bad("the file is missing".into()));
    }
    let planar =
        musicgen::wav::read_wav_channels(&meta.file, "take").map_err(|e| bad(e.to_string()))?;
    let rate = planar.sample_rate;
    if planar.channels.len() != meta.channels {
        return Err(bad(format!(
            "it has {} channel(s), the take has {}",
            planar.channels.len(),
            meta.channels
        )));
    }
    if planar.len() != meta.samples {
        return Err(bad(format!(
            "it holds {} samples, the take has {}",
            planar.len(),
            meta.samples
        )));
    }
    let pcm = crate::clip::interleave(&planar.channels);
    if rate != meta.sample_rate {
        return Err(bad(format!(
            "it is at {rate} Hz, the take was made at {} Hz",
            meta.sample_rate
        )));
    }
    if pcm.iter().any(|s| !s.is_finite()) {
        return Err(bad("it holds invalid samples".into()));
    }
    Ok(pcm)
}

/// Removes take WAVs in `folder` that are not in `referenced`. Returns the
/// files removed.
pub fn purge_unreferenced(folder: &Path, referenced: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let referenced: Vec<PathBuf> = referenced
        .iter()
        .map(|p| p.canonicalize().unwrap_or_else(|_| p.clone()))
        .collect();
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(folder) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let is_take = path.extension().is_some_and(|e| e == "wav")
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("take-"));
        if !is_take {
            continue;
        }
        let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
        if !referenced.contains(&canonical) {
            std::fs::remove_file(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

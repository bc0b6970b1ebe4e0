//! Takes as files for the host: a WAV at the session's rate, named from the
//! prompt and take id, with the prompt, seed and model in its INFO chunk. This
//! is what a drag onto a track delivers (written before the drag starts), and
//! what "Reveal file" and "Copy path" point at. Platform-free; the drag itself
//! lives in `editor::drag`.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::clip::Clip;
use crate::error::{PluginError, Result};
use crate::take::TakeMeta;

/// A file-name-safe short form of a prompt: lowercase words joined by '-'.
pub fn slug(prompt: &str, max: usize) -> String {
    let mut out = String::new();
    for word in prompt
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let word = word.to_lowercase();
        if out.len() + word.len() + 1 > max {
            break;
        }
        if !out.is_empty() {
            out.push('-');
        }
        out.push_str(&word);
    }
    if out.is_empty() {
        out.push_str("untitled");
    }
    out
}

/// Where a take's export at `rate` goes.
pub fn export_path(folder: &Path, meta: &TakeMeta, rate: u32) -> PathBuf {
    folder.join(format!(
        "{}-{}-{}k.wav",
        slug(&meta.request.prompt, 40),
        meta.id,
        rate as f64 / 1000.0
    ))
}

/// Writes (or reuses) the take at the clip's rate in `folder` and returns its
/// path. The file is complete when this returns.
pub fn export_take(folder: &Path, meta: &TakeMeta, clip: &Clip) -> Result<PathBuf> {
    let path = export_path(folder, meta, clip.sample_rate);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(folder).map_err(|e| PluginError::file("create", folder, e))?;
    // Write beside, then rename: a drop target never sees half a file.
    let partial = path.with_extension("wav.partial");
    write_with_info(
        &partial,
        &clip.samples,
        clip.channels,
        clip.sample_rate,
        &info(meta),
    )
    .map_err(|e| PluginError::file("write", &partial, e))?;
    std::fs::rename(&partial, &path).map_err(|e| PluginError::file("write", &path, e))?;
    Ok(path)
}

/// The INFO entries of an export: title (prompt), comment (seed and model),
/// software.
pub fn info(meta: &TakeMeta) -> Vec<([u8; 4], String)> {
    let r = &meta.request;
    vec![
        (*b"INAM", r.prompt.clone()),
        (
            *b"ICMT",
            format!(
                "Promptloop take {}; seed {}; model {}; {} precision; guidance {}",
                meta.id, r.seed, r.model, r.precision, r.guidance_scale
            ),
        ),
        (
            *b"ISFT",
            format!("Promptloop {}", env!("CARGO_PKG_VERSION")),
        ),
    ]
}

/// A 32-bit float WAV (`samples` interleaved when stereo) followed by a
/// LIST/INFO chunk.
pub fn write_with_info(
    path: &Path,
    samples: &[f32],
    channels: usize,
    rate: u32,
    info: &[([u8; 4], String)],
) -> std::io::Result<()> {
    let spec = hound::WavSpec {
        channels: channels as u16,
        sample_rate: rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).map_err(std::io::Error::other)?;
    for &s in samples {
        w.write_sample(s).map_err(std::io::Error::other)?;
    }
    w.finalize().map_err(std::io::Error::other)?;

    let mut list = b"INFO".to_vec();
    for (id, text) in info {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        list.extend_from_slice(id);
        list.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        list.extend_from_slice(&bytes);
        if bytes.len() % 2 == 1 {
            list.push(0); // chunks are word-aligned
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let end = f.seek(SeekFrom::End(0))?;
    if end % 2 == 1 {
        f.write_all(&[0])?;
    }
    f.write_all(b"LIST")?;
    f.write_all(&(list.len() as u32).to_le_bytes())?;
    f.write_all(&list)?;
    let total = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(4))?;
    f.write_all(&((total - 8) as u32).to_le_bytes())?;
    f.flush()
}

/// Reads the INFO entries back (for tests and for checking an export).
#[cfg(any(test, feature = "test-hooks"))]
pub fn read_info(path: &Path) -> std::io::Result<Vec<([u8; 4], String)>> {
    let bytes = std::fs::read(path)?;
    let mut out = Vec::new();
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
        if id == b"LIST" && body.starts_with(b"INFO") {
            let mut i = 4;
            while i + 8 <= body.len() {
                let sub: [u8; 4] = body[i..i + 4].try_into().unwrap();
                let n = u32::from_le_bytes(body[i + 4..i + 8].try_into().unwrap()) as usize;
                let text = &body[i + 8..(i + 8 + n).min(body.len())];
                let text = String::from_utf8_lossy(text)
                    .trim_end_matches('\0')
                    .to_string();
                out.push((sub, text));
                i += 8 + n + n % 2;
            }
        }
        at += 8 + len + len % 2;
    }
    Ok(out)
}

/// A `text/uri-list` for files (RFC 2483): `file://` URIs, percent-encoded,
/// CRLF-terminated, as XDND targets and file managers expect.
#[cfg(any(target_os = "linux", test, feature = "test-hooks"))]
pub fn uri_list(paths: &[PathBuf]) -> String {
    let mut out = String::new();
    for p in paths {
        out.push_str("file://");
        for b in p.to_string_lossy().bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(b as char)
                }
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out.push_str("\r\n");
    }
    out
}

/// Opens the folder holding `path` in the system's file manager. Returns
/// what happened, in words, for the editor.
pub fn reveal_in_file_manager(path: &Path) -> String {
    let folder = path.parent().unwrap_or(path);
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(target_os = "windows") {
        "explorer"
    } else {
        "xdg-open"
    };
    match std::process::Command::new(opener).arg(folder).spawn() {
        Ok(_) => format!("Opened {}", folder.display()),
        Err(e) => format!("Cannot open {} ({opener}: {e})", folder.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use musicgen::GenerationRequest;

    fn meta() -> TakeMeta {
        TakeMeta {
            id: "take-1-abc".into(),
            request: GenerationRequest {
                prompt: "Dusty boom-bap drums, 90 BPM!".into(),
                seed: 42,
                ..Default::default()
            },
            engine_version: "0.1.0".into(),
            seconds: 0.5,
            samples: 16_000,
            sample_rate: 32_000,
            channels: 2,
            tempo: None,
            bars: None,
            time_signature: None,
            created: 0,
            file: PathBuf::new(),
            hidden: false,
            source: Default::default(),
            melody: None,
        }
    }

    #[test]
    fn export_is_named_from_the_prompt_and_carries_its_info() {
        let dir = tempfile::tempdir().unwrap();
        let clip = Clip::new(
            crate::take::TakeKey(1),
            // Stereo: the sides differ.
            (0..48_002).map(|i| (i as f32 * 0.01).sin()).collect(),
            2,
            48_000,
            None,
            None,
        );
        let path = export_take(dir.path(), &meta(), &clip).unwrap();
        assert_eq!(
            path.file_name().unwrap(),
            "dusty-boom-bap-drums-90-bpm-take-1-abc-48k.wav"
        );
        let mut r = hound::WavReader::open(&path).unwrap();
        assert_eq!((r.spec().sample_rate, r.spec().channels), (48_000, 2));
        let samples: Vec<f32> = r.samples::<f32>().map(Result::unwrap).collect();
        assert_eq!(samples, clip.samples);
        let info = read_info(&path).unwrap();
        assert_eq!(info[0], (*b"INAM", "Dusty boom-bap drums, 90 BPM!".into()));
        assert!(info[1].1.contains("seed 42"), "{info:?}");
        assert!(info[1].1.contains("facebook/musicgen-small"));
        // Exporting again reuses the file.
        assert_eq!(export_take(dir.path(), &meta(), &clip).unwrap(), path);
    }

    #[test]
    fn uri_lists_are_percent_encoded_with_crlf() {
        let list = uri_list(&[PathBuf::from("/tmp/a b/ü.wav"), PathBuf::from("/x.wav")]);
        assert_eq!(list, "file:///tmp/a%20b/%C3%BC.wav\r\nfile:///x.wav\r\n");
    }

    #[test]
    fn slugs_are_short_and_safe() {
        assert_eq!(slug("  ", 40), "untitled");
        assert_eq!(slug("a/b\\c:d", 40), "a-b-c-d");
        assert!(slug(&"word ".repeat(50), 40).len() <= 40);
    }
}

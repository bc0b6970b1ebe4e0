//! Melody conditioning's chroma: which of the 12 pitch classes dominates each
//! STFT frame, one-hot, as transformers' `MusicgenMelodyFeatureExtractor`
//! computes it from audio; and the same frames from notes, so a MIDI melody
//! conditions MusicGen-melody with no audio at all.
//!
//! From audio: mono mix, resampled to the extractor's rate, cut to its
//! `chunk_length` seconds, zero-padded (centred) to at least `n_fft` samples; a
//! power spectrogram (periodic Hann window of `n_fft`, hop `hop_length`, centred
//! frames with reflect padding, as torchaudio's `Spectrogram(center=True)`);
//! librosa's chroma filter bank (`chroma_filter_bank` in transformers'
//! `audio_utils`, C first) applied to each frame; and the arg-max pitch class set
//! to one. The reference's normalisations (the spectrogram's window-energy
//! scale, the inf-norm before the arg-max) scale a frame by a positive number and
//! cannot change its arg-max, so they are left out; a silent frame's all-zero
//! chroma takes class 0 (C), as `argmax` gives there.

use std::path::Path;

use realfft::RealFftPlanner;
use serde::Deserialize;

use crate::request::Pcm;
use crate::{Error, Result};

/// Pitch classes, C first.
pub const NUM_CHROMA: usize = 12;

/// The feature extractor's settings, as `preprocessor_config.json` holds them;
/// the defaults are the published checkpoints'.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ChromaConfig {
    pub sampling_rate: u32,
    pub n_fft: usize,
    pub hop_length: usize,
    /// Seconds of audio the extractor reads; the rest is cut off.
    pub chunk_length: usize,
    pub num_chroma: usize,
}

impl Default for ChromaConfig {
    fn default() -> Self {
        Self {
            sampling_rate: 32_000,
            n_fft: 16_384,
            hop_length: 4_096,
            chunk_length: 30,
            num_chroma: NUM_CHROMA,
        }
    }
}

impl ChromaConfig {
    /// Reads `preprocessor_config.json`; a missing file gives the defaults.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(Error::Io(e)),
        };
        let config: Self = serde_json::from_str(&text).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        if self.num_chroma != NUM_CHROMA
            || self.sampling_rate == 0
            || self.hop_length == 0
            || self.n_fft < 2
            || !self.n_fft.is_multiple_of(2)
            || self.chunk_length == 0
        {
            return Err(Error::InvalidRequest(format!(
                "unsupported chroma settings {self:?}: 12 chroma, an even n_fft, and non-zero rate, hop and chunk length are needed"
            )));
        }
        Ok(())
    }

    /// Seconds between frames.
    pub fn frame_period_s(&self) -> f64 {
        self.hop_length as f64 / self.sampling_rate as f64
    }

    /// Frames the extractor gives for `samples` samples at its rate.
    pub fn frames_for(&self, samples: usize) -> usize {
        let samples = samples.min(self.chunk_length * self.sampling_rate as usize);
        1 + samples.max(self.n_fft) / self.hop_length
    }
}

/// One-hot chroma frames, `[frame][pitch class]`.
pub type Chroma = Vec<[f32; NUM_CHROMA]>;

/// The pitch class of each frame (the index of its one).
pub fn classes(chroma: &Chroma) -> Vec<usize> {
    chroma
        .iter()
        .map(|f| f.iter().position(|&v| v == 1.0).unwrap_or(0))
        .collect()
}

fn one_hot(class: usize) -> [f32; NUM_CHROMA] {
    let mut f = [0.0; NUM_CHROMA];
    f[class] = 1.0;
    f
}

/// librosa's chroma filter bank, `(12, n_fft / 2 + 1)` row-major, as
/// transformers' `chroma_filter_bank(num_frequency_bins=n_fft, tuning=0,
/// power=2, weighting_parameters=(5, 2), start_at_c_chroma=True)`, in f64.
pub fn filter_bank(sampling_rate: u32, n_fft: usize) -> Vec<f64> {
    let n = NUM_CHROMA as f64;
    // Octaves above A0/16 of each FFT bin but DC, in chroma bins.
    let mut bins: Vec<f64> = (1..n_fft)
        .map(|k| {
            let f = k as f64 * sampling_rate as f64 / n_fft as f64;
            n * (f / (440.0 / 16.0)).log2()
        })
        .collect();
    // DC: 1.5 octaves below bin 1.
    bins.insert(0, bins[0] - 1.5 * n);
    let widths: Vec<f64> = bins
        .windows(2)
        .map(|w| (w[1] - w[0]).max(1.0))
        .chain(std::iter::once(1.0))
        .collect();
    let half = (n / 2.0).round();
    let cols = n_fft / 2 + 1;
    let mut bank = vec![0.0f64; NUM_CHROMA * n_fft];
    for (j, (&b, &w)) in bins.iter().zip(&widths).enumerate() {
        for c in 0..NUM_CHROMA {
            let d = (b - c as f64 + half + 10.0 * n).rem_euclid(n) - half;
            bank[c * n_fft + j] = (-0.5 * (2.0 * d / w).powi(2)).exp();
        }
    }
    for (j, &b) in bins.iter().enumerate() {
        let norm = (0..NUM_CHROMA)
            .map(|c| bank[c * n_fft + j].powi(2))
            .sum::<f64>()
            .sqrt();
        let weight = (-0.5 * ((b / n - 5.0) / 2.0).powi(2)).exp();
        for c in 0..NUM_CHROMA {
            bank[c * n_fft + j] = bank[c * n_fft + j] / norm * weight;
        }
    }
    // Start at C: row c of the result is row c + 3 of the A-based bank.
    let mut out = vec![0.0f64; NUM_CHROMA * cols];
    for c in 0..NUM_CHROMA {
        let from = (c + 3) % NUM_CHROMA;
        out[c * cols..(c + 1) * cols].copy_from_slice(&bank[from * n_fft..from * n_fft + cols]);
    }
    out
}

/// The raw chroma energies `[frame][class]` of mono audio already at the
/// extractor's rate (see the module docs for the steps).
pub fn raw_chroma(config: &ChromaConfig, mono: &[f32]) -> Vec<[f64; NUM_CHROMA]> {
    let n_fft = config.n_fft;
    let hop = config.hop_length;
    let max = config.chunk_length * config.sampling_rate as usize;
    let mut wav: Vec<f32> = mono[..mono.len().min(max)].to_vec();
    if wav.len() < n_fft {
        let pad = n_fft - wav.len();
        let mut padded = vec![0.0f32; pad / 2];
        padded.extend_from_slice(&wav);
        padded.resize(n_fft, 0.0);
        wav = padded;
    }
    // Reflect padding of n_fft / 2 each side (the edge sample is not repeated).
    let half = n_fft / 2;
    let len = wav.len();
    let at = |i: isize| -> f32 {
        let i = if i < 0 {
            -i
        } else if i as usize >= len {
            2 * (len as isize - 1) - i
        } else {
            i
        };
        wav[i as usize]
    };
    let window: Vec<f32> = (0..n_fft)
        .map(|i| {
            let x = std::f64::consts::PI * i as f64 / n_fft as f64;
            x.sin().powi(2) as f32
        })
        .collect();
    let bank = filter_bank(config.sampling_rate, n_fft);
    let cols = n_fft / 2 + 1;
    let frames = 1 + len / hop;
    let fft = RealFftPlanner::<f32>::new().plan_fft_forward(n_fft);
    let mut input = fft.make_input_vec();
    let mut spectrum = fft.make_output_vec();
    let mut power = vec![0.0f64; cols];
    let mut out = Vec::with_capacity(frames);
    for t in 0..frames {
        let start = (t * hop) as isize - half as isize;
        for (i, x) in input.iter_mut().enumerate() {
            *x = at(start + i as isize) * window[i];
        }
        fft.process(&mut input, &mut spectrum)
            .expect("buffers sized by the plan");
        for (p, z) in power.iter_mut().zip(&spectrum) {
            *p = z.norm_sqr() as f64;
        }
        let mut frame = [0.0f64; NUM_CHROMA];
        for (c, e) in frame.iter_mut().enumerate() {
            *e = bank[c * cols..(c + 1) * cols]
                .iter()
                .zip(&power)
                .map(|(w, p)| w * p)
                .sum();
        }
        out.push(frame);
    }
    out
}

/// The arg-max pitch class of a frame of energies (the first on a tie, 0 for
/// silence), and the gap to the runner-up relative to the winner (0 on a tie).
pub fn argmax_with_margin(frame: &[f64; NUM_CHROMA]) -> (usize, f64) {
    let best = (1..NUM_CHROMA).fold(0, |b, c| if frame[c] > frame[b] { c } else { b });
    let second = (0..NUM_CHROMA)
        .filter(|&c| c != best)
        .map(|c| frame[c])
        .fold(f64::MIN, f64::max);
    let margin = if frame[best] > 0.0 {
        (frame[best] - second) / frame[best]
    } else {
        0.0
    };
    (best, margin)
}

/// One-hot chroma of PCM audio: channels averaged, resampled (rubato) to the
/// extractor's rate, then [`raw_chroma`] and the arg-max.
pub fn chroma_from_audio(config: &ChromaConfig, pcm: &Pcm) -> Result<Chroma> {
    config.check()?;
    pcm.check("melody")?;
    let mono = crate::wav::to_channels(pcm, 1);
    // Cut before resampling (with a little context for the filter), then exactly.
    let max_in = (config.chunk_length as u64 * pcm.sample_rate as u64) as usize + 4096;
    let mono = Pcm {
        channels: vec![mono.channels[0][..mono.len().min(max_in)].to_vec()],
        sample_rate: mono.sample_rate,
    };
    let at_rate = crate::wav::resample_pcm(&mono, config.sampling_rate)?;
    Ok(raw_chroma(config, &at_rate.channels[0])
        .iter()
        .map(|f| one_hot(argmax_with_margin(f).0))
        .collect())
}

/// A note of a melody: MIDI pitch from `start_s` (inclusive) to `end_s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Note {
    pub start_s: f64,
    pub end_s: f64,
    pub pitch: u8,
}

/// Refuses notes with a non-finite or empty span, or a pitch past MIDI's 127.
pub fn check_notes(notes: &[Note]) -> Result<()> {
    if let Some(bad) = notes
        .iter()
        .find(|n| !(n.start_s.is_finite() && n.end_s.is_finite() && n.end_s > n.start_s))
    {
        return Err(Error::InvalidRequest(format!(
            "melody note {bad:?} must end after it starts"
        )));
    }
    if let Some(bad) = notes.iter().find(|n| n.pitch > 127) {
        return Err(Error::InvalidRequest(format!(
            "melody note pitch {} is outside MIDI's 0..=127",
            bad.pitch
        )));
    }
    Ok(())
}

/// One-hot chroma of `frames` frames from notes: each frame, centred at
/// `frame * hop / rate` seconds as the audio extractor's are, takes the pitch
/// class of the note sounding there that started last (the highest of those that
/// started together), as a rendered melody's loudest new note would; a frame with
/// no note takes class 0, as silence does from audio. Notes with a non-finite or
/// empty span are refused.
pub fn chroma_from_notes(config: &ChromaConfig, notes: &[Note], frames: usize) -> Result<Chroma> {
    notes_chroma(config, notes, None, 0.0, frames)
}

/// [`chroma_from_notes`] of a melody `loop_s` seconds long played in a loop,
/// from `offset_s` seconds on: what a window that starts later in a long take
/// is conditioned on. With offset 0 and frames within the loop it is
/// [`chroma_from_notes`].
pub fn chroma_from_looped_notes(
    config: &ChromaConfig,
    notes: &[Note],
    loop_s: f64,
    offset_s: f64,
    frames: usize,
) -> Result<Chroma> {
    if !(loop_s.is_finite() && loop_s > 0.0 && offset_s.is_finite()) {
        return Err(Error::InvalidRequest(format!(
            "a looped melody needs a length over 0 s and a finite offset (got {loop_s} s from {offset_s} s)"
        )));
    }
    notes_chroma(config, notes, Some(loop_s), offset_s, frames)
}

fn notes_chroma(
    config: &ChromaConfig,
    notes: &[Note],
    loop_s: Option<f64>,
    offset_s: f64,
    frames: usize,
) -> Result<Chroma> {
    config.check()?;
    check_notes(notes)?;
    let period = config.frame_period_s();
    Ok((0..frames)
        .map(|t| {
            let mut time = offset_s + t as f64 * period;
            if let Some(len) = loop_s {
                // A frame exactly at the loop's end is its last, not the start.
                if offset_s > 0.0 || time > len {
                    time = time.rem_euclid(len);
                }
            }
            let class = notes
                .iter()
                .filter(|n| n.start_s <= time && time < n.end_s)
                .max_by(|a, b| a.start_s.total_cmp(&b.start_s).then(a.pitch.cmp(&b.pitch)))
                .map(|n| n.pitch as usize % NUM_CHROMA)
                .unwrap_or(0);
            one_hot(class)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_one_plus_samples_over_hop() {
        let c = ChromaConfig::default();
        // 30 s gives the published checkpoints' chroma_length of 235.
        assert_eq!(c.frames_for(960_000), 235);
        assert_eq!(c.frames_for(10_000_000), 235);
        // Shorter than n_fft: padded to n_fft.
        assert_eq!(c.frames_for(100), 5);
        let silence = raw_chroma(&c, &vec![0.0; 40_000]);
        assert_eq!(silence.len(), 1 + 40_000 / 4096);
        assert!(silence.iter().all(|f| argmax_with_margin(f).0 == 0));
    }

    #[test]
    fn filter_bank_columns_peak_at_their_pitch_class() {
        let c = ChromaConfig::default();
        let bank = filter_bank(c.sampling_rate, c.n_fft);
        let cols = c.n_fft / 2 + 1;
        // The bin nearest 440 Hz (A) and 261.6 Hz (C).
        for (hz, class) in [(440.0, 9), (261.63, 0), (392.0, 7)] {
            let j = (hz * c.n_fft as f64 / c.sampling_rate as f64).round() as usize;
            let col: Vec<f64> = (0..12).map(|r| bank[r * cols + j]).collect();
            let best = (0..12).max_by(|&a, &b| col[a].total_cmp(&col[b])).unwrap();
            assert_eq!(best, class, "{hz} Hz: {col:?}");
        }
    }

    #[test]
    fn a_sine_takes_its_pitch_class() {
        let c = ChromaConfig::default();
        for pitch in [57u8, 60, 64, 69, 71] {
            let hz = 440.0 * 2f64.powf((pitch as f64 - 69.0) / 12.0);
            let wav: Vec<f32> = (0..64_000)
                .map(|i| {
                    (0.5 * (2.0 * std::f64::consts::PI * hz * i as f64 / 32_000.0).sin()) as f32
                })
                .collect();
            let chroma = chroma_from_audio(&c, &Pcm::mono(wav, 32_000)).unwrap();
            assert!(
                classes(&chroma).iter().all(|&k| k == pitch as usize % 12),
                "pitch {pitch}: {:?}",
                classes(&chroma)
            );
        }
    }

    #[test]
    fn notes_pick_the_latest_started_then_the_highest() {
        let c = ChromaConfig::default();
        let p = c.frame_period_s();
        let notes = [
            Note {
                start_s: 0.0,
                end_s: 10.0 * p,
                pitch: 60,
            },
            Note {
                start_s: 2.0 * p,
                end_s: 4.0 * p,
                pitch: 64,
            },
            Note {
                start_s: 2.0 * p,
                end_s: 3.0 * p,
                pitch: 67,
            },
        ];
        let k = classes(&chroma_from_notes(&c, &notes, 12).unwrap());
        assert_eq!(k, vec![0, 0, 7, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
        let bad = Note {
            start_s: 1.0,
            end_s: 1.0,
            pitch: 60,
        };
        assert!(chroma_from_notes(&c, &[bad], 4).is_err());
        let bad = Note {
            start_s: 0.0,
            end_s: 1.0,
            pitch: 128,
        };
        assert!(chroma_from_notes(&c, &[bad], 4).is_err());
    }
    /// A sine rendering of notes, with 5 ms fades.
    fn render(notes: &[Note], seconds: f64, rate: u32) -> Vec<f32> {
        let n = (seconds * rate as f64) as usize;
        let mut out = vec![0.0f32; n];
        let fade = 0.005 * rate as f64;
        for note in notes {
            let hz = 440.0 * 2f64.powf((note.pitch as f64 - 69.0) / 12.0);
            let (a, b) = (
                (note.start_s * rate as f64) as usize,
                ((note.end_s * rate as f64) as usize).min(n),
            );
            for (i, o) in out.iter_mut().enumerate().take(b).skip(a) {
                let env = ((i - a) as f64 / fade).min((b - i) as f64 / fade).min(1.0);
                let t = i as f64 / rate as f64;
                *o += (0.3 * env * (2.0 * std::f64::consts::PI * hz * t).sin()) as f32;
            }
        }
        out
    }

    #[test]
    fn a_rendered_melody_and_its_notes_agree_away_from_note_boundaries() {
        let c = ChromaConfig::default();
        // A phrase with a rest, repeated and legato notes, over two octaves.
        let spans = [
            (0.0, 0.6, 60),
            (0.6, 1.1, 62),
            (1.1, 1.9, 64),
            (2.3, 3.0, 67),
            (3.0, 3.4, 67),
            (3.4, 4.6, 72),
            (4.6, 5.2, 71),
            (5.2, 6.5, 57),
            (6.5, 7.2, 53),
        ];
        let notes: Vec<Note> = spans
            .iter()
            .map(|&(start_s, end_s, pitch)| Note {
                start_s,
                end_s,
                pitch,
            })
            .collect();
        let mut edges: Vec<f64> = notes.iter().flat_map(|n| [n.start_s, n.end_s]).collect();
        edges.sort_by(f64::total_cmp);
        edges.dedup();
        let seconds = 8.0;
        for rate in [32_000u32, 44_100] {
            let audio =
                chroma_from_audio(&c, &Pcm::mono(render(&notes, seconds, rate), rate)).unwrap();
            let from_notes = chroma_from_notes(&c, &notes, audio.len()).unwrap();
            assert_eq!(audio.len(), c.frames_for((seconds * 32_000.0) as usize));
            let (a, n) = (classes(&audio), classes(&from_notes));
            // A frame's window spans n_fft / 2 samples either side of its centre.
            let reach = (c.n_fft / 2) as f64 / c.sampling_rate as f64;
            let near_edge = |t: usize| {
                let time = t as f64 * c.frame_period_s();
                edges.iter().any(|&e| (time - e).abs() < reach)
            };
            let mut mismatched = 0;
            let mut near = 0;
            for (t, (x, y)) in a.iter().zip(&n).enumerate() {
                if near_edge(t) {
                    near += 1;
                    mismatched += usize::from(x != y);
                } else {
                    assert_eq!(x, y, "{rate} Hz, frame {t} away from any note edge");
                }
            }
            println!(
                "{rate} Hz: {} frames, {near} within n_fft/2 of a note edge, {mismatched} of those differ",
                a.len()
            );
            // Each edge reaches at most n_fft / hop frames; at most half of the
            // frames at an edge see more of the other side.
            assert!(near <= edges.len() * c.n_fft / c.hop_length);
            assert!(
                mismatched * 2 <= near + edges.len(),
                "{mismatched} of {near}"
            );
        }
    }
}

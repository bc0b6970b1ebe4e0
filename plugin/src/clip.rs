//! What the audio thread plays: a take's PCM at the host rate, and the loop
//! maths that turn a generation into a take that loops without a click.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::take::TakeKey;

/// A take at the host's rate while it is being generated: allocated once for
/// its whole length, written ahead by the inference thread, read behind by the
/// audio thread up to [`GrowingClip::ready`]. Samples are f32 bits in atomics,
/// so writer and reader never race.
#[derive(Debug)]
pub struct GrowingClip {
    pub take: TakeKey,
    samples: Box<[AtomicU32]>,
    pub channels: usize,
    /// Frames written.
    ready: AtomicUsize,
    /// Frames to have before playing starts, so it never runs dry.
    start_at: AtomicUsize,
    /// No more frames will come (finished, failed or cancelled).
    done: AtomicBool,
}

impl GrowingClip {
    /// Room for `frames` frames. Allocates: never on the audio thread.
    pub fn new(take: TakeKey, frames: usize, channels: usize) -> Arc<Self> {
        let channels = channels.clamp(1, 2);
        Arc::new(Self {
            take,
            samples: (0..frames * channels).map(|_| AtomicU32::new(0)).collect(),
            channels,
            ready: AtomicUsize::new(0),
            start_at: AtomicUsize::new(usize::MAX),
            done: AtomicBool::new(false),
        })
    }

    /// Its length in frames when complete.
    pub fn capacity(&self) -> usize {
        self.samples.len() / self.channels
    }

    pub fn ready(&self) -> usize {
        self.ready.load(Ordering::Acquire)
    }

    pub fn start_at(&self) -> usize {
        self.start_at.load(Ordering::Relaxed)
    }

    pub fn set_start_at(&self, frames: usize) {
        self.start_at.store(frames, Ordering::Relaxed);
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Marks the end: nothing more will be written.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Release);
    }

    /// Appends interleaved frames (the writer's side); what does not fit is
    /// dropped. Returns the frames written.
    pub fn write(&self, frames: &[f32]) -> usize {
        let at = self.ready.load(Ordering::Relaxed);
        let n = (frames.len() / self.channels).min(self.capacity() - at);
        for (i, s) in frames[..n * self.channels].iter().enumerate() {
            self.samples[at * self.channels + i].store(s.to_bits(), Ordering::Relaxed);
        }
        self.ready.store(at + n, Ordering::Release);
        n
    }

    /// The left and right sample of frame `i` (below [`GrowingClip::ready`]).
    #[inline]
    pub fn frame(&self, i: usize) -> (f32, f32) {
        let s = |j: usize| f32::from_bits(self.samples[j].load(Ordering::Relaxed));
        if self.channels == 2 {
            (s(2 * i), s(2 * i + 1))
        } else {
            let v = s(i);
            (v, v)
        }
    }
}

/// Resamples a stream of interleaved pieces by linear interpolation, keeping
/// its place between pieces (the preview of a take being made; the finished
/// take is resampled properly).
#[derive(Debug)]
pub struct LinearResampler {
    ratio: f64,
    channels: usize,
    /// Position of the next output frame, in input frames from `prev`.
    pos: f64,
    /// The last input frame of the previous piece.
    prev: Option<Vec<f32>>,
}

impl LinearResampler {
    pub fn new(from: u32, to: u32, channels: usize) -> Self {
        Self {
            ratio: from as f64 / to.max(1) as f64,
            channels: channels.max(1),
            pos: 0.0,
            prev: None,
        }
    }

    /// The output frames this piece completes, interleaved.
    pub fn process(&mut self, piece: &[f32]) -> Vec<f32> {
        let ch = self.channels;
        let mut input: Vec<f32> = self.prev.take().unwrap_or_default();
        input.extend_from_slice(piece);
        let frames = input.len() / ch;
        let mut out = Vec::new();
        while frames >= 2 && self.pos + 1.0 < frames as f64 {
            let i = self.pos.floor() as usize;
            let t = (self.pos - i as f64) as f32;
            for c in 0..ch {
                let a = input[i * ch + c];
                let b = input[(i + 1) * ch + c];
                out.push(a + (b - a) * t);
            }
            self.pos += self.ratio;
        }
        // Keep the last frame; positions count from it next time.
        if frames >= 1 {
            self.pos -= (frames - 1) as f64;
            self.prev = Some(input[(frames - 1) * ch..].to_vec());
        }
        out
    }
}

/// A take at the host's sample rate, ready for the audio thread. Immutable once
/// built; shared by `Arc` and always dropped off the audio thread.
#[derive(Debug)]
pub struct Clip {
    /// The take this clip plays.
    pub take: TakeKey,
    /// PCM at `sample_rate`, interleaved when `channels` is 2.
    pub samples: Vec<f32>,
    /// 1 (mono, played on both sides) or 2 (stereo).
    pub channels: usize,
    pub sample_rate: u32,
    /// Length in beats at the tempo it was made for (bar-length takes only):
    /// the loop locks to the host's bars while the host runs at that tempo.
    pub beats: Option<f64>,
    /// The tempo the take was made for, if the host gave one.
    pub tempo: Option<f64>,
}

impl Clip {
    pub fn new(
        take: TakeKey,
        samples: Vec<f32>,
        channels: usize,
        sample_rate: u32,
        beats: Option<f64>,
        tempo: Option<f64>,
    ) -> Arc<Self> {
        Arc::new(Self {
            take,
            samples,
            channels: channels.clamp(1, 2),
            sample_rate,
            beats,
            tempo,
        })
    }

    /// Length in frames (samples per channel).
    pub fn len(&self) -> usize {
        self.samples.len() / self.channels
    }

    /// The left and right sample of frame `i` (a mono clip's on both sides).
    #[inline]
    pub fn frame(&self, i: usize) -> (f32, f32) {
        if self.channels == 2 {
            (self.samples[2 * i], self.samples[2 * i + 1])
        } else {
            let s = self.samples[i];
            (s, s)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Crossfade at a loop point, in seconds: long enough to hide the seam, short
/// enough not to smear a downbeat.
pub const LOOP_CROSSFADE_S: f64 = 0.010;

/// Makes `len` samples that loop seamlessly from `audio`, which should hold at
/// least `len + fade` samples: the `fade` samples after the cut are crossfaded
/// (equal power) into the start, so the sample after the last is, in effect, the
/// one that followed it in the generation. With fewer than `len + fade` samples
/// the fade shortens; with none to spare the seam gets a short fade out and in.
pub fn make_loop(audio: &[f32], len: usize, fade: usize) -> Vec<f32> {
    let len = len.min(audio.len());
    let mut out = audio[..len].to_vec();
    let spare = audio.len() - len;
    let fade = fade.min(spare).min(len);
    for i in 0..fade {
        let t = (i as f64 + 0.5) / fade as f64;
        let (fade_in, fade_out) = equal_power(t);
        out[i] = (audio[i] as f64 * fade_in + audio[len + i] as f64 * fade_out) as f32;
    }
    if fade == 0 && len > 0 {
        // Nothing after the cut to blend in: fade the seam itself (2 ms each side).
        let edge = (len / 4).min(64);
        for i in 0..edge {
            let g = (i as f32 + 0.5) / edge as f32;
            out[i] *= g;
            out[len - 1 - i] *= g;
        }
    }
    out
}

/// [`make_loop`] of interleaved audio, each channel on its own; `len` and `fade`
/// in frames.
pub fn make_loop_interleaved(audio: &[f32], channels: usize, len: usize, fade: usize) -> Vec<f32> {
    if channels <= 1 {
        return make_loop(audio, len, fade);
    }
    let looped: Vec<Vec<f32>> = (0..channels)
        .map(|c| {
            let side: Vec<f32> = audio.iter().skip(c).step_by(channels).copied().collect();
            make_loop(&side, len, fade)
        })
        .collect();
    interleave(&looped)
}

/// Planar channels to one interleaved buffer (the shortest sets the length).
pub fn interleave(channels: &[Vec<f32>]) -> Vec<f32> {
    let frames = channels.iter().map(Vec::len).min().unwrap_or(0);
    let mut out = Vec::with_capacity(frames * channels.len());
    for i in 0..frames {
        for c in channels {
            out.push(c[i]);
        }
    }
    out
}

/// One channel of interleaved audio.
pub fn channel(audio: &[f32], channels: usize, which: usize) -> Vec<f32> {
    audio
        .iter()
        .skip(which)
        .step_by(channels.max(1))
        .copied()
        .collect()
}

fn equal_power(t: f64) -> (f64, f64) {
    let a = t * std::f64::consts::FRAC_PI_2;
    (a.sin(), a.cos())
}

/// Seconds in `bars` bars at `tempo` beats per minute in `numerator/denominator`
/// time (a beat is a quarter note, as hosts count tempo).
pub fn bars_to_seconds(bars: f64, tempo: f64, numerator: u32, denominator: u32) -> f64 {
    bars * beats_per_bar(numerator, denominator) * 60.0 / tempo
}

/// Quarter-note beats in one bar.
pub fn beats_per_bar(numerator: u32, denominator: u32) -> f64 {
    numerator as f64 * 4.0 / denominator.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_bars_at_90_bpm_is_10_667_s() {
        let s = bars_to_seconds(4.0, 90.0, 4, 4);
        assert!((s - 10.666_666).abs() < 1e-5, "{s}");
        assert!((bars_to_seconds(2.0, 120.0, 6, 8) - 3.0).abs() < 1e-12);
    }

    #[test]
    fn loop_seam_is_continuous() {
        // A sine whose period does not divide the cut: a plain cut would jump.
        let n = 1000;
        let audio: Vec<f32> = (0..n + 100).map(|i| (i as f32 * 0.0731).sin()).collect();
        let plain_jump = (audio[0] - audio[n - 1]).abs();
        let looped = make_loop(&audio, n, 100);
        assert_eq!(looped.len(), n);
        let seam_jump = (looped[0] - looped[n - 1]).abs();
        // At the seam the loop continues as the generation did.
        let natural_step = (audio[n] - audio[n - 1]).abs();
        assert!(plain_jump > 0.5, "{plain_jump}");
        assert!(
            seam_jump <= natural_step + 0.02,
            "{seam_jump} vs {natural_step}"
        );
        // Away from the fade the audio is untouched.
        assert_eq!(&looped[100..], &audio[100..n]);
    }

    #[test]
    fn stereo_loops_cut_each_side_alike() {
        let left: Vec<f32> = (0..600).map(|i| (i as f32 * 0.05).sin()).collect();
        let right: Vec<f32> = left.iter().map(|s| -0.5 * s).collect();
        let both = interleave(&[left.clone(), right.clone()]);
        let looped = make_loop_interleaved(&both, 2, 500, 50);
        assert_eq!(looped.len(), 1000);
        assert_eq!(channel(&looped, 2, 0), make_loop(&left, 500, 50));
        assert_eq!(channel(&looped, 2, 1), make_loop(&right, 500, 50));
        let clip = Clip::new(TakeKey(1), looped, 2, 32_000, None, None);
        assert_eq!(clip.len(), 500);
        let (l, r) = clip.frame(100);
        assert_eq!((l, r), (left[100], right[100]));
    }

    #[test]
    fn a_growing_clip_is_read_up_to_what_is_written() {
        let g = GrowingClip::new(TakeKey(1), 4, 2);
        assert_eq!((g.capacity(), g.ready()), (4, 0));
        assert_eq!(g.write(&[1.0, -1.0, 2.0, -2.0]), 2);
        assert_eq!((g.ready(), g.frame(1)), (2, (2.0, -2.0)));
        assert_eq!(
            g.write(&[3.0, -3.0, 4.0, -4.0, 5.0, -5.0]),
            2,
            "no room past the end"
        );
        assert!(!g.is_done());
        g.finish();
        assert!(g.is_done());
    }

    #[test]
    fn linear_resampling_in_pieces_is_one_continuous_line() {
        // A ramp at 32 kHz to 48 kHz in uneven pieces: still a ramp.
        let input: Vec<f32> = (0..3200).map(|i| i as f32).collect();
        let mut r = LinearResampler::new(32_000, 48_000, 1);
        let mut out = Vec::new();
        for piece in input.chunks(777) {
            out.extend(r.process(piece));
        }
        assert!((out.len() as i64 - 4800).abs() <= 2, "{}", out.len());
        for (i, v) in out.iter().enumerate() {
            assert!((v - i as f32 * 32.0 / 48.0).abs() < 1e-3, "{i}: {v}");
        }
    }

    #[test]
    fn loop_without_spare_audio_fades_the_seam() {
        let audio = vec![1.0f32; 500];
        let looped = make_loop(&audio, 500, 100);
        assert!(looped[0].abs() < 0.02 && looped[499].abs() < 0.02);
        assert_eq!(looped[250], 1.0);
    }
}

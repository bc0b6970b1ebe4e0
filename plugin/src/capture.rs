//! Recording on the audio thread: N bars of the plugin's audio input (a
//! capture), or the MIDI notes played into it (a melody), starting at the next
//! bar line while the host plays.
//!
//! The buffer is allocated off the audio thread when the recording is armed,
//! for the length at the tempo of that moment with room for the tempo to halve
//! before the bar line; the audio thread only writes into it, and hands it back
//! on the hand-off's capture queue when it is full (or cancelled), for the I/O
//! worker to make a take of. The length is fixed at the bar line where the
//! recording starts, from the tempo there: a tempo change during a recording
//! does not change how many samples it takes (the take records the starting
//! tempo).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::clip::beats_per_bar;
use crate::player::TransportView;
use crate::request::{FALLBACK_TEMPO, MAX_SECONDS};
use crate::session::Length;

/// Notes a melody recording holds at most.
pub const MAX_NOTES: usize = 1024;

/// What a recording takes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureKind {
    /// The stereo audio input.
    Audio,
    /// The MIDI notes played into the plugin.
    Notes,
}

/// Where a recording stands, for the editor (atomics, written on the audio
/// thread).
#[derive(Debug, Default)]
pub struct CaptureProgress {
    state: AtomicU8,
    frames: AtomicU64,
    target: AtomicU64,
}

/// A recording's state as the editor shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureState {
    Idle,
    /// Waiting for the host to play and reach a bar line.
    Armed,
    Recording {
        frames: u64,
        target: u64,
    },
    /// Handed back; the take is being made.
    Finished,
}

impl CaptureProgress {
    pub fn state(&self) -> CaptureState {
        match self.state.load(Ordering::Acquire) {
            1 => CaptureState::Armed,
            2 => CaptureState::Recording {
                frames: self.frames.load(Ordering::Relaxed),
                target: self.target.load(Ordering::Relaxed),
            },
            3 => CaptureState::Finished,
            _ => CaptureState::Idle,
        }
    }

    pub(crate) fn set(&self, state: CaptureState) {
        let code = match state {
            CaptureState::Idle => 0,
            CaptureState::Armed => 1,
            CaptureState::Recording { frames, target } => {
                self.frames.store(frames, Ordering::Relaxed);
                self.target.store(target, Ordering::Relaxed);
                2
            }
            CaptureState::Finished => 3,
        };
        self.state.store(code, Ordering::Release);
    }
}

/// A note as recorded: frames from the recording's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedNote {
    pub start: u64,
    pub end: u64,
    pub pitch: u8,
}

/// One recording: its buffers (allocated when armed) and what it found.
#[derive(Debug)]
pub struct Capture {
    pub kind: CaptureKind,
    pub length: Length,
    pub sample_rate: u32,
    /// Interleaved stereo input; capacity fixed when armed.
    pub audio: Vec<f32>,
    pub notes: Vec<RecordedNote>,
    /// Start frame of each held note, by pitch.
    held: [Option<u64>; 128],
    /// Frames to record, fixed at the bar line (0 before it).
    pub target: u64,
    /// Frames recorded.
    pub frames: u64,
    /// The host's time where the recording started.
    pub tempo: Option<f64>,
    pub time_signature: (u32, u32),
    pub started: bool,
    /// Frame of the recording at the current block's first sample (negative
    /// before its start).
    block_origin: i64,
    pub cancelled: bool,
    /// Notes past [`MAX_NOTES`] that were dropped.
    pub dropped_notes: usize,
    pub progress: Arc<CaptureProgress>,
}

impl Capture {
    /// A recording of `length` at `sample_rate`, its buffer sized for the
    /// length at `tempo` (or the fallback) with room for the tempo to halve,
    /// capped at 5 minutes. Allocates: never call it on the audio thread.
    pub fn new(
        kind: CaptureKind,
        length: Length,
        sample_rate: u32,
        tempo: Option<f64>,
        time_signature: Option<(u32, u32)>,
        progress: Arc<CaptureProgress>,
    ) -> Self {
        let (n, d) = time_signature.unwrap_or((4, 4));
        let seconds = seconds_of(length, tempo.unwrap_or(FALLBACK_TEMPO) / 2.0, (n, d));
        let frames = (seconds.min(MAX_SECONDS) * sample_rate as f64).ceil() as usize + 1;
        let audio = match kind {
            CaptureKind::Audio => Vec::with_capacity(frames * 2),
            CaptureKind::Notes => Vec::new(),
        };
        progress.set(CaptureState::Armed);
        Self {
            kind,
            length,
            sample_rate,
            audio,
            notes: Vec::with_capacity(MAX_NOTES),
            held: [None; 128],
            target: 0,
            frames: 0,
            tempo,
            time_signature: (n, d),
            started: false,
            block_origin: i64::MIN,
            cancelled: false,
            dropped_notes: 0,
            progress,
        }
    }

    /// Seconds the recording holds.
    pub fn seconds(&self) -> f64 {
        self.frames as f64 / self.sample_rate.max(1) as f64
    }

    /// Whether it has all its frames.
    pub fn is_done(&self) -> bool {
        self.started && self.frames >= self.target
    }

    /// Records one block: `left` and `right` are the block's input (`None`:
    /// no input, silence is recorded). Starts at the first bar line at or
    /// after the block's start while the host plays. Real-time safe: writes
    /// only into the buffers allocated when armed. Returns whether it is done.
    pub fn record_block(
        &mut self,
        left: Option<&[f32]>,
        right: Option<&[f32]>,
        len: usize,
        transport: &TransportView,
        time_signature: Option<(u32, u32)>,
    ) -> bool {
        if !self.started {
            let Some(offset) = self.start_offset(len, transport, time_signature) else {
                self.block_origin = i64::MIN;
                return false;
            };
            self.start(transport.tempo, time_signature);
            self.block_origin = -(offset as i64);
        } else {
            self.block_origin = self.frames as i64;
        }
        let from = (-self.block_origin).max(0) as usize;
        let left_to_take = self.target.saturating_sub(self.frames) as usize;
        let n = len.saturating_sub(from).min(left_to_take);
        if self.kind == CaptureKind::Audio {
            let room = (self.audio.capacity() - self.audio.len()) / 2;
            let n = n.min(room);
            let sample = |side: Option<&[f32]>, i: usize| {
                let s = side.and_then(|c| c.get(i).copied()).unwrap_or(0.0);
                // A disconnected input may hold anything: only numbers count.
                if s.is_finite() {
                    s
                } else {
                    0.0
                }
            };
            for i in from..from + n {
                let l = sample(left, i);
                let r = sample(right.or(left), i);
                self.audio.push(l);
                self.audio.push(r);
            }
            if n < len.saturating_sub(from).min(left_to_take) {
                // The tempo fell below half before the bar line: the buffer
                // is full, so the recording ends with what it holds.
                self.target = self.frames + n as u64;
            }
        }
        self.frames += n as u64;
        self.progress.set(CaptureState::Recording {
            frames: self.frames,
            target: self.target,
        });
        if self.is_done() {
            self.close_held_notes();
        }
        self.is_done()
    }

    /// A note event `at` frames into the current block (call after
    /// [`Capture::record_block`] for the block). Real-time safe.
    pub fn note(&mut self, at: usize, pitch: u8, on: bool) {
        if self.kind != CaptureKind::Notes || self.block_origin == i64::MIN {
            return;
        }
        let frame = self.block_origin + at as i64;
        if frame < 0 || frame as u64 >= self.target {
            return;
        }
        let frame = frame as u64;
        let slot = &mut self.held[pitch as usize & 127];
        if on {
            if slot.is_none() {
                *slot = Some(frame);
            }
        } else if let Some(start) = slot.take() {
            self.push_note(start, frame, pitch);
        }
    }

    fn close_held_notes(&mut self) {
        for pitch in 0..128u8 {
            if let Some(start) = self.held[pitch as usize].take() {
                self.push_note(start, self.target, pitch);
            }
        }
    }

    fn push_note(&mut self, start: u64, end: u64, pitch: u8) {
        if end <= start {
            return;
        }
        if self.notes.len() < self.notes.capacity() {
            self.notes.push(RecordedNote { start, end, pitch });
        } else {
            self.dropped_notes += 1;
        }
    }

    /// Where in this block the recording starts: the first bar line at or
    /// after its first sample, while the host plays. A host that gives no song
    /// position starts it at once.
    fn start_offset(
        &self,
        len: usize,
        t: &TransportView,
        time_signature: Option<(u32, u32)>,
    ) -> Option<usize> {
        if !t.playing {
            return None;
        }
        let (Some(pos), Some(tempo)) = (t.pos_beats, t.tempo.filter(|t| *t > 0.0)) else {
            return Some(0);
        };
        let (n, d) = time_signature.unwrap_or(self.time_signature);
        let bar = beats_per_bar(n, d);
        // Within a thousandth of a sample of a bar line counts as on it.
        let eps = 1e-3 * tempo / 60.0 / self.sample_rate as f64;
        let next = ((pos - eps) / bar).ceil() * bar;
        let offset = ((next - pos).max(0.0) * 60.0 / tempo * self.sample_rate as f64).round();
        (offset < len as f64).then_some(offset as usize)
    }

    fn start(&mut self, tempo: Option<f64>, time_signature: Option<(u32, u32)>) {
        self.started = true;
        if let Some(t) = tempo.filter(|t| *t > 0.0) {
            self.tempo = Some(t);
        }
        if let Some(ts) = time_signature {
            self.time_signature = ts;
        }
        let seconds = seconds_of(
            self.length,
            self.tempo.unwrap_or(FALLBACK_TEMPO),
            self.time_signature,
        );
        self.target = (seconds.min(MAX_SECONDS) * self.sample_rate as f64).round() as u64;
    }
}

/// Seconds in a length at a tempo and time signature.
fn seconds_of(length: Length, tempo: f64, (n, d): (u32, u32)) -> f64 {
    match length {
        Length::Seconds(s) => s,
        Length::Bars(b) => crate::clip::bars_to_seconds(b, tempo, n, d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn playing_at(beats: f64) -> TransportView {
        TransportView {
            playing: true,
            tempo: Some(120.0),
            pos_beats: Some(beats),
            pos_seconds: Some(beats * 0.5),
        }
    }

    fn capture(kind: CaptureKind, bars: f64) -> Capture {
        Capture::new(
            kind,
            Length::Bars(bars),
            1000,
            Some(120.0),
            Some((4, 4)),
            Arc::default(),
        )
    }

    #[test]
    fn starts_at_the_next_bar_line_and_takes_exactly_the_bars() {
        // 1 bar at 120 bpm in 4/4 = 2 s = 2000 frames at 1 kHz.
        let mut c = capture(CaptureKind::Audio, 1.0);
        let input: Vec<f32> = (0..100_000).map(|i| i as f32).collect();
        let stopped = TransportView::default();
        assert!(!c.record_block(Some(&input[..64]), None, 64, &stopped, None));
        assert_eq!(c.progress.state(), CaptureState::Armed);
        // Beat 3.5 of bar 1: the bar line (beat 4) is 0.5 beats = 250 frames on.
        let mut beats = 3.5;
        let mut pos = 0usize;
        let mut done = false;
        while !done {
            let block = 100;
            let slice = &input[pos..pos + block];
            done = c.record_block(Some(slice), Some(slice), block, &playing_at(beats), None);
            pos += block;
            beats += block as f64 / 1000.0 * 2.0;
        }
        assert_eq!((c.frames, c.target), (2000, 2000));
        assert_eq!(c.audio.len(), 4000);
        // The first sample is the input's at the bar line: frame 250.
        assert_eq!(c.audio[0], 250.0);
        assert_eq!(c.audio[3998], 2249.0);
        assert_eq!(c.tempo, Some(120.0));
    }

    #[test]
    fn no_input_records_silence_and_notes_are_timed_from_the_bar_line() {
        let mut c = capture(CaptureKind::Audio, 0.5);
        assert!(!c.record_block(None, None, 600, &playing_at(0.0), None));
        assert!(c.record_block(None, None, 600, &playing_at(1.2), None));
        assert!(c.audio.iter().all(|s| *s == 0.0));
        assert_eq!(c.audio.len(), 2000);

        let mut m = capture(CaptureKind::Notes, 1.0);
        // Starts mid-block: beat 3.9 -> bar line 50 frames in.
        m.record_block(None, None, 100, &playing_at(3.9), None);
        m.note(10, 60, true); // before the start: ignored
        m.note(60, 64, true);
        m.record_block(None, None, 1000, &playing_at(4.1), None);
        m.note(500, 64, false);
        m.note(600, 67, true); // still held at the end
        m.record_block(None, None, 1000, &playing_at(6.1), None);
        assert!(m.is_done());
        assert_eq!(
            m.notes,
            vec![
                RecordedNote {
                    start: 10,
                    end: 550,
                    pitch: 64
                },
                RecordedNote {
                    start: 650,
                    end: 2000,
                    pitch: 67
                }
            ]
        );
    }
}

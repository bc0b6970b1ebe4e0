//! The audio thread's player: preview, transport-synced loop and MIDI-triggered
//! playback of clips, with short fades so nothing clicks.
//!
//! Everything here runs inside `process()`: no allocation, no free, no lock.
//! Clips arrive as `Arc`s on a wait-free queue and every `Arc` the player lets go
//! of goes back on a return queue, so the last reference is never dropped here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nice_plug::prelude::Enum;

use crate::capture::{Capture, CaptureState};
use crate::clip::{Clip, GrowingClip};
use crate::handoff::{AudioCommand, PlayerEnd};
use crate::take::TakeKey;

/// How the selected take plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum PlayMode {
    /// A note-on plays the selected take from its start; note-off fades it out.
    #[id = "midi"]
    #[name = "MIDI"]
    Midi,
    /// The selected take loops, aligned to the host's song position while the
    /// host plays, and from its start while it is stopped.
    #[id = "loop"]
    #[name = "Loop"]
    Loop,
}

/// The host transport as the player needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TransportView {
    pub playing: bool,
    pub tempo: Option<f64>,
    pub pos_beats: Option<f64>,
    pub pos_seconds: Option<f64>,
}

/// Fade at every start and stop, in seconds.
const FADE_S: f32 = 0.005;
/// Fade after a MIDI note-off.
const RELEASE_S: f32 = 0.030;
/// A loop that is this many samples off the host's position is moved silently;
/// further off (a seek, a host loop) it is crossfaded to the new position.
const SNAP_SAMPLES: usize = 2;
/// Clips waiting for room on the return queue.
const PENDING: usize = 16;

#[derive(Default)]
struct Voice {
    clip: Option<Arc<Clip>>,
    pos: usize,
    gain: f32,
    target: f32,
    step: f32,
    looping: bool,
}

impl Voice {
    fn active(&self) -> bool {
        self.clip.is_some()
    }

    fn plays(&self, clip: &Arc<Clip>) -> bool {
        self.clip.as_ref().is_some_and(|c| Arc::ptr_eq(c, clip))
    }

    /// Adds `left.len()` frames into `left` and `right` (a mono clip sounds on
    /// both; with no `right`, the sides are mixed into `left`). Returns the clip
    /// once the voice has finished (faded out or reached the end of a one-shot).
    fn render(
        &mut self,
        left: &mut [f32],
        mut right: Option<&mut [f32]>,
        end_fade: usize,
    ) -> Option<Arc<Clip>> {
        let clip = self.clip.as_ref()?;
        let len = clip.len();
        let mut finished = len == 0;
        for (i, o) in left.iter_mut().enumerate() {
            if finished {
                break;
            }
            if self.pos >= len {
                if self.looping {
                    self.pos = 0;
                } else {
                    finished = true;
                    break;
                }
            }
            if self.gain != self.target {
                if self.gain < self.target {
                    self.gain = (self.gain + self.step).min(self.target);
                } else {
                    self.gain = (self.gain - self.step).max(self.target);
                }
            }
            let mut g = self.gain;
            if !self.looping {
                // A one-shot fades over its last samples instead of stopping dead.
                let left = len - self.pos;
                if left < end_fade {
                    g *= left as f32 / end_fade as f32;
                }
            }
            let (l, r) = clip.frame(self.pos);
            match right.as_deref_mut() {
                Some(right) => {
                    *o += l * g;
                    right[i] += r * g;
                }
                None => *o += 0.5 * (l + r) * g,
            }
            self.pos += 1;
            if self.target == 0.0 && self.gain == 0.0 {
                finished = true;
            }
        }
        if finished {
            self.gain = 0.0;
            self.clip.take()
        } else {
            None
        }
    }
}

/// Plays clips on the audio thread. Built off the audio thread with its queues;
/// `process` then only pops, renders and pushes.
pub struct ClipPlayer {
    queues: PlayerEnd,
    pending: [Option<Arc<Clip>>; PENDING],
    selected: Option<Arc<Clip>>,
    main: Voice,
    tail: Voice,
    preview: Voice,
    preview_tail: Voice,
    sample_rate: f32,
    fade_step: f32,
    release_step: f32,
    fade_len: usize,
    was_playing: bool,
    midi_note: Option<u8>,
    /// The armed or running recording.
    capture: Option<Box<Capture>>,
    /// A finished recording the capture queue had no room for yet.
    capture_out: Option<Box<Capture>>,
    /// A take playing while it is made.
    growing: GrowingVoice,
    /// A growing clip the queue had no room for yet.
    growing_out: Option<Arc<GrowingClip>>,
}

/// Plays a [`GrowingClip`]: waits until it holds enough to never run dry,
/// then plays it through, holding (silent) should it ever catch up.
#[derive(Default)]
struct GrowingVoice {
    clip: Option<Arc<GrowingClip>>,
    pos: usize,
    started: bool,
    gain: f32,
    /// Fading out, to stop.
    stopping: bool,
}

impl ClipPlayer {
    pub fn new(queues: PlayerEnd) -> Self {
        let mut player = Self {
            queues,
            pending: Default::default(),
            selected: None,
            main: Voice::default(),
            tail: Voice::default(),
            preview: Voice::default(),
            preview_tail: Voice::default(),
            sample_rate: 48_000.0,
            fade_step: 0.0,
            release_step: 0.0,
            fade_len: 1,
            was_playing: false,
            midi_note: None,
            capture: None,
            capture_out: None,
            growing: GrowingVoice::default(),
            growing_out: None,
        };
        player.set_sample_rate(48_000.0);
        player
    }

    /// Called from `activate` (never from `process`).
    pub fn set_sample_rate(&mut self, sample_rate: f32) {
        self.sample_rate = sample_rate.max(1.0);
        self.fade_len = ((FADE_S * self.sample_rate) as usize).max(1);
        self.fade_step = 1.0 / self.fade_len as f32;
        self.release_step = 1.0 / (RELEASE_S * self.sample_rate).max(1.0);
    }

    /// Silences every voice at once (host `reset`). Real-time safe.
    pub fn reset(&mut self) {
        for v in [
            &mut self.main,
            &mut self.tail,
            &mut self.preview,
            &mut self.preview_tail,
        ] {
            if let Some(c) = v.clip.take() {
                Self::release_into(&mut self.queues, &mut self.pending, c);
            }
            v.gain = 0.0;
        }
        self.midi_note = None;
        self.was_playing = false;
    }

    /// Records this block's input into the armed recording (see
    /// [`Capture::record_block`]); call once per block, before rendering
    /// overwrites the buffer. Real-time safe.
    pub fn record(
        &mut self,
        left: Option<&[f32]>,
        right: Option<&[f32]>,
        len: usize,
        transport: &TransportView,
        time_signature: Option<(u32, u32)>,
    ) {
        if let Some(out) = self.capture_out.take() {
            self.hand_back(out);
        }
        let Some(c) = self.capture.as_mut() else {
            return;
        };
        if c.record_block(left, right, len, transport, time_signature) {
            let done = self.capture.take().expect("recording above");
            done.progress.set(CaptureState::Finished);
            self.hand_back(done);
        }
    }

    /// A note event at `at` frames into this block, for a melody recording.
    pub fn record_note(&mut self, at: usize, pitch: u8, on: bool) {
        if let Some(c) = self.capture.as_mut() {
            c.note(at, pitch, on);
        }
    }

    /// Takes the recording away (from `activate`, never from `process`).
    pub fn take_capture(&mut self) -> Option<Box<Capture>> {
        self.capture_out.take().or_else(|| self.capture.take())
    }

    fn give_back_growing(&mut self, g: Arc<GrowingClip>) {
        if let Err(g) = self.queues.give_back_growing(g) {
            if let Some(old) = self.growing_out.replace(g) {
                std::mem::forget(old);
            }
        }
    }

    /// Adds the growing take into `left`/`right` (mixed into `left` alone
    /// when there is no `right`).
    fn render_growing(&mut self, left: &mut [f32], mut right: Option<&mut [f32]>) {
        if let Some(g) = self.growing_out.take() {
            self.give_back_growing(g);
        }
        let step = self.fade_step;
        let v = &mut self.growing;
        let Some(clip) = v.clip.as_ref() else {
            return;
        };
        let ready = clip.ready();
        let done = clip.is_done();
        if !v.started && (ready >= clip.start_at().min(clip.capacity()) || done) && ready > 0 {
            v.started = true;
        }
        let mut finished = false;
        if v.started {
            for (i, o) in left.iter_mut().enumerate() {
                if v.pos >= ready {
                    // Caught up: the rest comes later (or never, when done).
                    finished = done;
                    break;
                }
                v.gain = if v.stopping {
                    (v.gain - step).max(0.0)
                } else {
                    (v.gain + step).min(1.0)
                };
                let (l, r) = clip.frame(v.pos);
                match right.as_deref_mut() {
                    Some(right) => {
                        *o += l * v.gain;
                        right[i] += r * v.gain;
                    }
                    None => *o += 0.5 * (l + r) * v.gain,
                }
                v.pos += 1;
                if v.stopping && v.gain == 0.0 {
                    finished = true;
                    break;
                }
            }
        } else if v.stopping || (done && ready == 0) {
            finished = true;
        }
        if finished {
            if let Some(g) = self.growing.clip.take() {
                self.give_back_growing(g);
            }
        }
    }

    fn hand_back(&mut self, capture: Box<Capture>) {
        if let Err(c) = self.queues.give_back_capture(capture) {
            // Tried again next block; should that slot be taken, the older one
            // is leaked rather than freed here.
            if let Some(old) = self.capture_out.replace(c) {
                std::mem::forget(old);
            }
        }
    }

    /// What is sounding, for the editor's playhead: the take being made if it
    /// plays, else the preview if one plays, else the Loop/MIDI voice.
    pub fn playhead(&self) -> Option<PlayheadPosition> {
        if let Some(g) = self.growing.clip.as_ref().filter(|_| self.growing.started) {
            // The take being made: its waveform shows once it is saved.
            return Some(PlayheadPosition {
                take: g.take,
                pos: self.growing.pos,
                len: g.capacity(),
            });
        }
        let v = if self.preview.active() {
            &self.preview
        } else {
            &self.main
        };
        let c = v.clip.as_ref()?;
        Some(PlayheadPosition {
            take: c.take,
            pos: v.pos.min(c.len()),
            len: c.len(),
        })
    }

    /// Applies queued commands and retries returns. Call once per block first.
    pub fn begin_block(&mut self, mode: PlayMode, transport: &TransportView) {
        self.flush_pending();
        while let Some(cmd) = self.queues.next_command() {
            match cmd {
                AudioCommand::Select(clip) => {
                    if let Some(old) = std::mem::replace(&mut self.selected, clip) {
                        self.release(old);
                    }
                    if mode == PlayMode::Midi && self.main.active() {
                        // The note that was playing belongs to the old take.
                        self.main.target = 0.0;
                        self.main.step = self.fade_step;
                    }
                }
                AudioCommand::Preview(clip) => {
                    self.move_to_tail(true);
                    self.start(true, clip, 0, false);
                    // A preview asked for replaces the take being heard as it is made.
                    self.growing.stopping = self.growing.clip.is_some();
                }
                AudioCommand::Capture(c) => {
                    if let Some(mut old) = self.capture.replace(c) {
                        old.cancelled = true;
                        self.hand_back(old);
                    }
                }
                AudioCommand::PreviewGrowing(g) => {
                    if let Some(old) = self.growing.clip.replace(g) {
                        self.give_back_growing(old);
                    }
                    self.growing.pos = 0;
                    self.growing.started = false;
                    self.growing.gain = 0.0;
                    self.growing.stopping = false;
                }
                AudioCommand::CancelCapture => {
                    if let Some(mut old) = self.capture.take() {
                        old.cancelled = true;
                        self.hand_back(old);
                    }
                }
            }
        }
        match mode {
            PlayMode::Loop => self.sync_loop(transport),
            PlayMode::Midi => {
                if self.main.looping {
                    self.main.target = 0.0;
                    self.main.step = self.fade_step;
                }
            }
        }
        self.was_playing = transport.playing;
    }

    pub fn note_on(&mut self, mode: PlayMode, note: u8) {
        if mode != PlayMode::Midi {
            return;
        }
        if let Some(clip) = self.selected.clone() {
            self.move_to_tail(false);
            self.start(false, clip, 0, false);
            self.midi_note = Some(note);
        }
    }

    /// Fades out the playing note (`None`: whatever note plays).
    pub fn note_off(&mut self, note: Option<u8>) {
        if self.midi_note.is_some()
            && note.is_none_or(|n| self.midi_note == Some(n))
            && !self.main.looping
        {
            self.main.target = 0.0;
            self.main.step = self.release_step;
            self.midi_note = None;
        }
    }

    /// Renders `left.len()` frames into `left` and `right`, overwriting them;
    /// with no `right` (a one-channel output), a mix of both sides into `left`.
    pub fn render(&mut self, left: &mut [f32], mut right: Option<&mut [f32]>) {
        left.fill(0.0);
        if let Some(r) = right.as_deref_mut() {
            debug_assert_eq!(r.len(), left.len());
            r.fill(0.0);
        }
        let end_fade = self.fade_len;
        for i in 0..4 {
            let voice = match i {
                0 => &mut self.main,
                1 => &mut self.tail,
                2 => &mut self.preview,
                _ => &mut self.preview_tail,
            };
            if let Some(done) = voice.render(left, right.as_deref_mut(), end_fade) {
                Self::release_into(&mut self.queues, &mut self.pending, done);
            }
        }
        self.render_growing(left, right);
    }

    fn sync_loop(&mut self, t: &TransportView) {
        let (len, target, continuing) = match self.selected.as_ref() {
            None => {
                if self.main.active() {
                    self.main.target = 0.0;
                    self.main.step = self.fade_step;
                }
                return;
            }
            Some(c) if c.is_empty() => return,
            Some(c) => {
                let target = if t.playing {
                    self.loop_position(c, t)
                } else if self.was_playing || !self.main.plays(c) {
                    Some(0)
                } else {
                    None // stopped: the loop runs on freely from where it is
                };
                let continuing = self.main.plays(c) && self.main.looping && self.main.target != 0.0;
                (c.len(), target, continuing)
            }
        };
        let jump_to = match (continuing, target) {
            (false, t) => Some(t.unwrap_or(0)),
            (true, None) => None,
            (true, Some(idx)) => {
                let off = (self.main.pos % len).abs_diff(idx);
                if off.min(len - off) <= SNAP_SAMPLES {
                    self.main.pos = idx;
                    None
                } else {
                    Some(idx)
                }
            }
        };
        if let (Some(idx), Some(clip)) = (jump_to, self.selected.clone()) {
            self.move_to_tail(false);
            self.start(false, clip, idx, true);
        }
    }

    /// Where in the loop the host's song position falls: by beats when the host
    /// runs at the take's tempo (locked to the bars), else by seconds (the take
    /// plays at its own length).
    fn loop_position(&self, clip: &Clip, t: &TransportView) -> Option<usize> {
        let len = clip.len();
        if let (Some(beats), Some(take_tempo), Some(tempo), Some(pos)) =
            (clip.beats, clip.tempo, t.tempo, t.pos_beats)
        {
            if (take_tempo - tempo).abs() < 1e-6 * tempo && beats > 0.0 {
                let phase = (pos / beats).rem_euclid(1.0);
                return Some((phase * len as f64).round() as usize % len);
            }
        }
        let seconds = t
            .pos_seconds
            .or_else(|| Some(t.pos_beats? * 60.0 / t.tempo?))?;
        let samples = (seconds * self.sample_rate as f64).round();
        Some((samples.rem_euclid(len as f64) as usize).min(len - 1))
    }

    fn start(&mut self, preview: bool, clip: Arc<Clip>, pos: usize, looping: bool) {
        let step = self.fade_step;
        let voice = if preview {
            &mut self.preview
        } else {
            &mut self.main
        };
        if let Some(old) = voice.clip.replace(clip) {
            Self::release_into(&mut self.queues, &mut self.pending, old);
        }
        voice.pos = pos;
        voice.gain = 0.0;
        voice.target = 1.0;
        voice.step = step;
        voice.looping = looping;
    }

    /// Moves a sounding voice to its tail slot to fade out under the next one.
    fn move_to_tail(&mut self, preview: bool) {
        let step = self.fade_step;
        let (voice, tail) = if preview {
            (&mut self.preview, &mut self.preview_tail)
        } else {
            (&mut self.main, &mut self.tail)
        };
        if let Some(old) = tail.clip.take() {
            Self::release_into(&mut self.queues, &mut self.pending, old);
        }
        if voice.active() {
            std::mem::swap(voice, tail);
            tail.target = 0.0;
            tail.step = tail.step.max(step);
        }
    }

    fn release(&mut self, clip: Arc<Clip>) {
        Self::release_into(&mut self.queues, &mut self.pending, clip);
    }

    /// Hands a clip back for dropping elsewhere. Should the return queue and the
    /// pending slots all be full, the clip is leaked rather than freed here.
    fn release_into(
        queues: &mut PlayerEnd,
        pending: &mut [Option<Arc<Clip>>; PENDING],
        clip: Arc<Clip>,
    ) {
        if let Err(clip) = queues.give_back(clip) {
            match pending.iter_mut().find(|p| p.is_none()) {
                Some(slot) => *slot = Some(clip),
                None => std::mem::forget(clip),
            }
        }
    }

    fn flush_pending(&mut self) {
        for slot in self.pending.iter_mut() {
            if let Some(clip) = slot.take() {
                if let Err(clip) = self.queues.give_back(clip) {
                    *slot = Some(clip);
                    break;
                }
            }
        }
    }
}

/// What the audio thread is sounding: a take, the position and the clip's
/// length, in host samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayheadPosition {
    pub take: TakeKey,
    pub pos: usize,
    pub len: usize,
}

/// The sounding position as atomics, written by the audio thread and read by
/// the editor's playhead.
#[derive(Default)]
pub struct Playhead {
    take: AtomicU64,
    pos: AtomicU64,
    len: AtomicU64,
}

impl Playhead {
    /// Real-time safe: stores only.
    pub fn publish(&self, now: Option<PlayheadPosition>) {
        let p = now.unwrap_or(PlayheadPosition {
            take: TakeKey(0),
            pos: 0,
            len: 0,
        });
        self.take.store(p.take.0, Ordering::Relaxed);
        self.pos.store(p.pos as u64, Ordering::Relaxed);
        self.len.store(p.len as u64, Ordering::Relaxed);
    }

    /// The sounding take and its position as a fraction of its length.
    pub fn get(&self) -> Option<(TakeKey, f32)> {
        let take = self.take.load(Ordering::Relaxed);
        let len = self.len.load(Ordering::Relaxed);
        (take != 0 && len > 0).then(|| {
            (
                TakeKey(take),
                self.pos.load(Ordering::Relaxed) as f32 / len as f32,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::{handoff, ControlEnd};

    fn player() -> (ClipPlayer, ControlEnd) {
        let (end, control) = handoff(8, 8);
        let mut p = ClipPlayer::new(end);
        p.set_sample_rate(1000.0);
        (p, control)
    }

    fn ramp_clip(len: usize) -> Arc<Clip> {
        Clip::new(
            TakeKey(7),
            (0..len).map(|i| i as f32).collect(),
            1,
            1000,
            None,
            None,
        )
    }

    fn stopped() -> TransportView {
        TransportView::default()
    }

    #[test]
    fn midi_note_plays_from_the_start_with_a_fade_in() {
        let (mut p, tx) = player();
        let clip = Clip::new(TakeKey(1), vec![1.0; 100], 1, 1000, None, None);
        assert!(tx.send(AudioCommand::Select(Some(clip))));
        p.begin_block(PlayMode::Midi, &stopped());
        let mut out = [0.0f32; 20];
        p.render(&mut out, None);
        assert!(out.iter().all(|&s| s == 0.0), "silent before a note");
        p.note_on(PlayMode::Midi, 60);
        p.render(&mut out, None);
        // 5 ms fade at 1 kHz: 5 samples.
        assert!(out[0] > 0.0 && out[0] < 0.5, "{out:?}");
        assert_eq!(out[10], 1.0);
        p.note_off(Some(60));
        let mut tail = [0.0f32; 40];
        p.render(&mut tail, None);
        assert!(tail[0] > 0.9 && tail[39] == 0.0, "{tail:?}");
    }

    #[test]
    fn loop_follows_the_song_position_in_beats() {
        let (mut p, tx) = player();
        // 2 beats at 120 bpm = 1 s = 1000 samples at 1 kHz.
        let clip = Clip::new(
            TakeKey(1),
            (0..1000).map(|i| i as f32).collect(),
            1,
            1000,
            Some(2.0),
            Some(120.0),
        );
        assert!(tx.send(AudioCommand::Select(Some(clip))));
        let at = |beats: f64| TransportView {
            playing: true,
            tempo: Some(120.0),
            pos_beats: Some(beats),
            pos_seconds: Some(beats * 0.5),
        };
        p.begin_block(PlayMode::Loop, &at(0.5));
        let mut out = [0.0f32; 100];
        p.render(&mut out, None);
        assert_eq!(p.main.pos, 350, "half a beat in = 250, plus the block");
        // A seek to beat 5 (= 1 beat into the loop): crossfade to sample 500.
        p.begin_block(PlayMode::Loop, &at(5.0));
        p.render(&mut out, None);
        assert_eq!(p.main.pos, 600);
        assert!(p.tail.active() || p.tail.gain == 0.0);
        assert_eq!(
            out[99], 599.0,
            "after the fade only the new position sounds"
        );
    }

    #[test]
    fn stereo_clips_play_their_sides_and_mono_clips_both() {
        let (mut p, tx) = player();
        // Left counts up, right is its negative.
        let stereo: Vec<f32> = (0..200).flat_map(|i| [i as f32, -(i as f32)]).collect();
        let clip = Clip::new(TakeKey(1), stereo, 2, 1000, None, None);
        assert!(tx.send(AudioCommand::Select(Some(clip))));
        p.begin_block(PlayMode::Loop, &stopped());
        let (mut l, mut r) = ([0.0f32; 50], [0.0f32; 50]);
        p.render(&mut l, Some(&mut r));
        assert_eq!((l[20], r[20]), (20.0, -20.0));
        let mono = Clip::new(
            TakeKey(2),
            (0..100).map(|i| i as f32).collect(),
            1,
            1000,
            None,
            None,
        );
        assert!(tx.send(AudioCommand::Select(Some(mono))));
        p.begin_block(PlayMode::Loop, &stopped());
        for _ in 0..2 {
            p.render(&mut l, Some(&mut r));
        }
        assert_eq!(l, r, "a mono take sounds the same on both sides");
        assert!(l[49] > 0.0);
    }

    #[test]
    fn a_growing_take_waits_for_its_lead_then_plays_as_it_grows() {
        let (mut p, tx) = player();
        let g = GrowingClip::new(TakeKey(3), 100, 1);
        g.set_start_at(40);
        assert!(tx.send(AudioCommand::PreviewGrowing(g.clone())));
        p.begin_block(PlayMode::Midi, &stopped());
        g.write(&[1.0; 30]);
        let mut out = [0.0f32; 20];
        p.render(&mut out, None);
        assert!(out.iter().all(|s| *s == 0.0), "waits for 40 frames");
        g.write(&[1.0; 20]);
        p.render(&mut out, None);
        assert!(
            out[0] > 0.0 && out[19] == 1.0,
            "plays once the lead is there: {out:?}"
        );
        let mut long = [0.0f32; 60];
        p.render(&mut long, None);
        // 50 written, 20 played: 30 more, then it holds.
        assert_eq!(long[29], 1.0);
        assert_eq!(long[30], 0.0, "holds where the writing is");
        g.write(&[1.0; 50]);
        g.finish();
        p.render(&mut long, None);
        p.render(&mut long, None);
        assert!(tx.pop_returned().is_none());
        assert_eq!(
            Arc::strong_count(&g),
            2,
            "handed back, not dropped on the audio thread"
        );
        assert_eq!(tx.collect_returns(), 1);
        assert_eq!(Arc::strong_count(&g), 1);
    }

    #[test]
    fn stopped_loop_starts_from_its_start() {
        let (mut p, tx) = player();
        assert!(tx.send(AudioCommand::Select(Some(ramp_clip(50)))));
        p.begin_block(PlayMode::Loop, &stopped());
        let mut out = [0.0f32; 120];
        p.render(&mut out, None);
        // Faded in from 0, and wraps at 50.
        assert_eq!(out[10], 10.0);
        assert_eq!(out[60], 10.0);
    }

    #[test]
    fn let_go_clips_go_back_on_the_return_queue() {
        let (mut p, tx) = player();
        let a = ramp_clip(10);
        let b = ramp_clip(10);
        assert!(tx.send(AudioCommand::Select(Some(a.clone()))));
        p.begin_block(PlayMode::Midi, &stopped());
        assert!(tx.send(AudioCommand::Select(Some(b))));
        p.begin_block(PlayMode::Midi, &stopped());
        let back = tx.pop_returned().unwrap();
        assert!(Arc::ptr_eq(&back, &a));
        // A one-shot that reaches its end hands its clip back too.
        p.note_on(PlayMode::Midi, 1);
        let mut out = [0.0f32; 30];
        p.render(&mut out, None);
        assert!(tx.pop_returned().is_some());
        assert!(!p.main.active());
    }

    #[test]
    fn full_return_queue_never_frees_on_the_audio_thread() {
        let (end, tx) = handoff(64, 1);
        let mut p = ClipPlayer::new(end);
        let clips: Vec<_> = (0..5).map(|_| ramp_clip(4)).collect();
        for c in &clips {
            assert!(tx.send(AudioCommand::Select(Some(c.clone()))));
        }
        p.begin_block(PlayMode::Midi, &stopped());
        // Four let go: one on the queue, three pending, none dropped here.
        for c in &clips[..4] {
            assert_eq!(Arc::strong_count(c), 2);
        }
        drop(tx);
    }
}

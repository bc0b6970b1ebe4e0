//! Promptloop: a CLAP and VST3 instrument that generates loops from a text
//! prompt with Meta's MusicGen (the `musicgen` crate) and plays them in the host:
//! previewed, looped in time with the song, or triggered from MIDI.
//!
//! A take's journey, module by module (docs/ARCHITECTURE.md has the picture):
//! asked for in `request` (settings and host tempo to a plan and a job, queued
//! by the `instance`), computed in `inference` (the shared inference worker and
//! its model cache), stored and prepared in `store` (WAV files, resampling,
//! loading) and handed over in `handoff`, then played in `player` (`clip`
//! holds what it plays). `take` owns the take's types; `session` what an
//! instance remembers, saved as its `document`; `editor` is the window.

use std::sync::Arc;

use nice_plug::prelude::*;
use serde_json::Value;

mod capture;
mod clip;
mod editor;
mod error;
mod export;
mod handoff;
mod host;
mod inference;
mod instance;
mod models;
mod params;
mod player;
mod request;
mod session;
mod store;
mod take;
mod workers;

#[cfg(feature = "test-hooks")]
pub mod testing;

use capture::CaptureKind;
/// What the standalone app needs of the editor (its SIGINT handler).
pub use editor::request_quit;
use params::PromptloopParams;
use player::{ClipPlayer, TransportView};
use session::document::{self, STATE_KEY};

/// The MIDI note that starts a generation with the current settings (C-2 in
/// hosts that call middle C "C3"): map it to a pad. Every other note plays the
/// selected take in MIDI mode.
pub const GENERATE_NOTE: u8 = 0;
/// The MIDI note that arms a capture of the audio input (C#-2): map it to a pad.
pub const CAPTURE_NOTE: u8 = 1;
/// The MIDI note that arms a melody recording from MIDI (D-2).
pub const MELODY_NOTE: u8 = 2;

use instance::Instance;

pub struct Promptloop {
    params: Arc<PromptloopParams>,
    instance: Arc<Instance>,
    player: ClipPlayer,
    /// The host connected the main input (the layout with one is active).
    has_input: bool,
}

/// A session document the standalone app starts with (its `--session` file,
/// read before any instance exists). Plugins never set it.
pub static STANDALONE_SESSION: std::sync::OnceLock<Value> = std::sync::OnceLock::new();

impl Default for Promptloop {
    fn default() -> Self {
        // No thread, no I/O, no model: hosts construct plugins while scanning.
        let (instance, player_end) = Instance::new();
        if let Some(doc) = STANDALONE_SESSION.get() {
            let mut doc = doc.clone();
            document::migrate(&mut doc);
            instance.load_document(&doc);
        }
        Self {
            params: Arc::new(PromptloopParams::new(instance.clone())),
            instance,
            player: ClipPlayer::new(player_end),
            has_input: false,
        }
    }
}

impl Plugin for Promptloop {
    const NAME: &'static str = "Promptloop";
    const VENDOR: &'static str = "Promptloop";
    const URL: &'static str = "https://github.com/promptloop/promptloop";
    const EMAIL: &'static str = "dev@promptloop.invalid";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    // A stereo main input first, so hosts can route a track or a bus in for
    // capturing; then the instrument without one, for hosts that want that.
    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[
        AudioIOLayout {
            main_input_channels: NonZeroU32::new(2),
            main_output_channels: NonZeroU32::new(2),
            ..AudioIOLayout::const_default()
        },
        AudioIOLayout {
            main_input_channels: None,
            main_output_channels: NonZeroU32::new(2),
            ..AudioIOLayout::const_default()
        },
    ];
    const MIDI_INPUT: MidiConfig = MidiConfig::Basic;

    type Editor = editor::PromptloopEditor;
    type SysExMessage = ();
    type BackgroundTask = ();

    fn params(&self) -> Arc<dyn Params> {
        self.params.clone()
    }

    fn editor(&mut self, _async_executor: AsyncExecutor<Self>) -> Option<Self::Editor> {
        editor::create(
            self.instance.clone(),
            self.params.clone(),
            self.params.editor_size.clone(),
        )
    }

    fn filter_state(state: &mut PluginState) {
        if let Some(raw) = state.fields.get_mut(STATE_KEY) {
            if let Ok(mut doc) = serde_json::from_str::<Value>(raw) {
                document::migrate(&mut doc);
                *raw = doc.to_string();
            }
        }
    }

    fn activate(
        &mut self,
        audio_io_layout: &AudioIOLayout,
        buffer_config: &BufferConfig,
        _context: &mut impl ActivateContext<Self>,
    ) -> bool {
        let rate = buffer_config.sample_rate;
        if !(rate.is_finite() && rate >= 1.0) {
            return false;
        }
        self.has_input = audio_io_layout.main_input_channels.is_some();
        // A recording at another rate cannot go on: it ends, with the reason.
        if let Some(c) = self.player.take_capture() {
            self.instance.capture_interrupted(c, rate.round() as u32);
        }
        self.player.set_sample_rate(rate);
        self.instance.activate(rate.round() as u32);
        true
    }

    fn reset(&mut self) {
        self.player.reset();
    }

    fn process(
        &mut self,
        buffer: &mut Buffer,
        _aux: &mut AuxiliaryBuffers,
        context: &mut impl ProcessContext<Self>,
    ) -> ProcessStatus {
        let t = context.transport();
        self.instance
            .host
            .publish(t.tempo, t.time_sig_numerator, t.time_sig_denominator);
        let view = TransportView {
            playing: t.playing,
            tempo: t.tempo,
            pos_beats: t.pos_beats(),
            pos_seconds: t.pos_seconds(),
        };
        let mode = self.params.mode.value();
        self.player.begin_block(mode, &view);
        let time_signature = match (t.time_sig_numerator, t.time_sig_denominator) {
            (Some(n), Some(d)) if n > 0 && d > 0 => Some((n as u32, d as u32)),
            _ => None,
        };

        let len = buffer.samples();
        let channels = buffer.as_slice();
        let Some((first, rest)) = channels.split_first_mut() else {
            return ProcessStatus::KeepAlive;
        };
        let left = &mut first[..len];
        let (mut right, others) = match rest.split_first_mut() {
            Some((r, others)) => (Some(&mut r[..len]), others),
            None => (None, &mut [][..]),
        };
        // The buffer holds the input until the player renders over it.
        if self.has_input {
            self.player.record(
                Some(&left[..]),
                right.as_deref(),
                len,
                &view,
                time_signature,
            );
        } else {
            self.player.record(None, None, len, &view, time_signature);
        }
        let mut start = 0;
        while let Some(event) = context.next_event() {
            let at = (event.timing() as usize).min(len);
            if at > start {
                self.player.render(
                    &mut left[start..at],
                    right.as_deref_mut().map(|r| &mut r[start..at]),
                );
                start = at;
            }
            match event {
                NoteEvent::NoteOn { key, .. } => match key.number() {
                    Some(GENERATE_NOTE) => self.instance.trigger_generation(),
                    Some(CAPTURE_NOTE) => self.instance.trigger_capture(CaptureKind::Audio),
                    Some(MELODY_NOTE) => self.instance.trigger_capture(CaptureKind::Notes),
                    Some(note) => {
                        self.player.record_note(at, note, true);
                        self.player.note_on(mode, note);
                    }
                    None => {}
                },
                // A wildcard note-off (CLAP) ends whatever note plays.
                NoteEvent::NoteOff { key, .. } => {
                    if let Some(note) = key.number() {
                        self.player.record_note(at, note, false);
                    }
                    self.player.note_off(key.number())
                }
                _ => {}
            }
        }
        if start < len {
            self.player.render(
                &mut left[start..len],
                right.as_deref_mut().map(|r| &mut r[start..len]),
            );
        }
        let safe = |s: f32| {
            if s.is_finite() {
                s.clamp(-4.0, 4.0)
            } else {
                0.0
            }
        };
        for i in 0..len {
            let g = self.params.gain.smoothed.next();
            left[i] = safe(left[i] * g);
            if let Some(r) = right.as_deref_mut() {
                r[i] = safe(r[i] * g);
            }
            // Any further outputs carry the left side.
            for ch in others.iter_mut() {
                ch[i] = left[i];
            }
        }
        self.instance.playhead.publish(self.player.playhead());
        ProcessStatus::KeepAlive
    }
}

impl Drop for Promptloop {
    fn drop(&mut self) {
        // Cancels this instance's jobs; the workers end with the last instance.
        drop(self.instance.close());
    }
}

impl ClapPlugin for Promptloop {
    const CLAP_ID: &'static str = "com.promptloop.promptloop";
    const CLAP_DESCRIPTION: Option<&'static str> =
        Some("Generates loops from a text prompt with MusicGen, locally, and plays them in time");
    const CLAP_MANUAL_URL: Option<&'static str> = None;
    const CLAP_SUPPORT_URL: Option<&'static str> = None;
    const CLAP_FEATURES: &'static [ClapFeature] = &[
        ClapFeature::Instrument,
        ClapFeature::Sampler,
        ClapFeature::Stereo,
    ];
}

impl Vst3Plugin for Promptloop {
    const VST3_CLASS_ID: [u8; 16] = *b"PromptloopMsGen1";
    const VST3_SUBCATEGORIES: &'static [Vst3SubCategory] =
        &[Vst3SubCategory::Instrument, Vst3SubCategory::Sampler];
}

nice_export_clap!(Promptloop);
nice_export_vst3!(Promptloop);

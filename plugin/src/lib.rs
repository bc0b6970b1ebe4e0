//! Promptloop: a CLAP and VST3 instrument that generates loops from a text
//! prompt with Meta's MusicGen (the `musicgen` crate) and plays them in the host:
//! previewed, looped in time with the song, or triggered from MIDI.
//!
//! Threads: the host's audio thread runs `process()` and only pops, renders and
//! pushes (see `player`); generations run on the process-wide inference worker
//! and files and resampling on the I/O worker (see `workers`); the editor and the
//! workers meet in each instance's `Instance`.

use std::sync::Arc;

use nice_plug::params::persist::PersistentField;
use nice_plug::prelude::*;
use serde_json::Value;

pub mod clip;
pub mod dragdrop;
pub mod editor;
pub mod export;
pub mod instance;
pub mod player;
pub mod session;
pub mod ui;
pub mod workers;

use instance::Instance;
use player::{AudioCommand, ClipPlayer, PlayMode, TransportView};
use session::STATE_KEY;

/// The MIDI note that starts a generation with the current settings (C-2 in
/// hosts that call middle C "C3"): map it to a pad. Every other note plays the
/// selected take in MIDI mode.
pub const GENERATE_NOTE: u8 = 0;

pub struct Promptloop {
    params: Arc<PromptloopParams>,
    instance: Arc<Instance>,
    player: ClipPlayer,
}

#[derive(Params)]
pub struct PromptloopParams {
    /// Output level of everything the plugin plays.
    #[id = "gain"]
    pub gain: FloatParam,
    /// How the selected take plays: from MIDI notes, or looped with the song.
    #[id = "mode"]
    pub mode: EnumParam<PlayMode>,
    /// The session document: settings, takes and selection (see `session`).
    #[persist = "promptloop"]
    pub session: SessionField,
    /// The editor window's size.
    #[persist = "editor-size"]
    pub editor_size: Arc<parking_lot::RwLock<editor::WindowSize>>,
}

/// The persisted session document of one instance.
pub struct SessionField(Arc<Instance>);

impl<'a> PersistentField<'a, Value> for SessionField {
    fn set(&self, mut doc: Value) {
        session::migrate(&mut doc);
        self.0.session.write().load_document(&doc);
        // The old project's clip stops; the new takes load off the audio thread.
        self.0.send_audio(AudioCommand::Select(None));
        self.0.reload_takes();
    }

    fn map<F, R>(&self, f: F) -> R
    where
        F: Fn(&Value) -> R,
    {
        f(&self.0.session.read().to_document())
    }
}

impl PromptloopParams {
    fn new(instance: Arc<Instance>) -> Self {
        Self {
            gain: FloatParam::new(
                "Gain",
                util::db_to_gain(0.0),
                FloatRange::Skewed {
                    min: util::db_to_gain(-60.0),
                    max: util::db_to_gain(12.0),
                    factor: FloatRange::gain_skew_factor(-60.0, 12.0),
                },
            )
            .with_smoother(SmoothingStyle::Logarithmic(20.0))
            .with_unit(" dB")
            .with_value_to_string(formatters::v2s_f32_gain_to_db(1))
            .with_string_to_value(formatters::s2v_f32_gain_to_db()),
            mode: EnumParam::new("Play mode", PlayMode::Midi),
            session: SessionField(instance),
            editor_size: Arc::new(parking_lot::RwLock::new(editor::default_size())),
        }
    }
}

/// A session document the standalone app starts with (its `--session` file,
/// read before any instance exists). Plugins never set it.
pub static STANDALONE_SESSION: std::sync::OnceLock<Value> = std::sync::OnceLock::new();

impl Default for Promptloop {
    fn default() -> Self {
        // No thread, no I/O, no model: hosts construct plugins while scanning.
        let (instance, commands, returns) = Instance::new();
        if let Some(doc) = STANDALONE_SESSION.get() {
            let mut doc = doc.clone();
            session::migrate(&mut doc);
            instance.session.write().load_document(&doc);
        }
        Self {
            params: Arc::new(PromptloopParams::new(instance.clone())),
            instance,
            player: ClipPlayer::new(commands, returns),
        }
    }
}

impl Promptloop {
    /// The instance's shared side, for the editor.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }
}

impl Plugin for Promptloop {
    const NAME: &'static str = "Promptloop";
    const VENDOR: &'static str = "Promptloop";
    const URL: &'static str = "https://github.com/promptloop/promptloop";
    const EMAIL: &'static str = "dev@promptloop.invalid";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[AudioIOLayout {
        main_input_channels: None,
        main_output_channels: NonZeroU32::new(2),
        ..AudioIOLayout::const_default()
    }];
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
                session::migrate(&mut doc);
                *raw = doc.to_string();
            }
        }
    }

    fn activate(
        &mut self,
        _audio_io_layout: &AudioIOLayout,
        buffer_config: &BufferConfig,
        _context: &mut impl ActivateContext<Self>,
    ) -> bool {
        let rate = buffer_config.sample_rate;
        if !(rate.is_finite() && rate >= 1.0) {
            return false;
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

        let len = buffer.samples();
        let channels = buffer.as_slice();
        let Some((first, rest)) = channels.split_first_mut() else {
            return ProcessStatus::KeepAlive;
        };
        let mono = &mut first[..len];
        let mut start = 0;
        while let Some(event) = context.next_event() {
            let at = (event.timing() as usize).min(len);
            if at > start {
                self.player.render(&mut mono[start..at]);
                start = at;
            }
            match event {
                NoteEvent::NoteOn { key, .. } => match key.number() {
                    Some(GENERATE_NOTE) => {
                        self.instance
                            .generate_trigger
                            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    }
                    Some(note) => self.player.note_on(mode, note),
                    None => {}
                },
                // A wildcard note-off (CLAP) ends whatever note plays.
                NoteEvent::NoteOff { key, .. } => self.player.note_off(key.number()),
                _ => {}
            }
        }
        if start < len {
            self.player.render(&mut mono[start..len]);
        }
        for i in 0..len {
            let s = mono[i] * self.params.gain.smoothed.next();
            let s = if s.is_finite() {
                s.clamp(-4.0, 4.0)
            } else {
                0.0
            };
            mono[i] = s;
            for ch in rest.iter_mut() {
                ch[i] = s;
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

/// Diagnostics for tests and support: fills `out` with up to `len` process-wide
/// counters, in this order: model loads, models resident, jobs done, jobs
/// cancelled, jobs failed. Returns how many it wrote.
///
/// # Safety
/// `out` must point to `len` writable `u64`s (or `len` must be 0).
#[no_mangle]
pub unsafe extern "C" fn promptloop_counters(out: *mut u64, len: usize) -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &workers::COUNTERS;
    let values = [
        c.model_loads.load(Relaxed),
        c.models_resident.load(Relaxed),
        c.jobs_done.load(Relaxed),
        c.jobs_cancelled.load(Relaxed),
        c.jobs_failed.load(Relaxed),
    ];
    let n = len.min(values.len());
    if n > 0 && !out.is_null() {
        // SAFETY: the caller promises `len` writable u64s at `out`.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), out, n) };
    }
    n
}

/// Test hook: holds every lock the editor and the workers use, in every
/// instance, for `ms` milliseconds, on the calling thread. The host tests call it
/// from one thread while another runs `process()`, which must not wait.
#[no_mangle]
pub extern "C" fn promptloop_hold_locks(ms: u32) {
    instance::hold_all_locks(std::time::Duration::from_millis(ms as u64));
}

//! The plugin's parameters and the persisted fields saved beside them.

use std::sync::Arc;

use nice_plug::params::persist::PersistentField;
use nice_plug::prelude::*;
use serde_json::Value;

use crate::editor::{self, WindowSize};
use crate::instance::Instance;
use crate::player::PlayMode;
use crate::session::document;

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
    pub editor_size: Arc<parking_lot::RwLock<WindowSize>>,
}

/// The persisted session document of one instance.
pub struct SessionField(Arc<Instance>);

impl<'a> PersistentField<'a, Value> for SessionField {
    fn set(&self, mut doc: Value) {
        document::migrate(&mut doc);
        self.0.load_document(&doc);
    }

    fn map<F, R>(&self, f: F) -> R
    where
        F: Fn(&Value) -> R,
    {
        f(&self.0.session().to_document())
    }
}

impl PromptloopParams {
    pub fn new(instance: Arc<Instance>) -> Self {
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

//! What an instance remembers: the settings of the next generation, its takes
//! and the selection. Every change goes through this API, so one place guards
//! what a session may hold: settings are sanitised on every update, a selection
//! names a take that exists, and a new take becomes the selected one.
//!
//! The project's copy of it is the versioned document in [`document`].

use std::path::PathBuf;
use std::sync::Arc;

use musicgen::{DeviceChoice, ModelSource, Precision};
use serde::{Deserialize, Serialize};

use crate::clip::Clip;
use crate::error::PluginError;
use crate::take::{MelodySource, Take, TakeId, TakeStatus};

pub mod document;

/// Prompts remembered for the editor.
pub const RECENT_PROMPTS: usize = 20;

/// How long a take should be.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Length {
    Seconds(f64),
    /// Bars at the host's tempo and time signature when the generation starts.
    Bars(f64),
}

/// The settings of the next generation, as the editor shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub prompt: String,
    pub model: ModelSource,
    pub precision: Precision,
    pub device: DeviceChoice,
    pub length: Length,
    pub guidance_scale: f64,
    /// 0 turns top-k off.
    pub top_k: usize,
    /// 1 turns top-p off.
    pub top_p: f64,
    pub temperature: f64,
    /// `None`: a new random seed for every take.
    pub seed: Option<u64>,
    /// Where take WAVs go; `None`: the default data folder.
    pub data_folder: Option<PathBuf>,
    /// The melody the next takes follow (melody models only); `None`: none.
    #[serde(default)]
    pub melody: Option<MelodySource>,
    /// Play each take while it is made, from its first second of audio.
    #[serde(default = "yes")]
    pub hear_while_made: bool,
}

fn yes() -> bool {
    true
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            model: ModelSource::default(),
            precision: Precision::Q8_0,
            device: DeviceChoice::Auto,
            length: Length::Bars(4.0),
            guidance_scale: 3.0,
            top_k: 250,
            top_p: 1.0,
            temperature: 1.0,
            seed: None,
            data_folder: None,
            melody: None,
            hear_while_made: true,
        }
    }
}

impl Settings {
    /// Clamps numbers into the ranges the engine accepts, so a hand-edited or
    /// damaged document cannot make every later generation fail.
    fn sanitize(&mut self) {
        let d = Settings::default();
        if !self.guidance_scale.is_finite() || self.guidance_scale < 1.0 {
            self.guidance_scale = d.guidance_scale;
        }
        self.guidance_scale = self.guidance_scale.min(20.0);
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            self.top_p = d.top_p;
        }
        if !self.temperature.is_finite() || self.temperature <= 0.0 {
            self.temperature = d.temperature;
        }
        self.length = match self.length {
            Length::Seconds(s) if s.is_finite() && s > 0.0 => Length::Seconds(s),
            Length::Bars(b) if b.is_finite() && b > 0.0 => Length::Bars(b),
            _ => d.length,
        };
    }

    /// The engine's sampling for these settings.
    pub fn sampling(&self) -> musicgen::Sampling {
        musicgen::Sampling::Sample {
            temperature: self.temperature,
            top_k: (self.top_k > 0).then_some(self.top_k),
            top_p: (self.top_p < 1.0).then_some(self.top_p),
        }
    }
}

/// An instance's session: settings, takes, selection, and what went wrong.
#[derive(Debug, Default)]
pub struct Session {
    settings: Settings,
    takes: Vec<Take>,
    selected: Option<TakeId>,
    /// Entries of the last loaded document that could not be decoded.
    load_report: Vec<String>,
    /// The last error, for the editor.
    last_error: Option<PluginError>,
    /// Prompts used before, newest first.
    recent_prompts: Vec<String>,
}

impl Session {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Changes the settings; the result is sanitised.
    pub fn update_settings(&mut self, change: impl FnOnce(&mut Settings)) {
        change(&mut self.settings);
        self.settings.sanitize();
    }

    /// Every take, hidden ones included, oldest first.
    pub fn takes(&self) -> &[Take] {
        &self.takes
    }

    /// The files to keep: every visible take's, and those of the takes they
    /// were made from (what they continue, their melody), hidden or not.
    pub fn kept_files(&self) -> Vec<PathBuf> {
        let mut keep: Vec<&TakeId> = self.visible_takes().map(|t| &t.meta.id).collect();
        let mut i = 0;
        while i < keep.len() {
            if let Some(t) = self.take(keep[i]) {
                for dep in t.meta.depends_on() {
                    if !keep.contains(&dep) {
                        keep.push(dep);
                    }
                }
            }
            i += 1;
        }
        if let Some(MelodySource::Take { of }) = &self.settings.melody {
            if !keep.contains(&of) {
                keep.push(of);
            }
        }
        keep.iter()
            .filter_map(|id| self.take(id))
            .map(|t| t.meta.file.clone())
            .collect()
    }

    /// The takes the producer sees (not deleted), oldest first.
    pub fn visible_takes(&self) -> impl Iterator<Item = &Take> {
        self.takes.iter().filter(|t| !t.meta.hidden)
    }

    pub fn take(&self, id: &TakeId) -> Option<&Take> {
        self.takes.iter().find(|t| &t.meta.id == id)
    }

    fn take_mut(&mut self, id: &TakeId) -> Option<&mut Take> {
        self.takes.iter_mut().find(|t| &t.meta.id == id)
    }

    pub fn selected(&self) -> Option<&TakeId> {
        self.selected.as_ref()
    }

    /// Selects a take (or nothing); a take that does not exist selects nothing.
    /// Returns the selected take's clip, for the audio thread.
    pub fn select(&mut self, id: Option<&TakeId>) -> Option<Arc<Clip>> {
        self.selected = id.filter(|id| self.take(id).is_some()).cloned();
        let selected = self.selected.clone()?;
        self.take(&selected)?.clip.clone()
    }

    /// Adds a finished take and selects it: the newest take is the one heard.
    pub fn add_take(&mut self, take: Take) {
        self.selected = Some(take.meta.id.clone());
        self.takes.retain(|t| t.meta.id != take.meta.id);
        self.takes.push(take);
    }

    /// Hides a take (its file stays). Returns whether it was the selected one,
    /// which is then deselected.
    pub fn hide(&mut self, id: &TakeId) -> bool {
        if let Some(t) = self.take_mut(id) {
            t.meta.hidden = true;
        }
        let was_selected = self.selected.as_ref() == Some(id);
        if was_selected {
            self.selected = None;
        }
        was_selected
    }

    pub fn set_status(&mut self, id: &TakeId, status: TakeStatus) {
        if let Some(t) = self.take_mut(id) {
            t.status = status;
        }
    }

    /// The take's audio at the model rate, read from its file.
    pub fn set_audio(&mut self, id: &TakeId, pcm: Arc<Vec<f32>>) {
        if let Some(t) = self.take_mut(id) {
            t.pcm = Some(pcm);
            t.status = TakeStatus::Ready;
        }
    }

    /// The take's clip at the host rate. Returns whether the take exists and is
    /// the selected one (the audio thread should then get the clip).
    pub fn set_clip(&mut self, id: &TakeId, clip: Arc<Clip>) -> bool {
        let selected = self.selected.as_ref() == Some(id);
        match self.take_mut(id) {
            Some(t) => {
                t.clip = Some(clip);
                selected
            }
            None => false,
        }
    }

    /// Puts a prompt at the top of the recent ones.
    pub fn remember_prompt(&mut self, prompt: &str) {
        let prompt = prompt.trim();
        self.recent_prompts.retain(|p| p != prompt);
        if !prompt.is_empty() {
            self.recent_prompts.insert(0, prompt.to_string());
            self.recent_prompts.truncate(RECENT_PROMPTS);
        }
    }

    pub fn recent_prompts(&self) -> &[String] {
        &self.recent_prompts
    }

    pub fn last_error(&self) -> Option<&PluginError> {
        self.last_error.as_ref()
    }

    pub fn set_error(&mut self, error: Option<PluginError>) {
        self.last_error = error;
    }

    /// What the last loaded document held that could not be read.
    pub fn load_report(&self) -> &[String] {
        &self.load_report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_are_sanitised_in_one_place() {
        let mut s = Session::default();
        s.update_settings(|s| {
            s.guidance_scale = -3.0;
            s.top_p = 7.0;
            s.temperature = f64::NAN;
            s.length = Length::Seconds(-1.0);
            s.prompt = "pads".into();
        });
        let d = Settings::default();
        assert_eq!(s.settings().guidance_scale, d.guidance_scale);
        assert_eq!(s.settings().top_p, d.top_p);
        assert_eq!(s.settings().temperature, d.temperature);
        assert_eq!(s.settings().length, d.length);
        assert_eq!(s.settings().prompt, "pads");
        s.update_settings(|s| s.guidance_scale = 50.0);
        assert_eq!(s.settings().guidance_scale, 20.0);
    }

    #[test]
    fn selection_names_a_take_that_exists() {
        let mut s = Session::default();
        assert!(s.select(Some(&"nope".into())).is_none());
        assert_eq!(s.selected(), None);
        s.remember_prompt("  a  ");
        s.remember_prompt("b");
        s.remember_prompt("a");
        assert_eq!(s.recent_prompts(), ["a", "b"]);
    }
}

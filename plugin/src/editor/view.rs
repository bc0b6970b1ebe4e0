//! The editor's window as a plain function of egui's `Ui` and an
//! [`EditorModel`], so tests draw and drive it without a plugin window. Drawing
//! reads the session; what a click asks for is queued as an [`EditorAction`]
//! and applied to the instance once the frame is drawn.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use egui::{Color32, RichText, Ui, Vec2};
use musicgen::ModelSource;

use super::drag::FileDrag;
use crate::capture::{CaptureKind, CaptureState};
use crate::error::PluginError;
use crate::instance::{purge_unused_takes, Instance};
use crate::player::PlayMode;
use crate::request::{Job, JobStage};
use crate::session::Settings;
use crate::take::TakeId;

/// Writes the plugin's parameters (through the host, in the plugin).
pub trait ParamWrite: Send {
    fn set_mode(&self, mode: PlayMode);
    fn mode(&self) -> PlayMode;
}

/// What the producer asked for in a frame; applied after it is drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum EditorAction {
    /// New settings for the next generation (sanitised by the session).
    Settings(Settings),
    Generate,
    CancelAll,
    Preview(TakeId),
    /// Select a take and play it in this mode.
    Play(TakeId, PlayMode),
    UseSeed(TakeId),
    Regenerate(TakeId),
    /// A new take that carries on from this one's end.
    Continue(TakeId),
    /// Make the next takes follow this take as their melody.
    UseAsMelody(TakeId),
    /// Make a take of the audio file at this path.
    Import(PathBuf),
    /// Record the input (a take) or MIDI notes (a melody) from the next bar line.
    Capture(CaptureKind),
    CancelCapture,
    Delete(TakeId),
    CopyPath(TakeId),
    Reveal(TakeId),
    DragOut(TakeId),
    UnloadModel,
    PurgeUnused,
}

/// Everything the window shows and changes, besides egui's own state.
pub struct EditorModel {
    pub instance: Arc<Instance>,
    pub params: Box<dyn ParamWrite>,
    pub drag: Option<Box<dyn FileDrag>>,
    /// The local folder typed into the model picker.
    pub local_path: String,
    /// The audio file path typed into the import field.
    pub import_path: String,
    /// A short message about the last action (copied, revealed, purged...).
    pub notice: Option<String>,
    pub(super) waveforms: HashMap<TakeId, Vec<(f32, f32)>>,
    /// The picked hub model's size in the cache, read at most every few
    /// seconds (the window redraws 20 times a second).
    pub(super) on_disk: Option<(String, std::time::Instant, Option<u64>)>,
    actions: Vec<EditorAction>,
}

impl EditorModel {
    pub fn new(
        instance: Arc<Instance>,
        params: Box<dyn ParamWrite>,
        drag: Option<Box<dyn FileDrag>>,
    ) -> Self {
        let local_path = match &instance.session().settings().model {
            ModelSource::Local { path } => path.display().to_string(),
            ModelSource::Hub { .. } => String::new(),
        };
        Self {
            instance,
            params,
            drag,
            local_path,
            import_path: String::new(),
            notice: None,
            waveforms: HashMap::new(),
            on_disk: None,
            actions: Vec::new(),
        }
    }

    /// Asks for an action, applied after this frame.
    pub(super) fn act(&mut self, action: EditorAction) {
        self.actions.push(action);
    }

    /// Applies the frame's actions to the instance.
    fn apply_actions(&mut self, ctx: &egui::Context) {
        for action in std::mem::take(&mut self.actions) {
            if let Err(e) = self.apply(ctx, action) {
                self.notice = Some(e.to_string());
            }
        }
    }

    fn apply(&mut self, ctx: &egui::Context, action: EditorAction) -> Result<(), PluginError> {
        let i = &self.instance;
        match action {
            EditorAction::Settings(s) => i.update_settings(|current| *current = s),
            EditorAction::Generate => {
                i.generate()?;
            }
            EditorAction::CancelAll => i.cancel_all(),
            EditorAction::Preview(id) => {
                i.preview(&id);
            }
            EditorAction::Play(id, mode) => {
                i.select(Some(&id));
                self.params.set_mode(mode);
            }
            EditorAction::UseSeed(id) => i.use_seed_of(&id),
            EditorAction::Regenerate(id) => {
                i.regenerate(&id)?;
            }
            EditorAction::Continue(id) => {
                i.continue_take(&id)?;
            }
            EditorAction::UseAsMelody(id) => {
                i.update_settings(|s| s.melody = Some(crate::take::MelodySource::Take { of: id }))
            }
            EditorAction::Capture(kind) => i.arm_capture(kind)?,
            EditorAction::CancelCapture => i.cancel_capture(),
            EditorAction::Import(path) => {
                i.import(&path)?;
                self.notice = Some(format!("Importing {}…", path.display()));
            }
            EditorAction::Delete(id) => i.delete(&id),
            EditorAction::CopyPath(id) => {
                let path = self.export(&id)?;
                ctx.copy_text(path.display().to_string());
                self.notice = Some(format!("Copied {}", path.display()));
            }
            EditorAction::Reveal(id) => {
                let path = self.export(&id)?;
                self.notice = Some(crate::export::reveal_in_file_manager(&path));
            }
            EditorAction::DragOut(id) => self.drag_out(&id)?,
            EditorAction::UnloadModel => {
                i.unload_models();
                self.notice = Some("Model unloaded".into());
            }
            EditorAction::PurgeUnused => {
                let folder = i.takes_folder();
                self.notice = Some(match purge_unused_takes(&folder) {
                    Ok(removed) => format!("Removed {} unused take files", removed.len()),
                    Err(e) => format!("Cannot purge {}: {e}", folder.display()),
                });
            }
        }
        Ok(())
    }

    /// The take as a WAV at the host's rate, written if needed.
    fn export(&self, id: &TakeId) -> Result<PathBuf, PluginError> {
        let session = self.instance.session();
        let take = session
            .take(id)
            .ok_or_else(|| PluginError::NoSuchTake(id.clone()))?;
        let clip = take.clip.as_ref().ok_or(PluginError::TakeNotReady)?;
        crate::export::export_take(&self.instance.exports_folder(), &take.meta, clip)
    }

    fn drag_out(&mut self, id: &TakeId) -> Result<(), PluginError> {
        let path = self.export(id)?;
        match self.drag.as_mut() {
            Some(d) => {
                if let Err(e) = d.start(vec![path]) {
                    self.notice = Some(e);
                }
            }
            None => self.notice = Some("Dragging is not available here: use Copy path".into()),
        }
        Ok(())
    }
}

/// Where the editor is, at a glance: what the status line says.
#[derive(Debug, Clone, PartialEq)]
pub enum Activity {
    Idle,
    Downloading {
        file: String,
        fraction: f32,
    },
    Generating {
        fraction: f32,
        text: String,
    },
    /// A take finished in the last few seconds.
    Done {
        seconds: f64,
    },
    Error(PluginError),
}

fn job_text(job: &Job) -> (f32, String) {
    let p = job.progress();
    let fraction = |done: f64, total: f64| {
        if total > 0.0 {
            (done / total) as f32
        } else {
            0.0
        }
    };
    match p.stage {
        JobStage::Queued => (0.0, "Waiting for the other generations…".into()),
        JobStage::Downloading { file, done, total } => (
            fraction(done as f64, total as f64),
            format!(
                "Downloading {file}: {:.0} of {:.0} MB",
                done as f64 / 1e6,
                total as f64 / 1e6
            ),
        ),
        JobStage::Loading => (0.0, "Loading the model…".into()),
        JobStage::EncodingText => (0.0, "Reading the prompt…".into()),
        JobStage::Generating => {
            let eta = p
                .eta_s
                .map(|s| format!(", {s:.0} s left"))
                .unwrap_or_default();
            let window = if p.windows > 1 {
                format!(", window {} of {}", p.window, p.windows)
            } else {
                String::new()
            };
            (
                Job::fraction(&p),
                format!(
                    "Generating{window}: step {} of {}, {:.1} steps/s{eta}",
                    p.step, p.total, p.steps_per_s
                ),
            )
        }
        JobStage::DecodingAudio => (1.0, "Decoding audio…".into()),
        JobStage::Saving => (1.0, "Saving the take…".into()),
        JobStage::Done => (1.0, "Done".into()),
        JobStage::Cancelled => (0.0, "Cancelled".into()),
        JobStage::Failed(e) => (0.0, e.to_string()),
    }
}

/// What the window should say the instance is doing.
pub fn activity(instance: &Instance) -> Activity {
    let jobs = instance.jobs();
    if let Some(job) = jobs.iter().find(|j| !j.stage().finished()) {
        let (fraction, text) = job_text(job);
        if let JobStage::Downloading { file, .. } = job.stage() {
            return Activity::Downloading { file, fraction };
        }
        return Activity::Generating { fraction, text };
    }
    if let Some(e) = instance.session().last_error().cloned() {
        return Activity::Error(e);
    }
    let recent = jobs.iter().rev().find_map(|j| {
        let p = j.progress();
        let finished = p.finished_at?;
        (p.stage == JobStage::Done && finished.elapsed().as_secs_f64() < 8.0)
            .then(|| (finished - p.started_at.unwrap_or(p.queued_at)).as_secs_f64())
    });
    match recent {
        Some(seconds) => Activity::Done { seconds },
        None => Activity::Idle,
    }
}

/// What to do about an error, in words.
pub fn advice(error: &PluginError) -> &'static str {
    use musicgen::Error as E;
    match error {
        PluginError::NotActive => "Start the host's audio engine (or play), then try again.",
        PluginError::TooLong { .. } | PluginError::EmptyLength { .. } => {
            "Choose fewer bars, or a length in seconds."
        }
        PluginError::PromptTooLong { .. } => "Shorten the prompt.",
        PluginError::Engine(e) => match e.as_ref() {
            E::PromptTooLong { .. } => "Shorten the prompt.",
            E::MissingFile { .. } | E::BadFile { .. } | E::UnsupportedModel { .. } => {
                "Check the model folder: it needs config.json, the weights and tokenizer.json."
            }
            E::Hub(_) => "Check the internet connection, or pick a model folder on disk.",
            _ => "Try again; if it keeps failing, pick another model or device.",
        },
        PluginError::File { .. } | PluginError::BadTakeFile { .. } => {
            "Check the data folder: it must exist and be writable."
        }
        PluginError::Import { .. } => {
            "Pick a WAV, FLAC, MP3 or Ogg file of up to 5 minutes that plays elsewhere."
        }
        PluginError::MelodyUnsupported { .. } => {
            "Pick facebook/musicgen-melody (or a stereo melody model), or clear the melody."
        }
        PluginError::SourceGone(_) => {
            "Restore the take it was made from (undo), or make a new take."
        }
        PluginError::NotGenerated(_) => "Capture it again instead.",
        _ => "Try again; if it keeps failing, pick another model or device.",
    }
}

/// Draws the whole window, then applies what was asked for.
pub fn draw(ui: &mut Ui, model: &mut EditorModel) {
    if let Some(e) = model.drag.as_mut().and_then(|d| d.take_error()) {
        model.notice = Some(e);
    }
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show(ui, |ui| {
            ui.heading("Promptloop");
            ui.add_space(4.0);
            let before = model.instance.session().settings().clone();
            let mut draft = before.clone();
            super::settings::draw_prompt(ui, model, &mut draft);
            ui.separator();
            super::settings::draw_model(ui, model, &mut draft);
            ui.separator();
            super::settings::draw_settings(ui, model, &mut draft);
            if draft != before {
                model.act(EditorAction::Settings(draft));
            }
            ui.separator();
            draw_generate(ui, model);
            ui.separator();
            super::takes::draw_import(ui, model);
            super::takes::draw_takes(ui, model);
            ui.separator();
            draw_footer(ui, model);
        });
    model.apply_actions(ui.ctx());
}

fn draw_generate(ui: &mut Ui, model: &mut EditorModel) {
    let activity = activity(&model.instance);
    let busy = matches!(
        activity,
        Activity::Generating { .. } | Activity::Downloading { .. }
    );
    ui.horizontal(|ui| {
        let generate = egui::Button::new(RichText::new("Generate").size(18.0).strong())
            .fill(Color32::from_rgb(0x2f, 0x6f, 0xd8))
            .min_size(Vec2::new(140.0, 32.0));
        if ui.add(generate).clicked() {
            model.act(EditorAction::Generate);
        }
        if ui.add_enabled(busy, egui::Button::new("Cancel")).clicked() {
            model.act(EditorAction::CancelAll);
        }
        let mut settings = model.instance.session().settings().clone();
        if ui
            .checkbox(&mut settings.hear_while_made, "Hear it while it is made")
            .on_hover_text("Play each take from its first second of audio while the rest is generated (waiting, when generation is slower than real time, until it cannot run dry)")
            .changed()
        {
            model.act(EditorAction::Settings(settings));
        }
    });
    draw_activity(ui, activity);
    draw_capture(ui, model);
    let report = model.instance.session().load_report().to_vec();
    if !report.is_empty() {
        ui.collapsing(
            format!("{} saved entries could not be read", report.len()),
            |ui| {
                for line in report {
                    ui.label(line);
                }
            },
        );
    }
}

/// Recording from the input or from MIDI, for the length above, from the next
/// bar line; its progress while it runs.
fn draw_capture(ui: &mut Ui, model: &mut EditorModel) {
    let state = model.instance.capture.state();
    let idle = state == CaptureState::Idle;
    ui.horizontal(|ui| {
        if ui
            .add_enabled(idle, egui::Button::new("Capture input"))
            .on_hover_text(
                "Record the plugin's audio input for the length above, from the next bar line while the host plays; it becomes a take",
            )
            .clicked()
        {
            model.act(EditorAction::Capture(CaptureKind::Audio));
        }
        if ui
            .add_enabled(idle, egui::Button::new("Record melody"))
            .on_hover_text(
                "Record the MIDI notes played into the plugin for the length above, from the next bar line; a melody model then makes a take that follows them",
            )
            .clicked()
        {
            model.act(EditorAction::Capture(CaptureKind::Notes));
        }
        if !idle && ui.button("Stop recording").clicked() {
            model.act(EditorAction::CancelCapture);
        }
    });
    match state {
        CaptureState::Idle => {}
        CaptureState::Armed => {
            ui.label("Recording armed: it starts at the next bar line once the host plays.");
        }
        CaptureState::Recording { frames, target } => {
            let rate = model.instance.host.sample_rate().max(1) as f64;
            let fraction = if target > 0 {
                frames as f32 / target as f32
            } else {
                0.0
            };
            ui.add(egui::ProgressBar::new(fraction).text(format!(
                "Recording: {:.1} of {:.1} s",
                frames as f64 / rate,
                target as f64 / rate
            )));
        }
        CaptureState::Finished => {
            ui.label("Recorded: making the take…");
        }
    }
}

fn draw_activity(ui: &mut Ui, activity: Activity) {
    match activity {
        Activity::Idle => {
            ui.label(
                "Ready. Generate makes a take with the settings above (MIDI note 0 does too).",
            );
        }
        Activity::Downloading { file, fraction } => {
            ui.add(
                egui::ProgressBar::new(fraction)
                    .text(format!("Downloading {file} ({:.0}%)", fraction * 100.0))
                    .fill(Color32::from_rgb(0xc0, 0x80, 0x20)),
            );
        }
        Activity::Generating { fraction, text } => {
            ui.add(egui::ProgressBar::new(fraction).text(text));
        }
        Activity::Done { seconds } => {
            ui.colored_label(
                Color32::from_rgb(0x60, 0xc0, 0x70),
                format!("Done in {seconds:.1} s: the new take is selected below."),
            );
        }
        Activity::Error(e) => {
            ui.colored_label(Color32::LIGHT_RED, format!("Error: {e}"));
            ui.label(advice(&e));
        }
    }
}

fn draw_footer(ui: &mut Ui, model: &mut EditorModel) {
    ui.horizontal_wrapped(|ui| {
        if ui
            .button("Unload model")
            .on_hover_text("Free the model's memory now; the next generation loads it again")
            .clicked()
        {
            model.act(EditorAction::UnloadModel);
        }
        if ui
            .button("Purge unused takes")
            .on_hover_text(
                "Delete take files no open Promptloop refers to (projects not open now are not known)",
            )
            .clicked()
        {
            model.act(EditorAction::PurgeUnused);
        }
    });
    if let Some(n) = &model.notice {
        ui.label(RichText::new(n).small());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn advice_follows_the_error() {
        let too_long = PluginError::TooLong {
            seconds: 42.0,
            max: 30.0,
            bars: Some(16.0),
            tempo: Some(90.0),
        };
        assert!(advice(&too_long).contains("fewer bars"));
        assert!(advice(&PluginError::NotActive).contains("audio engine"));
        let missing = PluginError::from(musicgen::Error::MissingFile {
            path: PathBuf::from("/x/config.json"),
        });
        assert!(advice(&missing).contains("model folder"));
        let hub = PluginError::from(musicgen::Error::Hub("offline".into()));
        assert!(advice(&hub).contains("internet"));
        let prompt = PluginError::PromptTooLong { chars: 3, max: 2 };
        assert!(advice(&prompt).contains("Shorten"));
    }
}

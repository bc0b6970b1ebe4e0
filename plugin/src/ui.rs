//! The editor's window as a plain function of egui's `Ui` and an
//! [`EditorModel`], so tests draw and drive it without a plugin window.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use egui::{Color32, RichText, Sense, Stroke, Ui, Vec2};
use musicgen::{DeviceChoice, ModelSource, Precision};

use crate::instance::{Instance, Job, JobStage, FALLBACK_TEMPO};
use crate::player::PlayMode;
use crate::session::{Length, Take, TakeStatus, MAX_SECONDS};

/// Writes the plugin's parameters (through the host, in the plugin).
pub trait ParamWrite: Send {
    fn set_mode(&self, mode: PlayMode);
    fn mode(&self) -> PlayMode;
}

/// Starts a drag of files out of the window (per platform; see `dragdrop`).
pub trait FileDrag: Send {
    /// Begins dragging `paths`; returns an error in words when it cannot.
    fn start(&mut self, paths: Vec<PathBuf>) -> Result<(), String>;

    /// An error from a drag that failed after `start` returned.
    fn take_error(&mut self) -> Option<String> {
        None
    }
}

/// Set by a drag source when its drag is over. The system's drag takes the
/// button release for itself (XDND's pointer grab, OLE's modal loop, AppKit's
/// dragging session), so egui never hears it and would think the button is
/// still held: the next press would start nothing. `ReleaseAfterDrag` gives
/// egui that release.
#[derive(Clone, Default)]
pub struct DragEnded(Arc<std::sync::atomic::AtomicBool>);

impl DragEnded {
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a drag ended since the last call.
    pub fn take(&self) -> bool {
        self.0.swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

/// An egui plugin: when a drag has ended, releases the primary button at the
/// pointer's last position, before egui reads the frame's input.
pub struct ReleaseAfterDrag {
    ended: DragEnded,
    last_pos: egui::Pos2,
}

impl ReleaseAfterDrag {
    pub fn new(ended: DragEnded) -> Self {
        Self {
            ended,
            last_pos: egui::Pos2::ZERO,
        }
    }
}

impl egui::Plugin for ReleaseAfterDrag {
    fn debug_name(&self) -> &'static str {
        "promptloop::ReleaseAfterDrag"
    }

    fn input_hook(&mut self, _ctx: &egui::Context, input: &mut egui::RawInput) {
        for event in &input.events {
            if let egui::Event::PointerMoved(pos) | egui::Event::PointerButton { pos, .. } = event {
                self.last_pos = *pos;
            }
        }
        if self.ended.take() {
            input.events.push(egui::Event::PointerButton {
                pos: self.last_pos,
                button: egui::PointerButton::Primary,
                pressed: false,
                modifiers: egui::Modifiers::NONE,
            });
        }
    }
}

/// The hub models the picker offers, with their download sizes.
pub const HUB_MODELS: &[(&str, &str, f64)] = &[
    ("facebook/musicgen-small", "small", 2.4),
    ("facebook/musicgen-medium", "medium", 8.0),
    ("facebook/musicgen-large", "large", 14.0),
];

/// Everything the window shows and changes, besides egui's own state.
pub struct EditorModel {
    pub instance: Arc<Instance>,
    pub params: Box<dyn ParamWrite>,
    pub drag: Option<Box<dyn FileDrag>>,
    /// The local folder typed into the model picker.
    pub local_path: String,
    /// A short message about the last action (copied, revealed, purged...).
    pub notice: Option<String>,
    waveforms: HashMap<String, Vec<(f32, f32)>>,
    /// The picked hub model's size in the cache, read at most every few
    /// seconds (the window redraws 20 times a second).
    on_disk: Option<(String, std::time::Instant, Option<u64>)>,
}

impl EditorModel {
    pub fn new(
        instance: Arc<Instance>,
        params: Box<dyn ParamWrite>,
        drag: Option<Box<dyn FileDrag>>,
    ) -> Self {
        let local_path = match &instance.session.read().settings.model {
            ModelSource::Local { path } => path.display().to_string(),
            ModelSource::Hub { .. } => String::new(),
        };
        Self {
            instance,
            params,
            drag,
            local_path,
            notice: None,
            waveforms: HashMap::new(),
            on_disk: None,
        }
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
    Error(String),
}

fn job_text(job: &Job) -> (f32, String) {
    let p = job.progress.lock().clone();
    match p.stage {
        JobStage::Queued => (0.0, "Waiting for the other generations…".into()),
        JobStage::Downloading { file, done, total } => (
            if total > 0 {
                done as f32 / total as f32
            } else {
                0.0
            },
            format!(
                "Downloading {file}: {:.0} of {:.0} MB",
                done as f64 / 1e6,
                total as f64 / 1e6
            ),
        ),
        JobStage::Loading => (0.0, "Loading the model…".into()),
        JobStage::EncodingText => (0.0, "Reading the prompt…".into()),
        JobStage::Generating => {
            let f = if p.total > 0 {
                p.step as f32 / p.total as f32
            } else {
                0.0
            };
            let eta = p
                .eta_s
                .map(|s| format!(", {s:.0} s left"))
                .unwrap_or_default();
            (
                f,
                format!(
                    "Generating: step {} of {}, {:.1} steps/s{eta}",
                    p.step, p.total, p.steps_per_s
                ),
            )
        }
        JobStage::DecodingAudio => (1.0, "Decoding audio…".into()),
        JobStage::Saving => (1.0, "Saving the take…".into()),
        JobStage::Done => (1.0, "Done".into()),
        JobStage::Cancelled => (0.0, "Cancelled".into()),
        JobStage::Failed(e) => (0.0, e),
    }
}

/// What the window should say the instance is doing.
pub fn activity(instance: &Instance) -> Activity {
    let running = instance.jobs().into_iter().find(|j| !j.stage().finished());
    if let Some(job) = running {
        let (fraction, text) = job_text(&job);
        if let JobStage::Downloading { file, .. } = job.stage() {
            return Activity::Downloading { file, fraction };
        }
        return Activity::Generating { fraction, text };
    }
    if let Some(e) = instance.session.read().last_error.clone() {
        return Activity::Error(e);
    }
    let recent = instance.jobs().into_iter().rev().find_map(|j| {
        let p = j.progress.lock().clone();
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
pub fn advice(error: &str) -> &'static str {
    let e = error.to_lowercase();
    if e.contains("not active") {
        "Start the host's audio engine (or play), then try again."
    } else if e.contains("30 s") || e.contains("bars at") {
        "Choose fewer bars, or a length in seconds."
    } else if e.contains("missing") || e.contains("not found") || e.contains("no such") {
        "Check the model folder: it needs config.json, the weights and tokenizer.json."
    } else if e.contains("hub") || e.contains("download") || e.contains("network") {
        "Check the internet connection, or pick a model folder on disk."
    } else if e.contains("prompt") {
        "Shorten the prompt."
    } else {
        "Try again; if it keeps failing, pick another model or device."
    }
}

/// Whether a hub model is in the Hugging Face cache, and its size on disk.
pub fn hub_model_on_disk(id: &str) -> Option<u64> {
    let cache = std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .or_else(|| dirs::cache_dir().map(|c| c.join("huggingface").join("hub")))?;
    let dir = cache.join(format!("models--{}", id.replace('/', "--")));
    let blobs = std::fs::read_dir(dir.join("blobs")).ok()?;
    let size: u64 = blobs
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    (size > 0).then_some(size)
}

/// Draws the whole window.
pub fn draw(ui: &mut Ui, model: &mut EditorModel) {
    if let Some(e) = model.drag.as_mut().and_then(|d| d.take_error()) {
        model.notice = Some(e);
    }
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show(ui, |ui| {
            ui.heading("Promptloop");
            ui.add_space(4.0);
            draw_prompt(ui, model);
            ui.separator();
            draw_model(ui, model);
            ui.separator();
            draw_settings(ui, model);
            ui.separator();
            draw_generate(ui, model);
            ui.separator();
            draw_takes(ui, model);
            ui.separator();
            draw_footer(ui, model);
        });
}

fn draw_prompt(ui: &mut Ui, model: &mut EditorModel) {
    let label = ui.label(RichText::new("Prompt").strong());
    let mut prompt = model.instance.session.read().settings.prompt.clone();
    let edit = egui::TextEdit::multiline(&mut prompt)
        .hint_text("dusty boom-bap drums, 90 bpm")
        .desired_rows(3)
        .desired_width(f32::INFINITY);
    if ui.add(edit).labelled_by(label.id).changed() {
        model.instance.session.write().settings.prompt = prompt;
    }
    let recent = model.instance.session.read().recent_prompts.clone();
    if !recent.is_empty() {
        egui::ComboBox::from_label("Recent prompts")
            .selected_text("…")
            .width(ui.available_width() - 120.0)
            .show_ui(ui, |ui| {
                for p in recent {
                    if ui.selectable_label(false, &p).clicked() {
                        model.instance.session.write().settings.prompt = p;
                    }
                }
            });
    }
}

fn draw_model(ui: &mut Ui, model: &mut EditorModel) {
    let current = model.instance.session.read().settings.model.clone();
    ui.horizontal(|ui| {
        let label = ui.label(RichText::new("Model").strong());
        let selected = match &current {
            ModelSource::Hub { id, .. } => HUB_MODELS
                .iter()
                .find(|m| m.0 == id)
                .map_or(id.clone(), |m| format!("MusicGen {}", m.1)),
            ModelSource::Local { .. } => "Local folder".into(),
        };
        egui::ComboBox::from_id_salt("model")
            .selected_text(selected)
            .show_ui(ui, |ui| {
                for (id, name, _) in HUB_MODELS {
                    let is = matches!(&current, ModelSource::Hub { id: i, .. } if i == id);
                    if ui
                        .selectable_label(is, format!("MusicGen {name} (hub)"))
                        .clicked()
                    {
                        model.instance.session.write().settings.model = ModelSource::Hub {
                            id: id.to_string(),
                            revision: "main".into(),
                        };
                    }
                }
                let is_local = matches!(current, ModelSource::Local { .. });
                if ui.selectable_label(is_local, "Local folder").clicked() {
                    model.instance.session.write().settings.model = ModelSource::Local {
                        path: PathBuf::from(&model.local_path),
                    };
                }
            })
            .response
            .labelled_by(label.id);
    });
    match &current {
        ModelSource::Hub { id, .. } => {
            let size = HUB_MODELS.iter().find(|m| m.0 == id).map_or(0.0, |m| m.2);
            let fresh = model.on_disk.as_ref().is_some_and(|(cached, at, _)| {
                cached == id && at.elapsed() < std::time::Duration::from_secs(3)
            });
            if !fresh {
                model.on_disk =
                    Some((id.clone(), std::time::Instant::now(), hub_model_on_disk(id)));
            }
            let on_disk = model.on_disk.as_ref().and_then(|c| c.2);
            let text = match on_disk {
                Some(bytes) => format!("Downloaded ({:.1} GB)", bytes as f64 / 1e9),
                None => format!("Not downloaded yet: about {size:.1} GB on first use"),
            };
            ui.label(text);
        }
        ModelSource::Local { .. } => {
            ui.horizontal(|ui| {
                let label = ui.label("Model folder");
                let edit = egui::TextEdit::singleline(&mut model.local_path)
                    .hint_text("/path/to/musicgen-small")
                    .desired_width(f32::INFINITY);
                if ui.add(edit).labelled_by(label.id).changed() {
                    model.instance.session.write().settings.model = ModelSource::Local {
                        path: PathBuf::from(&model.local_path),
                    };
                }
            });
            let ok = PathBuf::from(&model.local_path)
                .join("config.json")
                .exists();
            ui.label(if ok {
                "Folder holds a checkpoint (config.json found)"
            } else {
                "Needs config.json, model.safetensors and tokenizer.json"
            });
        }
    }
    ui.label(
        RichText::new(
            "Meta's MusicGen weights are licensed CC-BY-NC 4.0: non-commercial use only.",
        )
        .small()
        .italics(),
    );
}

fn draw_settings(ui: &mut Ui, model: &mut EditorModel) {
    let mut s = model.instance.session.read().settings.clone();
    let before = s.clone();
    let tempo = model.instance.host.tempo();
    let (num, den) = model.instance.host.time_signature().unwrap_or((4, 4));
    egui::Grid::new("settings")
        .num_columns(2)
        .spacing([12.0, 6.0])
        .show(ui, |ui| {
            let length_label = ui.label("Length");
            ui.horizontal(|ui| {
                let bars = matches!(s.length, Length::Bars(_));
                if ui.radio(bars, "Bars").clicked() && !bars {
                    s.length = Length::Bars(4.0);
                }
                if ui.radio(!bars, "Seconds").clicked() && bars {
                    s.length = Length::Seconds(8.0);
                }
                match &mut s.length {
                    Length::Bars(b) => {
                        ui.add(egui::DragValue::new(b).range(0.25..=64.0).speed(0.25))
                            .labelled_by(length_label.id);
                        let t = tempo.unwrap_or(FALLBACK_TEMPO);
                        let secs = crate::clip::bars_to_seconds(*b, t, num, den);
                        let host = if tempo.is_some() {
                            format!("at the host's {t:.1} bpm, {num}/{den}")
                        } else {
                            format!("at {t:.0} bpm, {num}/{den} (the host gives no tempo)")
                        };
                        ui.label(format!("= {secs:.2} s {host}"));
                        if secs > MAX_SECONDS {
                            ui.colored_label(Color32::LIGHT_RED, "over MusicGen's 30 s");
                        }
                    }
                    Length::Seconds(x) => {
                        ui.add(
                            egui::DragValue::new(x)
                                .range(0.5..=MAX_SECONDS)
                                .speed(0.1)
                                .suffix(" s"),
                        )
                        .labelled_by(length_label.id);
                    }
                }
            });
            ui.end_row();

            let l = ui.label("Guidance");
            ui.add(egui::Slider::new(&mut s.guidance_scale, 1.0..=10.0))
                .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Top-k");
            ui.add(egui::Slider::new(&mut s.top_k, 0..=500).text("0 = off"))
                .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Temperature");
            ui.add(egui::Slider::new(&mut s.temperature, 0.1..=2.0))
                .labelled_by(l.id);
            ui.end_row();

            let seed_label = ui.label("Seed");
            ui.horizontal(|ui| {
                let mut random = s.seed.is_none();
                if ui.checkbox(&mut random, "Random").changed() {
                    s.seed = if random { None } else { Some(0) };
                }
                if let Some(seed) = &mut s.seed {
                    ui.add(egui::DragValue::new(seed))
                        .labelled_by(seed_label.id);
                }
            });
            ui.end_row();

            ui.label("Device");
            ui.horizontal(|ui| {
                ui.selectable_value(&mut s.device, DeviceChoice::Auto, "Auto");
                ui.selectable_value(&mut s.device, DeviceChoice::Cpu, "CPU");
                if cfg!(feature = "cuda") {
                    ui.selectable_value(&mut s.device, DeviceChoice::Cuda, "GPU (CUDA)");
                }
                if cfg!(feature = "metal") {
                    ui.selectable_value(&mut s.device, DeviceChoice::Metal, "GPU (Metal)");
                }
            });
            ui.end_row();

            let l = ui.label("Precision");
            egui::ComboBox::from_id_salt("precision")
                .selected_text(s.precision.name())
                .show_ui(ui, |ui| {
                    for (p, what) in [
                        (Precision::Q8_0, "q8_0: fast, near f32 (default)"),
                        (Precision::Q4K, "q4k: fastest, smallest"),
                        (Precision::F32, "f32: the reference"),
                        (Precision::F16, "f16: for GPUs"),
                    ] {
                        ui.selectable_value(&mut s.precision, p, what);
                    }
                })
                .response
                .labelled_by(l.id);
            ui.end_row();
        });
    if s != before {
        s.sanitize();
        model.instance.session.write().settings = s;
    }
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
            if let Err(e) = model.instance.generate() {
                model.notice = Some(e);
            }
        }
        if ui.add_enabled(busy, egui::Button::new("Cancel")).clicked() {
            model.instance.cancel_all();
        }
    });
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
    let report = model.instance.session.read().load_report.clone();
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

/// Min/max per column, scaled so the loudest sample reaches the edge (quiet
/// takes stay readable).
fn waveform(samples: &[f32], columns: usize) -> Vec<(f32, f32)> {
    let columns = columns.max(1);
    let per = samples.len().div_ceil(columns).max(1);
    let peak = samples.iter().fold(0.0f32, |p, s| p.max(s.abs())).max(1e-6);
    samples
        .chunks(per)
        .map(|c| {
            let (lo, hi) = c
                .iter()
                .fold((0.0f32, 0.0f32), |(lo, hi), &s| (lo.min(s), hi.max(s)));
            (lo / peak, hi / peak)
        })
        .collect()
}

fn draw_takes(ui: &mut Ui, model: &mut EditorModel) {
    let takes: Vec<Take> = model
        .instance
        .session
        .read()
        .takes
        .iter()
        .filter(|t| !t.meta.hidden)
        .cloned()
        .collect();
    let selected = model.instance.session.read().selected.clone();
    ui.label(RichText::new(format!("Takes ({})", takes.len())).strong());
    if takes.is_empty() {
        ui.label("No takes yet.");
    }
    let playhead = model.instance.playhead.get();
    let mode = model.params.mode();
    for take in takes.iter().rev() {
        let m = &take.meta;
        let is_selected = selected.as_deref() == Some(m.id.as_str());
        let frame = egui::Frame::group(ui.style()).stroke(if is_selected {
            Stroke::new(2.0, Color32::from_rgb(0x2f, 0x6f, 0xd8))
        } else {
            ui.style().visuals.widgets.noninteractive.bg_stroke
        });
        frame.show(ui, |ui| {
            ui.set_width(ui.available_width());
            let prompt = if m.request.prompt.trim().is_empty() {
                "(no prompt)".to_string()
            } else {
                m.request.prompt.clone()
            };
            ui.label(RichText::new(prompt).strong());
            let mut facts = format!("{:.2} s", m.seconds);
            if let (Some(b), Some((n, d))) = (m.bars, m.time_signature) {
                facts.push_str(&format!(" · {b} bars of {n}/{d}"));
            }
            if let Some(t) = m.tempo {
                facts.push_str(&format!(" · {t:.1} bpm"));
            }
            facts.push_str(&format!(" · seed {}", m.request.seed));
            ui.label(facts);
            if let (Some(t), Some(host)) = (m.tempo, model.instance.host.tempo()) {
                if m.bars.is_some() && (t - host).abs() > 1e-6 {
                    ui.colored_label(
                        Color32::from_rgb(0xd0, 0xa0, 0x30),
                        format!("Made at {t:.1} bpm; the host runs {host:.1}: it plays at its own length"),
                    );
                }
            }
            match &take.status {
                TakeStatus::Missing(why) => {
                    ui.colored_label(Color32::LIGHT_RED, format!("Missing audio: {why}"));
                }
                TakeStatus::Loading => {
                    ui.label("Loading…");
                }
                TakeStatus::Ready => {}
            }
            // Waveform with the playhead.
            let width = ui.available_width().max(50.0);
            let (resp, painter) = ui.allocate_painter(Vec2::new(width, 48.0), Sense::hover());
            let rect = resp.rect;
            painter.rect_filled(rect, 2.0, ui.style().visuals.extreme_bg_color);
            if let Some(pcm) = &take.pcm {
                let cols = rect.width() as usize;
                let wave = model
                    .waveforms
                    .entry(m.id.clone())
                    .or_insert_with(|| waveform(pcm, cols.max(1)));
                let n = wave.len().max(1) as f32;
                let mid = rect.center().y;
                let half = rect.height() / 2.0;
                for (i, (lo, hi)) in wave.iter().enumerate() {
                    let x = rect.left() + rect.width() * (i as f32 + 0.5) / n;
                    painter.line_segment(
                        [
                            egui::pos2(x, mid - hi.clamp(-1.0, 1.0) * half),
                            egui::pos2(x, mid - lo.clamp(-1.0, 1.0) * half),
                        ],
                        Stroke::new(1.0, Color32::from_rgb(0x6a, 0xa8, 0xf0)),
                    );
                }
            }
            if let Some((key, at)) = playhead {
                if key == m.key() {
                    let x = rect.left() + rect.width() * at.clamp(0.0, 1.0);
                    painter.line_segment(
                        [egui::pos2(x, rect.top()), egui::pos2(x, rect.bottom())],
                        Stroke::new(2.0, Color32::WHITE),
                    );
                }
            }
            ui.horizontal_wrapped(|ui| {
                let ready = take.clip.is_some();
                if ui.add_enabled(ready, egui::Button::new("Preview")).clicked() {
                    model.instance.preview(&m.id);
                }
                let looping = is_selected && mode == PlayMode::Loop;
                if ui
                    .add_enabled(ready, egui::Button::new("Loop").selected(looping))
                    .clicked()
                {
                    model.instance.select(Some(&m.id));
                    model.params.set_mode(PlayMode::Loop);
                }
                let midi = is_selected && mode == PlayMode::Midi;
                if ui
                    .add_enabled(ready, egui::Button::new("MIDI").selected(midi))
                    .on_hover_text("Select this take for MIDI notes")
                    .clicked()
                {
                    model.instance.select(Some(&m.id));
                    model.params.set_mode(PlayMode::Midi);
                }
                if ui
                    .button("Use seed")
                    .on_hover_text("Make the next takes with this seed")
                    .clicked()
                {
                    model.instance.session.write().settings.seed = Some(m.request.seed);
                }
                if ui.button("Regenerate").clicked() {
                    if let Err(e) = model.instance.regenerate(&m.id) {
                        model.notice = Some(e);
                    }
                }
                if ui.button("Delete").clicked() {
                    model.instance.delete(&m.id);
                }
                if ui.add_enabled(ready, egui::Button::new("Copy path")).clicked() {
                    match export(model, take) {
                        Ok(path) => {
                            ui.ctx().copy_text(path.display().to_string());
                            model.notice = Some(format!("Copied {}", path.display()));
                        }
                        Err(e) => model.notice = Some(e),
                    }
                }
                if ui.add_enabled(ready, egui::Button::new("Reveal file")).clicked() {
                    match export(model, take) {
                        Ok(path) => reveal(model, &path),
                        Err(e) => model.notice = Some(e),
                    }
                }
                let handle = ui.add_enabled(
                    ready,
                    egui::Button::new("Drag to a track").sense(Sense::click_and_drag()),
                );
                if handle.drag_started() {
                    match export(model, take) {
                        Ok(path) => match model.drag.as_mut() {
                            Some(d) => {
                                if let Err(e) = d.start(vec![path]) {
                                    model.notice = Some(e);
                                }
                            }
                            None => {
                                model.notice =
                                    Some("Dragging is not available here: use Copy path".into())
                            }
                        },
                        Err(e) => model.notice = Some(e),
                    }
                }
            });
        });
    }
}

/// The take as a WAV at the host's rate, written if needed.
fn export(model: &EditorModel, take: &Take) -> Result<PathBuf, String> {
    let clip = take
        .clip
        .as_ref()
        .ok_or("the take is still loading".to_string())?;
    let folder = model.instance.exports_folder();
    crate::export::export_take(&folder, &take.meta, clip)
}

fn reveal(model: &mut EditorModel, path: &std::path::Path) {
    let folder = path.parent().unwrap_or(path);
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(target_os = "windows") {
        "explorer"
    } else {
        "xdg-open"
    };
    model.notice = Some(
        match std::process::Command::new(opener).arg(folder).spawn() {
            Ok(_) => format!("Opened {}", folder.display()),
            Err(e) => format!("Cannot open {} ({opener}: {e})", folder.display()),
        },
    );
}

fn draw_footer(ui: &mut Ui, model: &mut EditorModel) {
    ui.horizontal_wrapped(|ui| {
        if ui
            .button("Unload model")
            .on_hover_text("Free the model's memory now; the next generation loads it again")
            .clicked()
        {
            model.instance.unload_models();
            model.notice = Some("Model unloaded".into());
        }
        if ui
            .button("Purge unused takes")
            .on_hover_text(
                "Delete take files no open Promptloop refers to (projects not open now are not known)",
            )
            .clicked()
        {
            let folder = model.instance.takes_folder();
            model.notice = Some(match crate::instance::purge_unused_takes(&folder) {
                Ok(removed) => format!("Removed {} unused take files", removed.len()),
                Err(e) => format!("Cannot purge {}: {e}", folder.display()),
            });
        }
    });
    if let Some(n) = &model.notice {
        ui.label(RichText::new(n).small());
    }
}

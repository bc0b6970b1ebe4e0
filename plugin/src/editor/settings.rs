//! The settings part of the window: the prompt, the model picker and the
//! sampling settings. Each edits the frame's draft of the settings, which the
//! view turns into one action.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui::{Color32, RichText, Ui};
use musicgen::{DeviceChoice, ModelSource, Precision};

use super::view::EditorModel;
use crate::clip::bars_to_seconds;
use crate::models::{capabilities, hub_model, hub_model_on_disk, HUB_MODELS};
use crate::request::{FALLBACK_TEMPO, MAX_SECONDS};
use crate::session::{Length, Settings};
use crate::take::MelodySource;

pub(super) fn draw_prompt(ui: &mut Ui, model: &mut EditorModel, s: &mut Settings) {
    let label = ui.label(RichText::new("Prompt").strong());
    let edit = egui::TextEdit::multiline(&mut s.prompt)
        .hint_text("dusty boom-bap drums, 90 bpm")
        .desired_rows(3)
        .desired_width(f32::INFINITY);
    ui.add(edit).labelled_by(label.id);
    let recent = model.instance.session().recent_prompts().to_vec();
    if !recent.is_empty() {
        egui::ComboBox::from_label("Recent prompts")
            .selected_text("…")
            .width(ui.available_width() - 120.0)
            .show_ui(ui, |ui| {
                for p in recent {
                    if ui.selectable_label(false, &p).clicked() {
                        s.prompt = p;
                    }
                }
            });
    }
}

pub(super) fn draw_model(ui: &mut Ui, model: &mut EditorModel, s: &mut Settings) {
    let current = s.model.clone();
    ui.horizontal(|ui| {
        let label = ui.label(RichText::new("Model").strong());
        let selected = match &current {
            ModelSource::Hub { id, .. } => {
                hub_model(id).map_or(id.clone(), |m| format!("MusicGen {}", m.name))
            }
            ModelSource::Local { .. } => "Local folder".into(),
        };
        egui::ComboBox::from_id_salt("model")
            .selected_text(selected)
            // Every model and "Local folder" in view, without scrolling.
            .height(480.0)
            .show_ui(ui, |ui| {
                for m in HUB_MODELS {
                    let is = matches!(&current, ModelSource::Hub { id, .. } if id == m.id);
                    let text = format!(
                        "MusicGen {} (hub, {:.1} GB: {})",
                        m.name,
                        m.download_gb,
                        m.can.describe()
                    );
                    if ui.selectable_label(is, text).clicked() {
                        s.model = ModelSource::Hub {
                            id: m.id.to_string(),
                            revision: "main".into(),
                        };
                    }
                }
                let is_local = matches!(current, ModelSource::Local { .. });
                if ui.selectable_label(is_local, "Local folder").clicked() {
                    s.model = ModelSource::Local {
                        path: PathBuf::from(&model.local_path),
                    };
                }
            })
            .response
            .labelled_by(label.id);
    });
    match &current {
        ModelSource::Hub { id, .. } => draw_hub_status(ui, model, id),
        ModelSource::Local { .. } => draw_local_folder(ui, model, s),
    }
    draw_melody(ui, model, s);
    ui.label(
        RichText::new(
            "Meta's MusicGen weights are licensed CC-BY-NC 4.0: non-commercial use only.",
        )
        .small()
        .italics(),
    );
}

/// The melody the next takes follow: which, and a way to clear it; disabled,
/// with the reason, when the model takes none.
fn draw_melody(ui: &mut Ui, model: &EditorModel, s: &mut Settings) {
    let can = capabilities(&s.model);
    if let Some(c) = can {
        ui.label(format!("This model: {}", c.describe()));
    }
    let takes_melody = can.is_none_or(|c| c.melody);
    ui.horizontal(|ui| {
        let label = ui.label("Melody");
        let text = match &s.melody {
            None => "none (Use as melody on a take sets one)".to_string(),
            Some(MelodySource::Take { of }) => {
                let session = model.instance.session();
                match session.take(of) {
                    Some(t) => format!("the take \"{}\"", t.meta.request.prompt),
                    None => format!("take {of} (not in this project)"),
                }
            }
            Some(MelodySource::Notes { notes, seconds }) => {
                format!("{} MIDI notes over {seconds:.1} s", notes.len())
            }
        };
        ui.add_enabled(takes_melody, egui::Label::new(text))
            .labelled_by(label.id);
        if s.melody.is_some() && ui.button("Clear melody").clicked() {
            s.melody = None;
        }
    });
    if !takes_melody {
        ui.label(
            RichText::new("This model takes no melody: pick MusicGen melody or stereo melody.")
                .small(),
        );
    }
}

/// Whether the picked hub model is downloaded; the cache is read at most
/// every 3 s.
fn draw_hub_status(ui: &mut Ui, model: &mut EditorModel, id: &str) {
    let size = hub_model(id).map_or(0.0, |m| m.download_gb);
    let fresh = model
        .on_disk
        .as_ref()
        .is_some_and(|(cached, at, _)| cached == id && at.elapsed() < Duration::from_secs(3));
    if !fresh {
        model.on_disk = Some((id.to_string(), Instant::now(), hub_model_on_disk(id)));
    }
    let text = match model.on_disk.as_ref().and_then(|c| c.2) {
        Some(bytes) => format!("Downloaded ({:.1} GB)", bytes as f64 / 1e9),
        None => format!("Not downloaded yet: about {size:.1} GB on first use"),
    };
    ui.label(text);
}

fn draw_local_folder(ui: &mut Ui, model: &mut EditorModel, s: &mut Settings) {
    ui.horizontal(|ui| {
        let label = ui.label("Model folder");
        let edit = egui::TextEdit::singleline(&mut model.local_path)
            .hint_text("/path/to/musicgen-small")
            .desired_width(f32::INFINITY);
        if ui.add(edit).labelled_by(label.id).changed() {
            s.model = ModelSource::Local {
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

pub(super) fn draw_settings(ui: &mut Ui, model: &mut EditorModel, s: &mut Settings) {
    egui::Grid::new("settings")
        .num_columns(2)
        .spacing([12.0, 6.0])
        .show(ui, |ui| {
            draw_length(ui, model, s);
            ui.end_row();
            draw_sampling(ui, s);
            draw_seed(ui, s);
            ui.end_row();
            draw_device_and_precision(ui, s);
        });
}

fn draw_length(ui: &mut Ui, model: &EditorModel, s: &mut Settings) {
    let tempo = model.instance.host.tempo();
    let (num, den) = model.instance.host.time_signature().unwrap_or((4, 4));
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
                ui.add(egui::DragValue::new(b).range(0.25..=256.0).speed(0.25))
                    .labelled_by(length_label.id);
                let t = tempo.unwrap_or(FALLBACK_TEMPO);
                let secs = bars_to_seconds(*b, t, num, den);
                let host = if tempo.is_some() {
                    format!("at the host's {t:.1} bpm, {num}/{den}")
                } else {
                    format!("at {t:.0} bpm, {num}/{den} (the host gives no tempo)")
                };
                ui.label(format!("= {secs:.2} s {host}"));
                if secs > MAX_SECONDS {
                    ui.colored_label(Color32::LIGHT_RED, "over the 5-minute limit");
                } else if secs > 30.0 {
                    ui.label("(past 30 s: made in 30 s windows)");
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
}

fn draw_sampling(ui: &mut Ui, s: &mut Settings) {
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
}

fn draw_seed(ui: &mut Ui, s: &mut Settings) {
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
}

fn draw_device_and_precision(ui: &mut Ui, s: &mut Settings) {
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
}

//! The takes part of the window: one card per take, newest first, with its
//! facts, its waveform and playhead, and what can be done with it.

use egui::{Color32, RichText, Sense, Stroke, Ui, Vec2};

use super::view::{EditorAction, EditorModel};
use crate::models::capabilities;
use crate::player::PlayMode;
use crate::take::{MelodySource, Take, TakeKey, TakeSource, TakeStatus};

/// A path field and a button that make a take of an audio file.
pub(super) fn draw_import(ui: &mut Ui, model: &mut EditorModel) {
    ui.horizontal(|ui| {
        let label = ui.label("Import a file");
        let edit = egui::TextEdit::singleline(&mut model.import_path)
            .hint_text("/path/to/loop.wav, .flac, .mp3 or .ogg")
            .desired_width(ui.available_width() - 80.0);
        ui.add(edit).labelled_by(label.id);
        let path = model.import_path.trim().to_string();
        if ui
            .add_enabled(!path.is_empty(), egui::Button::new("Import"))
            .clicked()
        {
            model.act(EditorAction::Import(path.into()));
        }
    });
}

/// Where a take came from, in a few words ("" for a plain text take).
fn origin(take: &Take, short: impl Fn(&crate::take::TakeId) -> String) -> String {
    let mut parts = Vec::new();
    match &take.meta.source {
        TakeSource::Text => {}
        TakeSource::Continuation { of, prompt_seconds } => parts.push(format!(
            "continues {} (from its last {prompt_seconds:.1} s)",
            short(of)
        )),
        TakeSource::Captured => parts.push("captured from the input".to_string()),
        TakeSource::Imported { path } => parts.push(format!(
            "imported from {}",
            path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into()
            )
        )),
    }
    match &take.meta.melody {
        Some(MelodySource::Take { of }) => parts.push(format!("melody of {}", short(of))),
        Some(MelodySource::Notes { notes, .. }) => {
            parts.push(format!("melody of {} MIDI notes", notes.len()))
        }
        None => {}
    }
    parts.join(" · ")
}

pub(super) fn draw_takes(ui: &mut Ui, model: &mut EditorModel) {
    let (takes, selected) = {
        let session = model.instance.session();
        let takes: Vec<Take> = session.visible_takes().cloned().collect();
        (takes, session.selected().cloned())
    };
    ui.label(RichText::new(format!("Takes ({})", takes.len())).strong());
    if takes.is_empty() {
        ui.label("No takes yet.");
    }
    let playhead = model.instance.playhead.get();
    for take in takes.iter().rev() {
        let is_selected = selected.as_ref() == Some(&take.meta.id);
        let frame = egui::Frame::group(ui.style()).stroke(if is_selected {
            Stroke::new(2.0, Color32::from_rgb(0x2f, 0x6f, 0xd8))
        } else {
            ui.style().visuals.widgets.noninteractive.bg_stroke
        });
        frame.show(ui, |ui| {
            ui.set_width(ui.available_width());
            draw_facts(ui, model, take);
            draw_waveform(ui, model, take, playhead);
            draw_buttons(ui, model, take, is_selected);
        });
    }
}

/// The prompt, length, bars, tempo and seed, and whether the audio is there.
fn draw_facts(ui: &mut Ui, model: &EditorModel, take: &Take) {
    let m = &take.meta;
    let prompt = if m.request.prompt.trim().is_empty() {
        "(no prompt)".to_string()
    } else {
        m.request.prompt.clone()
    };
    ui.label(RichText::new(prompt).strong());
    let short = |id: &crate::take::TakeId| {
        let session = model.instance.session();
        match session.take(id) {
            Some(t) if !t.meta.request.prompt.trim().is_empty() => {
                format!("\"{}\"", t.meta.request.prompt)
            }
            _ => format!("take {id}"),
        }
    };
    let from = origin(take, short);
    if !from.is_empty() {
        ui.label(RichText::new(from).italics());
    }
    let mut facts = format!("{:.2} s", m.seconds);
    if m.channels == 2 {
        facts.push_str(" · stereo");
    }
    if let (Some(b), Some((n, d))) = (m.bars, m.time_signature) {
        facts.push_str(&format!(" · {b} bars of {n}/{d}"));
    }
    if let Some(t) = m.tempo {
        facts.push_str(&format!(" · {t:.1} bpm"));
    }
    if m.source.generated() {
        facts.push_str(&format!(" · seed {}", m.request.seed));
    }
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

fn draw_waveform(
    ui: &mut Ui,
    model: &mut EditorModel,
    take: &Take,
    playhead: Option<(TakeKey, f32)>,
) {
    let width = ui.available_width().max(50.0);
    let (resp, painter) = ui.allocate_painter(Vec2::new(width, 48.0), Sense::hover());
    let rect = resp.rect;
    painter.rect_filled(rect, 2.0, ui.style().visuals.extreme_bg_color);
    if let Some(pcm) = &take.pcm {
        let cols = rect.width() as usize;
        let wave = model
            .waveforms
            .entry(take.meta.id.clone())
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
    if let Some((_, at)) = playhead.filter(|(key, _)| *key == take.meta.id.key()) {
        let x = rect.left() + rect.width() * at.clamp(0.0, 1.0);
        painter.line_segment(
            [egui::pos2(x, rect.top()), egui::pos2(x, rect.bottom())],
            Stroke::new(2.0, Color32::WHITE),
        );
    }
}

fn draw_buttons(ui: &mut Ui, model: &mut EditorModel, take: &Take, is_selected: bool) {
    let id = &take.meta.id;
    let mode = model.params.mode();
    let ready = take.clip.is_some();
    ui.horizontal_wrapped(|ui| {
        if ui
            .add_enabled(ready, egui::Button::new("Preview"))
            .clicked()
        {
            model.act(EditorAction::Preview(id.clone()));
        }
        let looping = is_selected && mode == PlayMode::Loop;
        if ui
            .add_enabled(ready, egui::Button::new("Loop").selected(looping))
            .clicked()
        {
            model.act(EditorAction::Play(id.clone(), PlayMode::Loop));
        }
        let midi = is_selected && mode == PlayMode::Midi;
        if ui
            .add_enabled(ready, egui::Button::new("MIDI").selected(midi))
            .on_hover_text("Select this take for MIDI notes")
            .clicked()
        {
            model.act(EditorAction::Play(id.clone(), PlayMode::Midi));
        }
        if ui
            .button("Use seed")
            .on_hover_text("Make the next takes with this seed")
            .clicked()
        {
            model.act(EditorAction::UseSeed(id.clone()));
        }
        let repeatable = take.meta.source.repeatable();
        if ui
            .add_enabled(repeatable, egui::Button::new("Regenerate"))
            .on_disabled_hover_text("A captured take is a recording: capture it again instead")
            .clicked()
        {
            model.act(EditorAction::Regenerate(id.clone()));
        }
        let has_audio = take.pcm.is_some();
        if ui
            .add_enabled(has_audio, egui::Button::new("Continue"))
            .on_hover_text("A new take that carries on from this one's end, for the length above")
            .clicked()
        {
            model.act(EditorAction::Continue(id.clone()));
        }
        let settings_model = model.instance.session().settings().model.clone();
        let melody_model = capabilities(&settings_model).is_none_or(|c| c.melody);
        if ui
            .add_enabled(
                has_audio && melody_model,
                egui::Button::new("Use as melody"),
            )
            .on_hover_text("The next takes follow this take's melody")
            .on_disabled_hover_text("Needs a melody model (MusicGen melody or stereo melody)")
            .clicked()
        {
            model.act(EditorAction::UseAsMelody(id.clone()));
        }
        if ui.button("Delete").clicked() {
            model.act(EditorAction::Delete(id.clone()));
        }
        if ui
            .add_enabled(ready, egui::Button::new("Copy path"))
            .clicked()
        {
            model.act(EditorAction::CopyPath(id.clone()));
        }
        if ui
            .add_enabled(ready, egui::Button::new("Reveal file"))
            .clicked()
        {
            model.act(EditorAction::Reveal(id.clone()));
        }
        let handle = ui.add_enabled(
            ready,
            egui::Button::new("Drag to a track").sense(Sense::click_and_drag()),
        );
        if handle.drag_started() {
            model.act(EditorAction::DragOut(id.clone()));
        }
    });
}

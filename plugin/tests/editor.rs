//! The editor driven as a producer would, through egui's accessibility tree
//! (egui_kittest): type a prompt, pick a model folder, generate with a tiny
//! fixture model, watch the progress, see the take appear, preview it, delete it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use musicgen::ModelSource;
use parking_lot::Mutex;
use promptloop::testing::{
    draw, AudioCommand, DragEnded, EditorModel, FileDrag, Instance, Length, ParamWrite, PlayMode,
    ReleaseAfterDrag,
};
use test_support::{tiny_model, wait_for};

/// Records parameter changes as the host would apply them.
struct TestParams(Arc<Mutex<PlayMode>>);

impl ParamWrite for TestParams {
    fn set_mode(&self, mode: PlayMode) {
        *self.0.lock() = mode;
    }
    fn mode(&self) -> PlayMode {
        *self.0.lock()
    }
}

fn harness(instance: &Arc<Instance>, mode: Arc<Mutex<PlayMode>>) -> Harness<'static, EditorModel> {
    let model = EditorModel::new(instance.clone(), Box::new(TestParams(mode)), None);
    Harness::builder()
        .with_size([620.0, 1400.0])
        .build_ui_state(draw, model)
}

/// Steps the UI (as its repaint timer would) until `done` or the timeout.
fn step_until(
    h: &mut Harness<'static, EditorModel>,
    what: &str,
    mut done: impl FnMut(&mut Harness<'static, EditorModel>) -> bool,
) {
    let start = Instant::now();
    while !done(h) {
        assert!(start.elapsed() < Duration::from_secs(120), "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
        h.step();
    }
}

#[test]
fn type_generate_watch_preview_and_delete() {
    let data = tempfile::tempdir().unwrap();
    let (instance, mut audio) = Instance::new();
    instance.activate(48_000);
    instance.update_settings(|s| s.data_folder = Some(data.path().to_path_buf()));
    let mode = Arc::new(Mutex::new(PlayMode::Midi));
    let mut h = harness(&instance, mode.clone());
    h.run();

    // Idle looks idle; the licence is shown where the model is chosen.
    h.get_by_label_contains("Ready.");
    h.get_by_label_contains("CC-BY-NC 4.0");
    h.get_by_label("No takes yet.");

    // Type a prompt.
    h.get_by_role_and_label(Role::MultilineTextInput, "Prompt")
        .click();
    h.run();
    h.get_by_role_and_label(Role::MultilineTextInput, "Prompt")
        .type_text("dusty boom-bap drums");
    h.run();
    assert_eq!(instance.session().settings().prompt, "dusty boom-bap drums");

    // Pick a local model folder.
    h.get_by_label("Model").click();
    h.run();
    h.get_by_label("Local folder").click();
    h.run();
    let folder = tiny_model().display().to_string();
    h.get_by_role_and_label(Role::TextInput, "Model folder")
        .click();
    h.run();
    h.get_by_role_and_label(Role::TextInput, "Model folder")
        .type_text(&folder);
    h.run();
    assert_eq!(
        instance.session().settings().model,
        ModelSource::Local { path: tiny_model() }
    );
    h.get_by_label_contains("config.json found");

    // Length in seconds: 8 s by default.
    h.get_by_label("Seconds").click();
    h.run();
    assert_eq!(instance.session().settings().length, Length::Seconds(8.0));
    instance.update_settings(|s| s.precision = musicgen::Precision::F32);

    // Generate, and see the progress.
    h.get_by_label("Generate").click();
    h.run();
    let mut saw_progress = false;
    step_until(&mut h, "the take appears", |h| {
        saw_progress |= h.query_by_label_contains("Generating: step").is_some()
            || h.query_by_label_contains("Loading the model").is_some()
            || h.query_by_label_contains("Decoding audio").is_some()
            || h.query_by_label_contains("Saving the take").is_some();
        h.query_by_label("Takes (1)").is_some()
    });
    assert!(saw_progress, "progress was shown while generating");
    h.get_by_label("dusty boom-bap drums");
    step_until(&mut h, "done is shown", |h| {
        h.query_by_label_contains("Done in").is_some()
    });
    h.get_by_label_contains("8.00 s");
    h.get_by_label_contains("seed ");

    // Preview, once the take is at the host rate.
    step_until(&mut h, "preview is enabled", |h| {
        !h.get_by_label("Preview").accesskit_node().is_disabled()
    });
    // Drain what generation sent (the new take's selection).
    while audio.next_command().is_some() {}
    h.get_by_label("Preview").click();
    h.run();
    let sent = audio
        .next_command()
        .expect("a command for the audio thread");
    assert!(matches!(sent, AudioCommand::Preview(_)), "preview sent");

    // The take's seed can be reused.
    let seed = instance.session().takes()[0].meta.request.seed;
    h.get_by_label("Use seed").click();
    h.run();
    assert_eq!(instance.session().settings().seed, Some(seed));
    h.get_by_label_contains(&format!("seed {seed}"));

    // Loop selects the take and switches the play mode.
    h.get_by_label("Loop").click();
    h.run();
    assert_eq!(*mode.lock(), PlayMode::Loop);

    // Delete hides the take; its file stays.
    let file = instance.session().takes()[0].meta.file.clone();
    h.get_by_label("Delete").click();
    h.run();
    h.get_by_label("Takes (0)");
    h.get_by_label("No takes yet.");
    assert!(file.exists());
}

#[test]
fn errors_read_in_plain_words_with_what_to_do() {
    let data = tempfile::tempdir().unwrap();
    let (instance, _audio) = Instance::new();
    instance.activate(48_000);
    instance.update_settings(|s| {
        s.data_folder = Some(data.path().to_path_buf());
        s.length = Length::Bars(200.0);
    });
    let mut h = harness(&instance, Arc::new(Mutex::new(PlayMode::Midi)));
    h.run();
    h.get_by_label_contains("over the 5-minute limit");
    h.get_by_label("Generate").click();
    h.run();
    h.get_by_label_contains("Error: 200 bars at 120.0 bpm is 400.00 s");
    h.get_by_label("Choose fewer bars, or a length in seconds.");
}

/// A system drag that takes the button release for itself, as XDND's grab,
/// OLE's modal loop and AppKit's dragging session do: it counts its starts and
/// says at once that it has ended.
struct SwallowingDrag {
    starts: Arc<AtomicUsize>,
    ended: DragEnded,
}

impl FileDrag for SwallowingDrag {
    fn start(&mut self, paths: Vec<PathBuf>) -> Result<(), String> {
        assert!(paths[0].exists(), "the file is written before the drag");
        self.starts.fetch_add(1, Ordering::SeqCst);
        self.ended.set();
        Ok(())
    }
}

#[test]
fn after_a_drag_out_the_next_press_drags_again() {
    let data = tempfile::tempdir().unwrap();
    let (instance, _audio) = Instance::new();
    instance.activate(48_000);
    instance.update_settings(|s| {
        s.data_folder = Some(data.path().to_path_buf());
        s.model = ModelSource::Local { path: tiny_model() };
        s.precision = musicgen::Precision::F32;
        s.length = Length::Seconds(1.0);
    });
    let id = instance.generate().unwrap();
    wait_for("the take is made", Duration::from_secs(120), || {
        instance.session().take(&id)?.clip.as_ref().map(|_| ())
    });
    let ended = DragEnded::default();
    let starts = Arc::new(AtomicUsize::new(0));
    let drag = SwallowingDrag {
        starts: starts.clone(),
        ended: ended.clone(),
    };
    let model = EditorModel::new(
        instance.clone(),
        Box::new(TestParams(Arc::new(Mutex::new(PlayMode::Midi)))),
        Some(Box::new(drag)),
    );
    let mut h = Harness::builder()
        .with_size([620.0, 1400.0])
        .build_ui_state(draw, model);
    h.ctx.add_plugin(ReleaseAfterDrag::new(ended));
    h.run();
    for round in 1..=3 {
        let c = h.get_by_label("Drag to a track").rect().center();
        let send = |h: &mut Harness<'static, EditorModel>, e: egui::Event| {
            h.input_mut().events.push(e);
            h.step();
        };
        send(&mut h, egui::Event::PointerMoved(c));
        let press = |pressed| egui::Event::PointerButton {
            pos: c,
            button: egui::PointerButton::Primary,
            pressed,
            modifiers: egui::Modifiers::NONE,
        };
        send(&mut h, press(true));
        for dx in [10.0, 20.0, 40.0] {
            send(&mut h, egui::Event::PointerMoved(c + egui::vec2(dx, 0.0)));
        }
        // The system's drag has the pointer: no release reaches egui.
        h.step();
        h.step();
        assert_eq!(starts.load(Ordering::SeqCst), round, "drag {round} started");
        assert!(
            !h.ctx.input(|i| i.pointer.any_down()),
            "after drag {round}, egui knows the button is up"
        );
    }
}

//! Drag-out on X11: under Xvfb, a small XDND drop target (written here with
//! x11rb, as a DAW's track would be) receives a take dragged by the plugin's
//! XDND source, reads the file URI, and finds the take at the host rate there.
//! The pointer is driven with the XTEST extension.
#![cfg(target_os = "linux")]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use musicgen::{DeviceChoice, ModelSource, Precision};
use promptloop::testing::{
    default_size, draw, export_take, read_info, run_drag, uri_list, EditorModel, Instance,
    JobStage, Length, ParamWrite, PlayMode, TakeId,
};
use test_support::{tiny_model, wait_for, Xvfb};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    AtomEnum, ClientMessageEvent, ConnectionExt, CreateWindowAux, EventMask, PropMode, WindowClass,
    BUTTON_PRESS_EVENT, BUTTON_RELEASE_EVENT, MOTION_NOTIFY_EVENT,
};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::protocol::Event;
use x11rb::wrapper::ConnectionExt as _;
use x11rb::{COPY_DEPTH_FROM_PARENT, CURRENT_TIME};

/// The tests here drive pointers in real time: one at a time, so that
/// neither slows the other's windows down.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A take from the tiny fixture model, made at 48 kHz with the host at 120
/// bpm in 4/4 (as the standalone's dummy backend plays).
fn made_take(data: &std::path::Path) -> (Arc<Instance>, TakeId) {
    let (i, _audio) = Instance::new();
    i.host.publish(Some(120.0), Some(4), Some(4));
    i.update_settings(|s| {
        s.model = ModelSource::Local { path: tiny_model() };
        s.precision = Precision::F32;
        s.device = DeviceChoice::Cpu;
        s.length = Length::Seconds(1.0);
        s.data_folder = Some(data.to_path_buf());
        s.prompt = "drag me".into();
    });
    i.activate(48_000);
    let id = i.generate().unwrap();
    wait_for("the take", Duration::from_secs(120), || {
        if i.session().take(&id).is_some_and(|t| t.clip.is_some()) {
            return Some(());
        }
        let job = i.jobs().into_iter().find(|j| j.take_id == id).unwrap();
        assert!(
            !matches!(job.stage(), JobStage::Failed(_)),
            "{:?}",
            job.stage()
        );
        None
    });
    (i, id)
}

/// Runs a 300 x 300 drop target window at `at`; sends back the uri-list it
/// received.
fn drop_target_at(
    display: String,
    at: (i16, i16),
    ready: mpsc::Sender<()>,
    got: mpsc::Sender<String>,
) {
    let (conn, screen) = x11rb::connect(Some(&display)).unwrap();
    let root = conn.setup().roots[screen].root;
    let atom = |n: &str| {
        conn.intern_atom(false, n.as_bytes())
            .unwrap()
            .reply()
            .unwrap()
            .atom
    };
    let (aware, status, drop, finished, selection, uri_list, copy, property) = (
        atom("XdndAware"),
        atom("XdndStatus"),
        atom("XdndDrop"),
        atom("XdndFinished"),
        atom("XdndSelection"),
        atom("text/uri-list"),
        atom("XdndActionCopy"),
        atom("PROMPTLOOP_TEST_DROP"),
    );
    let (enter, position) = (atom("XdndEnter"), atom("XdndPosition"));
    let win = conn.generate_id().unwrap();
    conn.create_window(
        COPY_DEPTH_FROM_PARENT,
        win,
        root,
        at.0,
        at.1,
        300,
        300,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new()
            .override_redirect(1)
            .event_mask(EventMask::PROPERTY_CHANGE),
    )
    .unwrap();
    conn.change_property32(PropMode::REPLACE, win, aware, AtomEnum::ATOM, &[5])
        .unwrap();
    conn.map_window(win).unwrap();
    conn.flush().unwrap();
    ready.send(()).unwrap();
    let mut source = 0;
    let mut offered_uri_list = false;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let Some(event) = conn.poll_for_event().unwrap() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        match event {
            Event::ClientMessage(c) if c.type_ == enter => {
                let d = c.data.as_data32();
                source = d[0];
                offered_uri_list = d[2..5].contains(&uri_list);
                assert_eq!(d[1] >> 24, 5, "XDND version 5");
            }
            Event::ClientMessage(c) if c.type_ == position => {
                let d = c.data.as_data32();
                let reply = ClientMessageEvent::new(32, d[0], status, [win, 1, 0, 0, copy]);
                conn.send_event(false, d[0], EventMask::NO_EVENT, reply)
                    .unwrap();
                conn.flush().unwrap();
            }
            Event::ClientMessage(c) if c.type_ == drop => {
                assert!(offered_uri_list, "the source offered text/uri-list");
                let time = c.data.as_data32()[2];
                conn.convert_selection(win, selection, uri_list, property, time)
                    .unwrap();
                conn.flush().unwrap();
            }
            Event::SelectionNotify(n) => {
                assert_eq!(n.property, property, "the source delivered the data");
                let value = conn
                    .get_property(true, win, property, AtomEnum::ANY, 0, 1 << 20)
                    .unwrap()
                    .reply()
                    .unwrap()
                    .value;
                let done = ClientMessageEvent::new(32, source, finished, [win, 1, copy, 0, 0]);
                conn.send_event(false, source, EventMask::NO_EVENT, done)
                    .unwrap();
                conn.flush().unwrap();
                got.send(String::from_utf8(value).unwrap()).unwrap();
                return;
            }
            _ => {}
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The take exported as the drag would.
fn exported_take(data: &std::path::Path) -> PathBuf {
    let (i, id) = made_take(data);
    let s = i.session();
    let take = s.take(&id).unwrap();
    export_take(&i.exports_folder(), &take.meta, take.clip.as_ref().unwrap()).unwrap()
}

#[test]
fn a_take_dragged_onto_an_x11_target_arrives_as_a_wav_at_the_host_rate() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let x = Xvfb::start("800x600x24");
    let data = tempfile::tempdir().unwrap();
    let path = exported_take(data.path());

    let (ready_tx, ready) = mpsc::channel();
    let (got_tx, got) = mpsc::channel();
    let display = x.display.clone();
    let target = std::thread::spawn(move || drop_target_at(display, (0, 0), ready_tx, got_tx));
    ready.recv().unwrap();

    let (conn, screen) = x11rb::connect(Some(&x.display)).unwrap();
    let root = conn.setup().roots[screen].root;
    // The producer presses on the take's handle (outside the target)...
    let fake = |kind: u8, detail: u8, x: i16, y: i16| {
        conn.xtest_fake_input(kind, detail, CURRENT_TIME, root, x, y, 0)
            .unwrap();
        conn.flush().unwrap();
        std::thread::sleep(Duration::from_millis(60));
    };
    fake(MOTION_NOTIFY_EVENT, 0, 600, 500);
    fake(BUTTON_PRESS_EVENT, 1, 0, 0);
    // ...the drag starts with the file already written...
    let uris = uri_list(std::slice::from_ref(&path));
    let display = x.display.clone();
    let source =
        std::thread::spawn(move || run_drag(Some(&display), &uris, Duration::from_secs(5)));
    wait_for_drag(&conn, "run_drag");
    // ...moves over the track and lets go.
    fake(MOTION_NOTIFY_EVENT, 0, 120, 130);
    fake(MOTION_NOTIFY_EVENT, 0, 150, 160);
    fake(BUTTON_RELEASE_EVENT, 1, 0, 0);

    let received = got
        .recv_timeout(Duration::from_secs(20))
        .expect("the drop target got the data");
    assert!(source.join().unwrap().unwrap(), "the drop was accepted");
    target.join().unwrap();
    assert!(received.ends_with("\r\n"), "{received:?}");
    let uri = received.lines().next().unwrap();
    let dropped = PathBuf::from(percent_decode(uri.strip_prefix("file://").unwrap()));
    assert_eq!(dropped, path);
    let reader = hound::WavReader::open(&dropped).expect("the dropped file is a WAV");
    assert_eq!(reader.spec().sample_rate, 48_000, "at the host's rate");
    assert_eq!(reader.len(), 48_000, "one second");
    let info = read_info(&dropped).unwrap();
    assert_eq!(info[0].1, "drag me");
}

/// The window that owns `XdndSelection`: a drag source while a drag runs.
fn drag_source(conn: &impl Connection) -> u32 {
    let atom = conn
        .intern_atom(false, b"XdndSelection")
        .unwrap()
        .reply()
        .unwrap()
        .atom;
    conn.get_selection_owner(atom)
        .unwrap()
        .reply()
        .unwrap()
        .owner
}

/// Waits until a drag source owns `XdndSelection`, then a moment for its
/// pointer grab.
fn wait_for_drag(conn: &impl Connection, what: &str) {
    let start = Instant::now();
    while drag_source(conn) == x11rb::NONE {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: no drag started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
}

struct NoParams;

impl ParamWrite for NoParams {
    fn set_mode(&self, _: PlayMode) {}
    fn mode(&self) -> PlayMode {
        PlayMode::Midi
    }
}

/// Where the editor, at its default size and 1 point per pixel, puts the
/// centre of the button labelled `label` for this session: the window drawn
/// the way egui-baseview draws it (`Context::run_ui` over the whole window),
/// located through egui's accessibility tree.
fn button_centre(doc: &serde_json::Value, label: &str) -> (i16, i16) {
    let (instance, _audio) = Instance::new();
    instance.host.publish(Some(120.0), Some(4), Some(4));
    instance.load_document(doc);
    instance.activate(48_000);
    wait_for("the takes to load", Duration::from_secs(30), || {
        let s = instance.session();
        (!s.takes().iter().any(|t| t.clip.is_none())).then_some(())
    });
    let mut model = EditorModel::new(instance, Box::new(NoParams), None);
    let ctx = egui::Context::default();
    ctx.enable_accesskit();
    ctx.set_theme(egui::Theme::Dark);
    let size = default_size();
    let mut centre = None;
    for _ in 0..3 {
        let input = egui::RawInput {
            screen_rect: Some(egui::Rect::from_min_size(
                egui::Pos2::ZERO,
                egui::vec2(size.width as f32, size.height as f32),
            )),
            ..Default::default()
        };
        let mut out = ctx.run_ui(input, |ui| draw(ui, &mut model));
        let nodes = out.platform_output.accesskit_update.take().unwrap().nodes;
        out.drop_without_applying_deltas();
        centre = nodes
            .iter()
            .find(|(_, n)| n.label() == Some(label))
            .and_then(|(_, n)| n.bounds())
            .map(|b| (((b.x0 + b.x1) / 2.0) as i16, ((b.y0 + b.y1) / 2.0) as i16));
    }
    let centre = centre.unwrap_or_else(|| panic!("no {label:?} button"));
    assert!(
        centre.0 < size.width as i16 && centre.1 < size.height as i16,
        "{label:?} at {centre:?} is inside the window"
    );
    centre
}

/// The top-level window whose name is `name`, and its position on the screen.
fn window_named(conn: &impl Connection, root: u32, name: &str) -> Option<(u32, i16, i16)> {
    for w in conn.query_tree(root).ok()?.reply().ok()?.children {
        let title = conn
            .get_property(false, w, AtomEnum::WM_NAME, AtomEnum::ANY, 0, 256)
            .ok()?
            .reply()
            .ok()?
            .value;
        if title == name.as_bytes() {
            let at = conn
                .translate_coordinates(w, root, 0, 0)
                .ok()?
                .reply()
                .ok()?;
            return Some((w, at.dst_x, at.dst_y));
        }
    }
    None
}

/// The whole path a producer takes: the standalone app (real baseview window,
/// real egui frames) opens a saved session; the pointer presses on the take's
/// "Drag to a track", drags it over a track of another application and lets
/// go; that application receives the WAV at the session's rate.
#[test]
fn the_standalone_editor_drags_a_take_onto_another_application() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let exe =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/promptloop-standalone");
    let exe = std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| PathBuf::from(t).join("debug/promptloop-standalone"))
        .unwrap_or(exe);
    assert!(
        exe.exists(),
        "{} is missing: run `cargo xtask test`, which builds it",
        exe.display()
    );
    let data = tempfile::tempdir().unwrap();
    let (made, id) = made_take(data.path());
    let doc = made.session().to_document();
    let session = data.path().join("session.json");
    std::fs::write(&session, serde_json::to_vec(&doc).unwrap()).unwrap();
    let handle = button_centre(&doc, "Drag to a track");

    let x = Xvfb::start("1600x1000x24");
    let mut app = Command::new(&exe)
        .args(["--backend", "dummy", "--sample-rate", "48000"])
        .env("DISPLAY", &x.display)
        .env("LIBGL_ALWAYS_SOFTWARE", "1")
        .env("PROMPTLOOP_SESSION", &session)
        .env("PROMPTLOOP_DATA_DIR", data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the standalone starts");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let app_id = app.id();
    let _app = Kill(std::mem::replace(
        &mut app,
        Command::new("true").spawn().unwrap(),
    ));
    let _ = app.wait();

    let (conn, screen) = x11rb::connect(Some(&x.display)).unwrap();
    let root = conn.setup().roots[screen].root;
    let start = Instant::now();
    let (_, wx, wy) = loop {
        if let Some(w) = window_named(&conn, root, "Promptloop") {
            break w;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no Promptloop window"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The take's audio loads and the window draws a few frames.
    std::thread::sleep(Duration::from_secs(3));

    let fake = |kind: u8, detail: u8, x: i16, y: i16| {
        conn.xtest_fake_input(kind, detail, CURRENT_TIME, root, x, y, 0)
            .unwrap();
        conn.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    };
    let (hx, hy) = (wx + handle.0, wy + handle.1);
    // Twice: after the first drag the editor must be ready for the next one
    // (it never saw the real button release, which went to the drag).
    for round in 1..=2 {
        let (ready_tx, ready) = mpsc::channel();
        let (got_tx, got) = mpsc::channel();
        let display = x.display.clone();
        let target =
            std::thread::spawn(move || drop_target_at(display, (1000, 100), ready_tx, got_tx));
        ready.recv().unwrap();

        // The last drag has let go of the selection.
        let start = Instant::now();
        while drag_source(&conn) != x11rb::NONE {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "drag {round}: one still runs"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        fake(MOTION_NOTIFY_EVENT, 0, hx, hy);
        std::thread::sleep(Duration::from_millis(300));
        fake(BUTTON_PRESS_EVENT, 1, 0, 0);
        std::thread::sleep(Duration::from_millis(200));
        // Past egui's drag threshold: the editor starts the drag.
        fake(MOTION_NOTIFY_EVENT, 0, hx + 12, hy + 4);
        fake(MOTION_NOTIFY_EVENT, 0, hx + 24, hy + 8);
        wait_for_drag(&conn, &format!("drag {round}"));
        // Across the screen to the track.
        for step in 1..=40 {
            let t = step as f32 / 40.0;
            let x = hx as f32 + (1150.0 - hx as f32) * t;
            let y = hy as f32 + (250.0 - hy as f32) * t;
            fake(MOTION_NOTIFY_EVENT, 0, x as i16, y as i16);
        }
        std::thread::sleep(Duration::from_millis(300));
        fake(MOTION_NOTIFY_EVENT, 0, 1160, 260);
        fake(BUTTON_RELEASE_EVENT, 1, 0, 0);

        let received = got
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("drag {round}: the other application got no drop"));
        target.join().unwrap();
        let uri = received.lines().next().unwrap();
        let dropped = PathBuf::from(percent_decode(uri.strip_prefix("file://").unwrap()));
        let reader = hound::WavReader::open(&dropped).expect("the dropped file is a WAV");
        assert_eq!(reader.spec().sample_rate, 48_000, "at the session's rate");
        assert_eq!(
            reader.len() / reader.spec().channels as u32,
            48_000,
            "one second"
        );
        let info = read_info(&dropped).unwrap();
        assert_eq!(info[0].1, "drag me");
        assert!(
            dropped
                .file_name()
                .unwrap()
                .to_string_lossy()
                .contains(id.as_str()),
            "{} is named from the take id {id}",
            dropped.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The app is still running, its window open.
    assert!(window_named(&conn, root, "Promptloop").is_some());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(app_id as i32, libc::SIGINT) };
}

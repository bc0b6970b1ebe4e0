//! Drag-out on X11: under Xvfb, a small XDND drop target (written here with
//! x11rb, as a DAW's track would be) receives a take dragged by the plugin's
//! XDND source, reads the file URI, and finds the take at the host rate there.
//! The pointer is driven with the XTEST extension.
#![cfg(target_os = "linux")]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use musicgen::{DeviceChoice, ModelSource, Precision};
use promptloop::dragdrop::xdnd::run_drag;
use promptloop::instance::{Instance, JobStage};
use promptloop::session::Length;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    AtomEnum, ClientMessageEvent, ConnectionExt, CreateWindowAux, EventMask, PropMode, WindowClass,
    BUTTON_PRESS_EVENT, BUTTON_RELEASE_EVENT, MOTION_NOTIFY_EVENT,
};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::protocol::Event;
use x11rb::wrapper::ConnectionExt as _;
use x11rb::{COPY_DEPTH_FROM_PARENT, CURRENT_TIME};

struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Self {
        for n in 0..20 {
            let number = 500 + (std::process::id() as usize + n * 13) % 400;
            let socket = PathBuf::from(format!("/tmp/.X11-unix/X{number}"));
            if socket.exists() {
                continue;
            }
            let display = format!(":{number}");
            let mut child = Command::new("Xvfb")
                .args([&display, "-screen", "0", "800x600x24", "-nolisten", "tcp"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("Xvfb runs (apt-get install xvfb; .ci/run installs it)");
            let t0 = Instant::now();
            while !socket.exists() && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if socket.exists() {
                return Self { child, display };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start Xvfb");
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A take at 48 kHz from the tiny fixture model, exported as the drag would.
fn exported_take(data: &std::path::Path) -> PathBuf {
    let (i, _audio, _returns) = Instance::new();
    {
        let mut s = i.session.write();
        s.settings.model = ModelSource::Local {
            path: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny-a"),
        };
        s.settings.precision = Precision::F32;
        s.settings.device = DeviceChoice::Cpu;
        s.settings.length = Length::Seconds(1.0);
        s.settings.data_folder = Some(data.to_path_buf());
        s.settings.prompt = "drag me".into();
    }
    i.activate(48_000);
    let id = i.generate().unwrap();
    let start = Instant::now();
    loop {
        let t = i
            .session
            .read()
            .take(&id)
            .and_then(|t| Some((t.meta.clone(), t.clip.clone()?)));
        if let Some((meta, clip)) = t {
            return promptloop::export::export_take(&i.exports_folder(), &meta, &clip).unwrap();
        }
        let job = i.jobs().into_iter().find(|j| j.take_id == id).unwrap();
        assert!(
            !matches!(job.stage(), JobStage::Failed(_)),
            "{:?}",
            job.stage()
        );
        assert!(start.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a drop target window at (0, 0, 300, 300); sends back the uri-list it
/// received.
fn drop_target(display: String, ready: mpsc::Sender<()>, got: mpsc::Sender<String>) {
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
        0,
        0,
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

#[test]
fn a_take_dragged_onto_an_x11_target_arrives_as_a_wav_at_the_host_rate() {
    let x = Xvfb::start();
    let data = tempfile::tempdir().unwrap();
    let path = exported_take(data.path());

    let (ready_tx, ready) = mpsc::channel();
    let (got_tx, got) = mpsc::channel();
    let display = x.display.clone();
    let target = std::thread::spawn(move || drop_target(display, ready_tx, got_tx));
    ready.recv().unwrap();

    // The editor's window, where the drag starts. It hears button releases,
    // as baseview's window does, but the drag's pointer grab will take the
    // real one.
    let (conn, screen) = x11rb::connect(Some(&x.display)).unwrap();
    let root = conn.setup().roots[screen].root;
    let editor = conn.generate_id().unwrap();
    conn.create_window(
        COPY_DEPTH_FROM_PARENT,
        editor,
        root,
        400,
        400,
        400,
        200,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new()
            .override_redirect(1)
            .event_mask(EventMask::BUTTON_RELEASE),
    )
    .unwrap();
    conn.map_window(editor).unwrap();
    conn.flush().unwrap();

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
    let uris = promptloop::export::uri_list(std::slice::from_ref(&path));
    let display = x.display.clone();
    let source = std::thread::spawn(move || {
        run_drag(Some(&display), &uris, Duration::from_secs(5), Some(editor))
    });
    std::thread::sleep(Duration::from_millis(300));
    // ...moves over the track and lets go.
    fake(MOTION_NOTIFY_EVENT, 0, 120, 130);
    fake(MOTION_NOTIFY_EVENT, 0, 150, 160);
    fake(BUTTON_RELEASE_EVENT, 1, 0, 0);

    let received = got
        .recv_timeout(Duration::from_secs(20))
        .expect("the drop target got the data");
    assert!(source.join().unwrap().unwrap(), "the drop was accepted");
    target.join().unwrap();
    // The editor was told the button is up.
    let start = Instant::now();
    loop {
        match conn.poll_for_event().unwrap() {
            Some(Event::ButtonRelease(b)) => {
                assert_eq!((b.event, b.detail), (editor, 1));
                assert_eq!((b.event_x, b.event_y), (150 - 400, 160 - 400));
                break;
            }
            Some(_) => {}
            None => {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "the editor never heard the button release"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    assert!(received.ends_with("\r\n"), "{received:?}");
    let uri = received.lines().next().unwrap();
    let dropped = PathBuf::from(percent_decode(uri.strip_prefix("file://").unwrap()));
    assert_eq!(dropped, path);
    let reader = hound::WavReader::open(&dropped).expect("the dropped file is a WAV");
    assert_eq!(reader.spec().sample_rate, 48_000, "at the host's rate");
    assert_eq!(reader.len(), 48_000, "one second");
    let info = promptloop::export::read_info(&dropped).unwrap();
    assert_eq!(info[0].1, "drag me");
}

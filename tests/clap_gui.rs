//! The editor in a CLAP host on Linux: embedded into the host's X11 window
//! (CLAP's gui extension), under Xvfb with Mesa, while the host processes audio;
//! then closed. Its own test binary: it sets `DISPLAY` for the whole process.

use std::time::{Duration, Instant};

use host_tests::*;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConnectionExt, CreateWindowAux, WindowClass};
use x11rb::COPY_DEPTH_FROM_PARENT;

#[test]
fn the_editor_embeds_in_the_hosts_window_and_closes() {
    let x = Xvfb::start("1280x1024x24");
    std::env::set_var("DISPLAY", &x.display);
    std::env::set_var("LIBGL_ALWAYS_SOFTWARE", "1");
    // The host's window.
    let (conn, screen) = x11rb::connect(Some(&x.display)).unwrap();
    let root = conn.setup().roots[screen].root;
    let parent = conn.generate_id().unwrap();
    conn.create_window(
        COPY_DEPTH_FROM_PARENT,
        parent,
        root,
        0,
        0,
        800,
        900,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new(),
    )
    .unwrap();
    conn.map_window(parent).unwrap();
    conn.flush().unwrap();

    let entry = load_entry();
    let mut p = PluginUnderTest::new(&entry);
    p.activate(48_000.0, 512);
    let (w, h) = p.open_editor_x11(parent);
    assert!(w >= 400 && h >= 400, "a usable size: {w}x{h}");
    // The editor's window appears inside the host's, and audio keeps flowing.
    let start = Instant::now();
    loop {
        p.process(512, &[], None);
        p.pump();
        let children = conn.query_tree(parent).unwrap().reply().unwrap().children;
        if !children.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no editor window"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..50 {
        p.process(512, &[], None);
        p.pump();
        std::thread::sleep(Duration::from_millis(10));
    }
    p.close_editor();
    let start = Instant::now();
    while !conn
        .query_tree(parent)
        .unwrap()
        .reply()
        .unwrap()
        .children
        .is_empty()
    {
        p.pump();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the editor window stayed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

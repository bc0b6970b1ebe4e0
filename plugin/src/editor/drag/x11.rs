//! The XDND protocol (version 5) as a drag source:
//! <https://freedesktop.org/wiki/Specifications/XDND/>.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    Atom, AtomEnum, ClientMessageEvent, ConnectionExt, CreateWindowAux, EventMask, GrabMode,
    GrabStatus, PropMode, SelectionNotifyEvent, Window, WindowClass, SELECTION_NOTIFY_EVENT,
};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;
use x11rb::{COPY_DEPTH_FROM_PARENT, CURRENT_TIME, NONE};

use super::{DragEnded, DragErrors, FileDrag};

const XDND_VERSION: u32 = 5;
/// A drag that has not ended after this long is abandoned.
const MAX_DRAG: Duration = Duration::from_secs(120);

pub struct XdndSource {
    /// The editor's Xlib display, as an address.
    pub display: Option<usize>,
    pub ended: DragEnded,
    pub errors: DragErrors,
}

impl FileDrag for XdndSource {
    fn start(&mut self, paths: Vec<PathBuf>) -> Result<(), String> {
        if let Some(display) = self.display {
            release_grab(display);
        }
        let uris = crate::export::uri_list(&paths);
        let errors = self.errors.clone();
        let ended = self.ended.clone();
        std::thread::Builder::new()
            .name("promptloop-drag".into())
            .spawn(move || {
                let result = run_drag(None, &uris, Duration::from_secs(2));
                ended.set();
                if let Err(e) = result {
                    errors.set(format!("The drag failed ({e}): use Copy path"));
                }
            })
            .map_err(|e| format!("The drag could not start ({e}): use Copy path"))?;
        Ok(())
    }

    fn take_error(&mut self) -> Option<String> {
        self.errors.take()
    }
}

/// Releases the pointer grab the editor's own connection holds since the
/// button press, so the drag's connection can take the pointer.
fn release_grab(display: usize) {
    if let Ok(xlib) = x11_dl::xlib::Xlib::open() {
        // SAFETY: `display` is the live Xlib display of the editor window,
        // used on the editor's thread, which is where this runs.
        unsafe {
            (xlib.XUngrabPointer)(display as *mut x11_dl::xlib::Display, 0);
            (xlib.XFlush)(display as *mut x11_dl::xlib::Display);
        }
    }
}

struct Atoms {
    aware: Atom,
    selection: Atom,
    enter: Atom,
    position: Atom,
    status: Atom,
    leave: Atom,
    drop: Atom,
    finished: Atom,
    action_copy: Atom,
    uri_list: Atom,
    targets: Atom,
}

impl Atoms {
    fn new(conn: &RustConnection) -> Result<Self, String> {
        let atom = |name: &str| -> Result<Atom, String> {
            Ok(conn
                .intern_atom(false, name.as_bytes())
                .map_err(err)?
                .reply()
                .map_err(err)?
                .atom)
        };
        Ok(Self {
            aware: atom("XdndAware")?,
            selection: atom("XdndSelection")?,
            enter: atom("XdndEnter")?,
            position: atom("XdndPosition")?,
            status: atom("XdndStatus")?,
            leave: atom("XdndLeave")?,
            drop: atom("XdndDrop")?,
            finished: atom("XdndFinished")?,
            action_copy: atom("XdndActionCopy")?,
            uri_list: atom("text/uri-list")?,
            targets: atom("TARGETS")?,
        })
    }
}

fn err(e: impl std::fmt::Display) -> String {
    format!("X11: {e}")
}

/// Runs one drag from the pointer's current position until the button is
/// released: offers `uris` (a `text/uri-list`) to the XDND-aware window
/// under the pointer. `display`: `None` for `$DISPLAY`. `grab_wait`: how
/// long to retry grabbing the pointer. Returns whether a target took the
/// drop.
pub fn run_drag(display: Option<&str>, uris: &str, grab_wait: Duration) -> Result<bool, String> {
    let (conn, screen) = x11rb::connect(display).map_err(err)?;
    let root = conn.setup().roots[screen].root;
    let atoms = Atoms::new(&conn)?;
    let source = conn.generate_id().map_err(err)?;
    conn.create_window(
        COPY_DEPTH_FROM_PARENT,
        source,
        root,
        -10,
        -10,
        1,
        1,
        0,
        WindowClass::INPUT_ONLY,
        0,
        &CreateWindowAux::new().override_redirect(1),
    )
    .map_err(err)?;
    conn.map_window(source).map_err(err)?;
    conn.set_selection_owner(source, atoms.selection, CURRENT_TIME)
        .map_err(err)?;
    // Take the pointer: motion and the release now come to us.
    let start = Instant::now();
    loop {
        let status = conn
            .grab_pointer(
                false,
                source,
                EventMask::BUTTON_RELEASE | EventMask::POINTER_MOTION,
                GrabMode::ASYNC,
                GrabMode::ASYNC,
                NONE,
                NONE,
                CURRENT_TIME,
            )
            .map_err(err)?
            .reply()
            .map_err(err)?
            .status;
        if status == GrabStatus::SUCCESS {
            break;
        }
        if start.elapsed() > grab_wait {
            conn.destroy_window(source).map_err(err)?;
            return Err(format!("cannot grab the pointer ({status:?})"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let result = drag_loop(&conn, root, source, &atoms, uris);
    let _ = conn.ungrab_pointer(CURRENT_TIME);
    let _ = conn.destroy_window(source);
    let _ = conn.flush();
    result
}

fn send(conn: &RustConnection, target: Window, kind: Atom, data: [u32; 5]) -> Result<(), String> {
    let event = ClientMessageEvent::new(32, target, kind, data);
    conn.send_event(false, target, EventMask::NO_EVENT, event)
        .map_err(err)?;
    conn.flush().map_err(err)
}

/// The XDND-aware window under the pointer and its protocol version.
fn target_at(
    conn: &RustConnection,
    root: Window,
    source: Window,
    atoms: &Atoms,
) -> Result<Option<(Window, u32)>, String> {
    let mut window = root;
    for _ in 0..16 {
        let child = conn
            .query_pointer(window)
            .map_err(err)?
            .reply()
            .map_err(err)?
            .child;
        if child == NONE || child == source {
            return Ok(None);
        }
        let aware = conn
            .get_property(false, child, atoms.aware, AtomEnum::ANY, 0, 1)
            .map_err(err)?
            .reply()
            .map_err(err)?;
        if let Some(version) = aware.value32().and_then(|mut v| v.next()) {
            return Ok(Some((child, version.min(XDND_VERSION))));
        }
        window = child;
    }
    Ok(None)
}

fn drag_loop(
    conn: &RustConnection,
    root: Window,
    source: Window,
    atoms: &Atoms,
    uris: &str,
) -> Result<bool, String> {
    let start = Instant::now();
    let mut target: Option<(Window, u32)> = None;
    let mut accepted = false;
    let mut dropped_at: Option<Instant> = None;
    while start.elapsed() < MAX_DRAG {
        let Some(event) = conn.poll_for_event().map_err(err)? else {
            if dropped_at.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
                return Ok(true); // the target took the data but sent no XdndFinished
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        match event {
            Event::MotionNotify(m) if dropped_at.is_none() => {
                let now = target_at(conn, root, source, atoms)?;
                if now.map(|t| t.0) != target.map(|t| t.0) {
                    change_target(conn, source, atoms, target, now)?;
                    accepted = false;
                    target = now;
                }
                if let Some((t, _)) = target {
                    let xy = ((m.root_x as u32) << 16) | (m.root_y as u16 as u32);
                    send(
                        conn,
                        t,
                        atoms.position,
                        [source, 0, xy, m.time, atoms.action_copy],
                    )?;
                }
            }
            Event::ClientMessage(c) if c.type_ == atoms.status => {
                let d = c.data.as_data32();
                if Some(d[0]) == target.map(|t| t.0) {
                    accepted = d[1] & 1 == 1;
                }
            }
            Event::ButtonRelease(b) if dropped_at.is_none() => match target {
                Some((t, _)) if accepted => {
                    send(conn, t, atoms.drop, [source, 0, b.time, 0, 0])?;
                    dropped_at = Some(Instant::now());
                }
                Some((t, _)) => {
                    send(conn, t, atoms.leave, [source, 0, 0, 0, 0])?;
                    return Ok(false);
                }
                None => return Ok(false),
            },
            Event::SelectionRequest(r) if r.selection == atoms.selection => {
                answer_selection(conn, atoms, uris, &r)?
            }
            Event::ClientMessage(c) if c.type_ == atoms.finished => return Ok(true),
            _ => {}
        }
    }
    Err("the drag did not end".into())
}

/// Leaves the window the pointer left and enters the one it is over now.
fn change_target(
    conn: &RustConnection,
    source: Window,
    atoms: &Atoms,
    old: Option<(Window, u32)>,
    new: Option<(Window, u32)>,
) -> Result<(), String> {
    if let Some((old, _)) = old {
        send(conn, old, atoms.leave, [source, 0, 0, 0, 0])?;
    }
    if let Some((new, version)) = new {
        send(
            conn,
            new,
            atoms.enter,
            [source, version << 24, atoms.uri_list, 0, 0],
        )?;
    }
    Ok(())
}

/// Answers the drop target's request for the dragged data (the uri-list, or
/// the list of targets offered).
fn answer_selection(
    conn: &RustConnection,
    atoms: &Atoms,
    uris: &str,
    r: &x11rb::protocol::xproto::SelectionRequestEvent,
) -> Result<(), String> {
    let property = if r.property == NONE {
        r.target
    } else {
        r.property
    };
    let ok = if r.target == atoms.uri_list {
        conn.change_property8(
            PropMode::REPLACE,
            r.requestor,
            property,
            atoms.uri_list,
            uris.as_bytes(),
        )
        .map_err(err)?;
        true
    } else if r.target == atoms.targets {
        conn.change_property32(
            PropMode::REPLACE,
            r.requestor,
            property,
            AtomEnum::ATOM,
            &[atoms.targets, atoms.uri_list],
        )
        .map_err(err)?;
        true
    } else {
        false
    };
    let notify = SelectionNotifyEvent {
        response_type: SELECTION_NOTIFY_EVENT,
        sequence: 0,
        time: r.time,
        requestor: r.requestor,
        selection: r.selection,
        target: r.target,
        property: if ok { property } else { NONE },
    };
    conn.send_event(false, r.requestor, EventMask::NO_EVENT, notify)
        .map_err(err)?;
    conn.flush().map_err(err)?;
    Ok(())
}

//! Dragging a take's file out of the editor onto a DAW track. Which file and
//! when it is written is platform-free (`export`, called before the drag
//! starts, tested on every platform); starting the system's drag is per
//! platform and kept small:
//!
//! - Linux (X11): an XDND source offering `text/uri-list`, on an X connection
//!   of its own with a small input-only window, after releasing the pointer
//!   grab the editor's connection (baseview's) holds from the button press.
//! - Windows: OLE `DoDragDrop` with the shell's data object for the file
//!   (`CF_HDROP` among its formats), through the `drag` crate. `DoDragDrop`
//!   runs a modal message loop that would redraw the editor while egui is
//!   still inside this frame, so it starts from a thread timer once the frame
//!   has returned.
//! - macOS: an `NSDraggingSession` with a file URL and an `NSDraggingSource`,
//!   through the `drag` crate. The session is not modal: it starts at once.
//!
//! A drag that fails says why in the editor (`FileDrag::take_error`). Every
//! system drag takes the button release for itself, so each one says when it
//! has ended (`DragEnded`) and the editor gives egui the release it missed.

#[cfg(target_os = "macos")]
mod appkit;
#[cfg(windows)]
mod ole;
#[cfg(target_os = "linux")]
pub mod x11;

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

/// Starts a drag of files out of the window (per platform: `x11`, `ole`, `appkit`).
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

/// The editor window's native handles, as addresses so they can be kept in
/// the (`Send`) editor model. Only used on the editor's thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NativeWindow {
    /// The Xlib display of the editor's X11 connection (Linux).
    pub xlib_display: Option<usize>,
    /// The editor's `HWND` (Windows).
    pub hwnd: Option<isize>,
    /// The editor's `NSView` (macOS).
    pub ns_view: Option<usize>,
}

impl NativeWindow {
    /// The handles of a live window.
    pub fn of<W>(window: &W) -> Self
    where
        W: raw_window_handle::HasWindowHandle + raw_window_handle::HasDisplayHandle + ?Sized,
    {
        use raw_window_handle::{RawDisplayHandle, RawWindowHandle};
        let mut native = Self::default();
        if let Ok(d) = window.display_handle() {
            if let RawDisplayHandle::Xlib(h) = d.as_raw() {
                native.xlib_display = h.display.map(|d| d.as_ptr() as usize);
            }
        }
        if let Ok(w) = window.window_handle() {
            match w.as_raw() {
                RawWindowHandle::Win32(h) => native.hwnd = Some(h.hwnd.get()),
                RawWindowHandle::AppKit(h) => native.ns_view = Some(h.ns_view.as_ptr() as usize),
                _ => {}
            }
        }
        native
    }
}

/// Where a drag running after `start` returned leaves its error for the
/// editor to show.
#[derive(Clone, Default)]
pub struct DragErrors(Arc<Mutex<Option<String>>>);

impl DragErrors {
    pub fn set(&self, error: String) {
        *self.0.lock() = Some(error);
    }

    pub fn take(&self) -> Option<String> {
        self.0.lock().take()
    }
}

/// The drag source of this platform, if it has one and the window gives what
/// it needs. It sets `ended` when each drag is over.
pub fn platform_drag(window: NativeWindow, ended: DragEnded) -> Option<Box<dyn FileDrag>> {
    #[cfg(target_os = "linux")]
    {
        Some(Box::new(x11::XdndSource {
            display: window.xlib_display,
            ended,
            errors: DragErrors::default(),
        }))
    }
    #[cfg(windows)]
    {
        window.hwnd.map(|hwnd| {
            Box::new(ole::OleSource {
                hwnd,
                ended,
                errors: DragErrors::default(),
            }) as Box<dyn FileDrag>
        })
    }
    #[cfg(target_os = "macos")]
    {
        window
            .ns_view
            .map(|ns_view| Box::new(appkit::AppKitSource { ns_view, ended }) as Box<dyn FileDrag>)
    }
    #[cfg(not(any(target_os = "linux", windows, target_os = "macos")))]
    {
        let _ = (window, ended);
        None
    }
}

/// The picture under the pointer while a take is dragged (Windows, macOS).
#[cfg(any(windows, target_os = "macos"))]
const DRAG_ICON: &[u8] = include_bytes!("../../../../assets/drag-icon.png");

/// A raw window handle lent to the `drag` crate for one call.
#[cfg(any(windows, target_os = "macos"))]
struct LentWindow(raw_window_handle::RawWindowHandle);

#[cfg(any(windows, target_os = "macos"))]
impl raw_window_handle::HasWindowHandle for LentWindow {
    fn window_handle(
        &self,
    ) -> Result<raw_window_handle::WindowHandle<'_>, raw_window_handle::HandleError> {
        // SAFETY: the handle is the editor's window, alive while the editor
        // is open; it is lent only for a call made on the editor's thread.
        Ok(unsafe { raw_window_handle::WindowHandle::borrow_raw(self.0) })
    }
}

/// Starts the `drag` crate's drag of `paths` from `window`. Its platform code
/// has `expect`s; a panic must not unwind into the host.
#[cfg(any(windows, target_os = "macos"))]
fn start_system_drag(
    window: raw_window_handle::RawWindowHandle,
    paths: Vec<std::path::PathBuf>,
    ended: DragEnded,
) -> Result<(), String> {
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drag::start_drag(
            &LentWindow(window),
            drag::DragItem::Files(paths),
            drag::Image::Raw(DRAG_ICON.to_vec()),
            move |_result, _position| ended.set(),
            drag::Options::default(),
        )
    }));
    match started {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("The drag could not start ({e}): use Copy path")),
        Err(_) => Err("The drag could not start: use Copy path".into()),
    }
}

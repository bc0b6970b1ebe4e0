//! OLE drag and drop. `DoDragDrop` blocks in its own message loop until
//! the drop; it must not run inside baseview's window procedure.

use std::cell::RefCell;
use std::num::NonZeroIsize;
use std::path::PathBuf;

use raw_window_handle::{RawWindowHandle, Win32WindowHandle};
use windows_sys::Win32::Foundation::HWND;
use windows_sys::Win32::UI::WindowsAndMessaging::{KillTimer, SetTimer};

use super::{DragEnded, DragErrors, FileDrag};

pub struct OleSource {
    pub hwnd: isize,
    pub ended: DragEnded,
    pub errors: DragErrors,
}

struct Pending {
    hwnd: isize,
    paths: Vec<PathBuf>,
    ended: DragEnded,
    errors: DragErrors,
}

thread_local! {
    /// The drag waiting for the timer, on the editor's (the host's GUI) thread.
    static PENDING: RefCell<Option<Pending>> = const { RefCell::new(None) };
}

impl FileDrag for OleSource {
    fn start(&mut self, paths: Vec<PathBuf>) -> Result<(), String> {
        PENDING.with(|p| {
            *p.borrow_mut() = Some(Pending {
                hwnd: self.hwnd,
                paths,
                ended: self.ended.clone(),
                errors: self.errors.clone(),
            })
        });
        // SAFETY: a thread timer (no window) with a callback; it fires
        // from the host's message loop on this thread.
        let id = unsafe { SetTimer(std::ptr::null_mut(), 0, 0, Some(start_pending)) };
        if id == 0 {
            PENDING.with(|p| p.borrow_mut().take());
            return Err("The drag could not start: use Copy path".into());
        }
        Ok(())
    }

    fn take_error(&mut self) -> Option<String> {
        self.errors.take()
    }
}

unsafe extern "system" fn start_pending(_hwnd: HWND, _msg: u32, id: usize, _time: u32) {
    // SAFETY: the timer this callback was set with, on this thread.
    unsafe { KillTimer(std::ptr::null_mut(), id) };
    let Some(pending) = PENDING.with(|p| p.borrow_mut().take()) else {
        return;
    };
    let Some(hwnd) = NonZeroIsize::new(pending.hwnd) else {
        return;
    };
    let window = RawWindowHandle::Win32(Win32WindowHandle::new(hwnd));
    if let Err(e) = super::start_system_drag(window, pending.paths, pending.ended) {
        pending.errors.set(e);
    }
}

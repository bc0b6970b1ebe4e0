//! An `NSDraggingSession` from the editor's view; AppKit runs it from
//! the main run loop after this returns.

use std::path::PathBuf;
use std::ptr::NonNull;

use raw_window_handle::{AppKitWindowHandle, RawWindowHandle};

use super::{DragEnded, FileDrag};

pub struct AppKitSource {
    pub ns_view: usize,
    pub ended: DragEnded,
}

impl FileDrag for AppKitSource {
    fn start(&mut self, paths: Vec<PathBuf>) -> Result<(), String> {
        let view = NonNull::new(self.ns_view as *mut std::ffi::c_void)
            .ok_or("The drag could not start: use Copy path")?;
        super::start_system_drag(
            RawWindowHandle::AppKit(AppKitWindowHandle::new(view)),
            paths,
            self.ended.clone(),
        )
    }
}

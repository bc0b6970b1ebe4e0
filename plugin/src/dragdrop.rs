//! Dragging a take's file out of the editor onto a DAW track. Which file and
//! when it is written is platform-free (`export`); starting the system's drag
//! is per platform.

use crate::ui::FileDrag;

/// The drag source of this platform, if it has one.
pub fn platform_drag() -> Option<Box<dyn FileDrag>> {
    None
}

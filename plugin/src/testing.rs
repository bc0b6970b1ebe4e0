//! Test hooks, built only with the `test-hooks` feature (`cargo xtask test`
//! turns it on; release bundles never have it): the plugin's inner parts for
//! the tests in `plugin/tests`, and two C exports the host-level tests find in
//! the built bundle.

pub use crate::capture::{CaptureKind, CaptureState};
#[cfg(target_os = "linux")]
pub use crate::editor::drag::x11::run_drag;
pub use crate::editor::drag::{DragEnded, FileDrag, ReleaseAfterDrag};
pub use crate::editor::view::{activity, advice, draw, Activity, EditorAction};
pub use crate::editor::{default_size, EditorModel, ParamWrite};
pub use crate::error::PluginError;
pub use crate::export::{export_take, read_info, uri_list};
pub use crate::handoff::{AudioCommand, PlayerEnd};
pub use crate::instance::{purge_unused_takes, Instance};
pub use crate::player::PlayMode;
pub use crate::request::{Job, JobStage};
pub use crate::session::{Length, Session, Settings};
pub use crate::take::{MelodySource, NoteRecord, Take, TakeId, TakeMeta, TakeSource, TakeStatus};

/// Diagnostics for the host tests: fills `out` with up to `len` process-wide
/// counters, in this order: model loads, models resident, jobs done, jobs
/// cancelled, jobs failed. Returns how many it wrote.
///
/// # Safety
/// `out` must point to `len` writable `u64`s (or `len` must be 0).
#[no_mangle]
pub unsafe extern "C" fn promptloop_counters(out: *mut u64, len: usize) -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &crate::workers::COUNTERS;
    let values = [
        c.model_loads.load(Relaxed),
        c.models_resident.load(Relaxed),
        c.jobs_done.load(Relaxed),
        c.jobs_cancelled.load(Relaxed),
        c.jobs_failed.load(Relaxed),
    ];
    let n = len.min(values.len());
    if n > 0 && !out.is_null() {
        // SAFETY: the caller promises `len` writable u64s at `out`.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), out, n) };
    }
    n
}

/// Holds every lock the editor and the workers use, in every instance, for
/// `ms` milliseconds, on the calling thread. The host tests call it from one
/// thread while another runs `process()`, which must not wait.
#[no_mangle]
pub extern "C" fn promptloop_hold_locks(ms: u32) {
    crate::instance::hold_all_locks(std::time::Duration::from_millis(ms as u64));
}

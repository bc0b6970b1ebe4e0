//! The plugin's two process-wide worker threads, shared by every instance:
//! the inference worker (`inference`: generations, one at a time, and the model
//! cache) and the I/O worker (`store`: files, resampling, hand-off to the audio
//! threads, MIDI triggers). Both are started by the first instance that
//! activates and end on their own once the last instance is gone.
//!
//! The workers know an instance only as a [`TakeOwner`], held by `Weak`
//! reference: a closed instance is simply gone to them.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};

use crate::handoff::ControlEnd;
use crate::inference::{self, InferenceMsg};
use crate::request::Job;
use crate::session::Session;
use crate::store::{self, IoMsg};

/// What the workers need of an instance; `Instance` implements it.
pub trait TakeOwner: Send + Sync {
    /// Closed instances get no new takes; their jobs are cancelled.
    fn is_closed(&self) -> bool;
    /// The host's sample rate (0 before the first activation).
    fn host_rate(&self) -> u32;
    /// The session the takes are added to, through its API.
    fn session(&self) -> &RwLock<Session>;
    /// The instance's end of the audio thread's hand-off.
    fn audio(&self) -> &ControlEnd;
    /// Called on every poll of the I/O worker: start the generations the audio
    /// thread was asked for by MIDI.
    fn poll_triggers(self: Arc<Self>);
    /// A melody was recorded from MIDI: make it the melody and generate.
    fn melody_recorded(self: Arc<Self>, melody: crate::take::MelodySource);
}

/// An instance as the workers hold it.
pub type Owner = Weak<dyn TakeOwner>;

/// How long the last instance's `Drop` waits for the workers to end (so a host
/// unloading the library does not pull code from under a running thread).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// Process-wide counters, read by the host tests through the diagnostics hook.
#[derive(Default)]
pub struct Counters {
    pub model_loads: AtomicU64,
    pub models_resident: AtomicU64,
    pub jobs_done: AtomicU64,
    pub jobs_cancelled: AtomicU64,
    pub jobs_failed: AtomicU64,
}

pub(crate) static COUNTERS: Counters = Counters {
    model_loads: AtomicU64::new(0),
    models_resident: AtomicU64::new(0),
    jobs_done: AtomicU64::new(0),
    jobs_cancelled: AtomicU64::new(0),
    jobs_failed: AtomicU64::new(0),
};

/// Handles to the two worker threads; shared by reference count.
pub struct WorkerThreads {
    inference: Sender<InferenceMsg>,
    io: Sender<IoMsg>,
    ended: Receiver<()>,
}

static RUNNING: Mutex<Weak<WorkerThreads>> = Mutex::new(Weak::new());

/// The registry's lock (test hooks: `process()` must not wait on it).
#[cfg(feature = "test-hooks")]
pub(crate) fn lock_registry() -> parking_lot::MutexGuard<'static, Weak<WorkerThreads>> {
    RUNNING.lock()
}

impl WorkerThreads {
    /// The running workers, or new ones if none run.
    pub fn acquire() -> Arc<WorkerThreads> {
        let mut slot = RUNNING.lock();
        if let Some(w) = slot.upgrade() {
            return w;
        }
        let (inference, inference_rx) = crossbeam_channel::unbounded();
        let (io, io_rx) = crossbeam_channel::unbounded();
        let (ended_tx, ended) = crossbeam_channel::bounded(2);
        {
            let io = io.clone();
            let ended_tx = ended_tx.clone();
            std::thread::Builder::new()
                .name(inference::THREAD_NAME.into())
                .spawn(move || {
                    inference::run(inference_rx, io);
                    let _ = ended_tx.send(());
                })
                .expect("cannot start the inference thread");
        }
        std::thread::Builder::new()
            .name(store::THREAD_NAME.into())
            .spawn(move || {
                store::run(io_rx);
                let _ = ended_tx.send(());
            })
            .expect("cannot start the I/O thread");
        let w = Arc::new(WorkerThreads {
            inference,
            io,
            ended,
        });
        *slot = Arc::downgrade(&w);
        w
    }

    pub fn send_io(&self, msg: IoMsg) {
        let _ = self.io.send(msg);
    }

    /// Queues a generation behind the others (of every instance).
    pub fn queue_job(&self, owner: Owner, job: Arc<Job>) {
        let _ = self.inference.send(InferenceMsg::Generate(owner, job));
    }

    /// Frees the loaded model once the running job (if any) is over.
    pub fn unload(&self) {
        let _ = self.inference.send(InferenceMsg::Unload);
    }
}

impl Drop for WorkerThreads {
    fn drop(&mut self) {
        // Closing the channels ends both threads; the last instance's jobs were
        // cancelled, so a generation stops within a step. Wait a bounded time.
        let (closed_i, _) = crossbeam_channel::bounded(0);
        let (closed_o, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.inference, closed_i));
        drop(std::mem::replace(&mut self.io, closed_o));
        let on_worker = std::thread::current()
            .name()
            .is_some_and(|n| n == store::THREAD_NAME || n == inference::THREAD_NAME);
        if on_worker {
            return; // a worker dropped the last instance: it cannot wait for itself
        }
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.ended.recv_timeout(left).is_err() {
                break;
            }
        }
    }
}

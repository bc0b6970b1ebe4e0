//! The plugin's two process-wide worker threads, shared by every instance:
//!
//! - the inference worker runs generations one at a time, in the order they were
//!   asked for, on a dedicated compute pool (cores - 1, lowered priority), and
//!   keeps the model loaded between them (one copy per model, precision and
//!   device) until it is unused for a while or asked to unload;
//! - the I/O worker writes and reads take WAVs, resamples takes to the host's
//!   rate, hands clips to the audio threads, drops the clips they let go of and
//!   starts the generations MIDI asked for. It never waits behind a generation.
//!
//! Both are started by the first instance that activates and end on their own
//! once the last instance is gone (they are never joined from `Drop`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use musicgen::{GenerationRequest, HubOptions, MusicGen, Progress};
use parking_lot::Mutex;

use crate::clip::{make_loop, Clip, LOOP_CROSSFADE_S};
use crate::instance::{unix_now, Instance, Job, JobStage};
use crate::player::AudioCommand;
use crate::session::{Take, TakeMeta, TakeStatus};

/// How often the I/O worker polls the instances' return queues and triggers.
const POLL: Duration = Duration::from_millis(10);
/// How long the last instance's `Drop` waits for the workers to end (so a host
/// unloading the library does not pull code from under a running thread).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// A model unused this long is unloaded (`PROMPTLOOP_UNLOAD_AFTER_S` overrides).
fn unload_after() -> Duration {
    std::env::var("PROMPTLOOP_UNLOAD_AFTER_S")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(600))
}

/// Process-wide counters, for the diagnostics hook and the host tests.
pub struct Counters {
    pub model_loads: AtomicU64,
    pub models_resident: AtomicU64,
    pub jobs_done: AtomicU64,
    pub jobs_cancelled: AtomicU64,
    pub jobs_failed: AtomicU64,
}

pub static COUNTERS: Counters = Counters {
    model_loads: AtomicU64::new(0),
    models_resident: AtomicU64::new(0),
    jobs_done: AtomicU64::new(0),
    jobs_cancelled: AtomicU64::new(0),
    jobs_failed: AtomicU64::new(0),
};

enum InferenceMsg {
    Generate(Weak<Instance>, Arc<Job>),
    Unload,
}

pub enum IoMsg {
    /// Poll this instance's queues from now on.
    Register(Weak<Instance>),
    /// Load takes whose audio is not in memory and resample every take for the
    /// host's current rate.
    Refresh(Weak<Instance>),
    /// A generation finished: save it and hand it to the audio thread.
    Finished {
        instance: Weak<Instance>,
        job: Arc<Job>,
        request: GenerationRequest,
        pcm: Vec<f32>,
        sample_rate: u32,
    },
}

/// Handles to the two worker threads; shared by reference count.
pub struct Workers {
    inference: Sender<InferenceMsg>,
    io: Sender<IoMsg>,
    ended: Receiver<()>,
}

static WORKERS: Mutex<Weak<Workers>> = Mutex::new(Weak::new());

/// The registry's lock, for `instance::hold_all_locks`.
pub(crate) fn lock_registry() -> parking_lot::MutexGuard<'static, Weak<Workers>> {
    WORKERS.lock()
}

impl Workers {
    /// The running workers, or new ones if none run.
    pub fn acquire() -> Arc<Workers> {
        let mut slot = WORKERS.lock();
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
                .name("promptloop-inference".into())
                .spawn(move || {
                    inference_main(inference_rx, io);
                    let _ = ended_tx.send(());
                })
                .expect("cannot start the inference thread");
        }
        std::thread::Builder::new()
            .name("promptloop-io".into())
            .spawn(move || {
                io_main(io_rx);
                let _ = ended_tx.send(());
            })
            .expect("cannot start the I/O thread");
        let w = Arc::new(Workers {
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

    pub fn generate(&self, instance: Weak<Instance>, job: Arc<Job>) {
        let _ = self.inference.send(InferenceMsg::Generate(instance, job));
    }

    pub fn unload(&self) {
        let _ = self.inference.send(InferenceMsg::Unload);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Closing the channels ends both threads; the last instance's jobs were
        // cancelled, so a generation stops within a step. Wait a bounded time.
        let (dummy_i, _) = crossbeam_channel::bounded(0);
        let (dummy_o, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.inference, dummy_i));
        drop(std::mem::replace(&mut self.io, dummy_o));
        let on_worker = std::thread::current()
            .name()
            .is_some_and(|n| n == "promptloop-io" || n == "promptloop-inference");
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

/// Threads of the compute pool: all cores but one, so the host keeps one.
pub fn compute_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .saturating_sub(1)
        .max(1)
}

fn compute_pool() -> Result<Arc<rayon::ThreadPool>, String> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(compute_threads())
        .thread_name(|i| format!("promptloop-compute-{i}"))
        .start_handler(|_| lower_thread_priority())
        .build()
        .map(Arc::new)
        .map_err(|e| format!("cannot start the compute threads: {e}"))
}

/// Lowers the calling thread's priority, so the host's threads come first.
#[cfg(target_os = "linux")]
fn lower_thread_priority() {
    // On Linux the nice value is per thread; `who = 0` is the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_thread_priority() {}

type ModelKey = (
    musicgen::ModelSource,
    musicgen::Precision,
    musicgen::DeviceChoice,
);

struct Loaded {
    key: ModelKey,
    model: MusicGen,
    last_used: Instant,
}

fn inference_main(rx: Receiver<InferenceMsg>, io: Sender<IoMsg>) {
    lower_thread_priority();
    let mut pool: Option<Arc<rayon::ThreadPool>> = None;
    let mut loaded: Option<Loaded> = None;
    let idle = unload_after();
    let unload = |loaded: &mut Option<Loaded>| {
        if loaded.take().is_some() {
            COUNTERS.models_resident.fetch_sub(1, Ordering::Relaxed);
        }
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(InferenceMsg::Generate(instance, job)) => {
                run_job(&instance, &job, &mut pool, &mut loaded, &io);
            }
            Ok(InferenceMsg::Unload) => unload(&mut loaded),
            Err(RecvTimeoutError::Timeout) => {
                if loaded
                    .as_ref()
                    .is_some_and(|l| l.last_used.elapsed() >= idle)
                {
                    unload(&mut loaded);
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    unload(&mut loaded);
}

fn run_job(
    instance: &Weak<Instance>,
    job: &Arc<Job>,
    pool: &mut Option<Arc<rayon::ThreadPool>>,
    loaded: &mut Option<Loaded>,
    io: &Sender<IoMsg>,
) {
    let alive = instance.upgrade().is_some_and(|i| !i.is_closed());
    if !alive || job.cancel.load(Ordering::Acquire) {
        job.set_stage(JobStage::Cancelled);
        COUNTERS.jobs_cancelled.fetch_add(1, Ordering::Relaxed);
        return;
    }
    match generate(job, pool, loaded) {
        Ok((request, pcm, sample_rate)) => {
            job.set_stage(JobStage::Saving);
            let _ = io.send(IoMsg::Finished {
                instance: instance.clone(),
                job: job.clone(),
                request,
                pcm,
                sample_rate,
            });
        }
        Err(musicgen::Error::Cancelled) => {
            job.set_stage(JobStage::Cancelled);
            COUNTERS.jobs_cancelled.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => fail(instance, job, e.to_string()),
    }
}

fn fail(instance: &Weak<Instance>, job: &Job, message: String) {
    COUNTERS.jobs_failed.fetch_add(1, Ordering::Relaxed);
    job.set_stage(JobStage::Failed(message.clone()));
    if let Some(i) = instance.upgrade() {
        i.session.write().last_error = Some(message);
    }
}

/// Loads the model if needed and generates: the take's loop at the model rate.
fn generate(
    job: &Job,
    pool: &mut Option<Arc<rayon::ThreadPool>>,
    loaded: &mut Option<Loaded>,
) -> musicgen::Result<(GenerationRequest, Vec<f32>, u32)> {
    let r = &job.request;
    let key: ModelKey = (r.model.clone(), r.precision, r.device);
    if loaded.as_ref().is_some_and(|l| l.key != key) {
        // One model at a time: free the old one before the new one loads.
        *loaded = None;
        COUNTERS.models_resident.fetch_sub(1, Ordering::Relaxed);
    }
    if loaded.is_none() {
        let threads = match pool {
            Some(p) => p.clone(),
            None => {
                let p = compute_pool().map_err(musicgen::Error::Device)?;
                *pool = Some(p.clone());
                p
            }
        };
        job.set_stage(JobStage::Loading);
        let model = MusicGen::from_source(
            &r.model,
            &HubOptions::default(),
            r.device,
            r.precision,
            threads,
            &mut |p| {
                if let Progress::Download(d) = p {
                    job.set_stage(JobStage::Downloading {
                        file: d.file,
                        done: d.done,
                        total: d.total,
                    });
                }
            },
            &job.cancel,
        )?;
        COUNTERS.model_loads.fetch_add(1, Ordering::Relaxed);
        COUNTERS.models_resident.fetch_add(1, Ordering::Relaxed);
        *loaded = Some(Loaded {
            key,
            model,
            last_used: Instant::now(),
        });
    }
    let l = loaded.as_mut().expect("loaded above");
    let model = &mut l.model;
    let rate = model.sample_rate();
    let hop = model.hop_length();
    let loop_len = (job.plan.seconds * rate as f64).round() as usize;
    let fade = (LOOP_CROSSFADE_S * rate as f64).round() as usize;
    let max_frames = model.defaults().max_frames;
    let frames = (loop_len + fade).div_ceil(hop).clamp(1, max_frames);
    let mut request = job.request.clone();
    request.frames = frames;
    let result = model.generate(
        &request,
        &mut |p| match p {
            Progress::EncodingText => job.set_stage(JobStage::EncodingText),
            Progress::Step { step, total } => job.set_step(step, total),
            Progress::DecodingAudio => job.set_stage(JobStage::DecodingAudio),
            _ => {}
        },
        &job.cancel,
    );
    l.last_used = Instant::now();
    let generation = result?;
    let pcm = make_loop(&generation.audio, loop_len, fade);
    Ok((request, pcm, generation.sample_rate))
}

fn io_main(rx: Receiver<IoMsg>) {
    let mut instances: Vec<Weak<Instance>> = Vec::new();
    loop {
        match rx.recv_timeout(POLL) {
            Ok(IoMsg::Register(w)) => instances.push(w),
            Ok(IoMsg::Refresh(w)) => {
                if let Some(i) = w.upgrade() {
                    refresh(&i);
                }
            }
            Ok(IoMsg::Finished {
                instance,
                job,
                request,
                pcm,
                sample_rate,
            }) => finish(&instance, &job, request, pcm, sample_rate),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        instances.retain(|w| w.strong_count() > 0);
        for i in instances.iter().filter_map(Weak::upgrade) {
            i.collect_returns();
            if !i.is_closed() {
                i.poll_triggers();
            }
        }
    }
}

/// Resamples a take's model-rate loop for the host, as a loop.
fn make_clip(meta: &TakeMeta, pcm: &[f32], host_rate: u32) -> Result<Arc<Clip>, String> {
    let samples = musicgen::wav::resample_loop(pcm, meta.sample_rate, host_rate)
        .map_err(|e| e.to_string())?;
    Ok(Clip::new(
        meta.key(),
        samples,
        host_rate,
        meta.beats(),
        meta.tempo,
    ))
}

/// Saves a finished generation as a take, selects it and hands it to the audio
/// thread at the host's rate.
fn finish(
    instance: &Weak<Instance>,
    job: &Arc<Job>,
    request: GenerationRequest,
    pcm: Vec<f32>,
    sample_rate: u32,
) {
    let Some(i) = instance.upgrade() else {
        COUNTERS.jobs_cancelled.fetch_add(1, Ordering::Relaxed);
        job.set_stage(JobStage::Cancelled);
        return;
    };
    let plan = &job.plan;
    if let Some(dir) = plan.file.parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return fail(
                instance,
                job,
                format!("cannot create the takes folder {}: {e}", dir.display()),
            );
        }
    }
    if let Err(e) = musicgen::wav::write_wav(&plan.file, &pcm, sample_rate) {
        return fail(instance, job, format!("cannot save the take: {e}"));
    }
    let meta = TakeMeta {
        id: job.take_id.clone(),
        request,
        engine_version: musicgen::ENGINE_VERSION.to_string(),
        seconds: pcm.len() as f64 / sample_rate as f64,
        samples: pcm.len(),
        sample_rate,
        tempo: plan.tempo,
        bars: plan.bars,
        time_signature: plan.time_signature,
        created: unix_now(),
        file: plan.file.clone(),
        hidden: false,
    };
    let pcm = Arc::new(pcm);
    {
        let mut s = i.session.write();
        s.takes.push(Take {
            meta: meta.clone(),
            status: TakeStatus::Ready,
            pcm: Some(pcm.clone()),
            clip: None,
        });
        // The newest take becomes the selected one.
        s.selected = Some(meta.id.clone());
    }
    update_clip(&i, &meta, &pcm);
    COUNTERS.jobs_done.fetch_add(1, Ordering::Relaxed);
    job.set_stage(JobStage::Done);
}

/// Resamples one take for the host's current rate (again, should the rate change
/// meanwhile) and gives the audio thread the new clip if the take is selected.
fn update_clip(i: &Arc<Instance>, meta: &TakeMeta, pcm: &[f32]) {
    loop {
        let rate = i.host.sample_rate();
        if rate == 0 {
            return; // not active yet; `activate` refreshes
        }
        let clip = match make_clip(meta, pcm, rate) {
            Ok(c) => c,
            Err(e) => {
                i.set_take_status(&meta.id, TakeStatus::Missing(e));
                return;
            }
        };
        if i.host.sample_rate() != rate {
            continue;
        }
        let selected = {
            let mut s = i.session.write();
            let Some(t) = s.take_mut(&meta.id) else {
                return;
            };
            t.clip = Some(clip.clone());
            s.selected.as_deref() == Some(meta.id.as_str())
        };
        if selected {
            i.send_audio(AudioCommand::Select(Some(clip)));
        }
        return;
    }
}

/// Loads takes whose audio is not in memory, then resamples every take whose
/// clip is not at the host's rate.
fn refresh(i: &Arc<Instance>) {
    let to_load: Vec<TakeMeta> = i
        .session
        .read()
        .takes
        .iter()
        .filter(|t| t.pcm.is_none() && t.status == TakeStatus::Loading)
        .map(|t| t.meta.clone())
        .collect();
    for meta in to_load {
        match read_take(&meta) {
            Ok(pcm) => {
                if let Some(t) = i.session.write().take_mut(&meta.id) {
                    t.pcm = Some(Arc::new(pcm));
                    t.status = TakeStatus::Ready;
                }
            }
            Err(reason) => i.set_take_status(&meta.id, TakeStatus::Missing(reason)),
        }
    }
    let rate = i.host.sample_rate();
    let stale: Vec<(TakeMeta, Arc<Vec<f32>>)> = i
        .session
        .read()
        .takes
        .iter()
        .filter(|t| t.clip.as_ref().is_none_or(|c| c.sample_rate != rate))
        .filter_map(|t| Some((t.meta.clone(), t.pcm.clone()?)))
        .collect();
    // The selected take first: it is the one the producer hears.
    let selected = i.session.read().selected.clone();
    let (first, rest): (Vec<_>, Vec<_>) = stale
        .into_iter()
        .partition(|(m, _)| Some(&m.id) == selected.as_ref());
    for (meta, pcm) in first.into_iter().chain(rest) {
        update_clip(i, &meta, &pcm);
    }
    if selected.is_none() {
        i.send_audio(AudioCommand::Select(None));
    }
}

/// Reads a take's WAV and checks it is the audio the metadata describes.
fn read_take(meta: &TakeMeta) -> Result<Vec<f32>, String> {
    if !meta.file.exists() {
        return Err(format!("the file {} is missing", meta.file.display()));
    }
    let (pcm, rate) = musicgen::wav::read_wav(&meta.file).map_err(|e| e.to_string())?;
    if rate != meta.sample_rate {
        return Err(format!(
            "{} is at {rate} Hz, the take was made at {} Hz",
            meta.file.display(),
            meta.sample_rate
        ));
    }
    if pcm.len() != meta.samples {
        return Err(format!(
            "{} holds {} samples, the take has {}",
            meta.file.display(),
            pcm.len(),
            meta.samples
        ));
    }
    if pcm.iter().any(|s| !s.is_finite()) {
        return Err(format!("{} holds invalid samples", meta.file.display()));
    }
    Ok(pcm)
}

//! One plugin instance's non-real-time side: its session, its jobs, the host
//! facts the audio thread publishes, and its ends of the audio thread's queues.
//! The editor and the workers call in here; `process()` never does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use musicgen::GenerationRequest;
use parking_lot::{Mutex, RwLock};

use crate::clip::{bars_to_seconds, Clip};
use crate::player::AudioCommand;
use crate::session::{Length, Session, TakeStatus, MAX_PROMPT_CHARS, MAX_SECONDS};
use crate::workers::{IoMsg, Workers};

/// Capacity of the queue to the audio thread, and of the return queue.
pub const QUEUE_CAPACITY: usize = 64;
/// Tempo assumed when the host gives none (and the editor says so).
pub const FALLBACK_TEMPO: f64 = 120.0;

/// Facts about the host that the audio thread publishes as atomics.
pub struct HostInfo {
    sample_rate: AtomicU32,
    /// f64 bits; NaN while the host has given no tempo.
    tempo: AtomicU64,
    /// numerator << 16 | denominator; 0 while unknown.
    time_signature: AtomicU32,
}

impl HostInfo {
    fn new() -> Self {
        Self {
            sample_rate: AtomicU32::new(0),
            tempo: AtomicU64::new(f64::NAN.to_bits()),
            time_signature: AtomicU32::new(0),
        }
    }

    /// Real-time safe: stores only.
    pub fn publish(&self, tempo: Option<f64>, numerator: Option<i32>, denominator: Option<i32>) {
        if let Some(t) = tempo.filter(|t| t.is_finite() && *t > 0.0) {
            self.tempo.store(t.to_bits(), Ordering::Relaxed);
        }
        if let (Some(n), Some(d)) = (numerator, denominator) {
            if (1..=64).contains(&n) && (1..=64).contains(&d) {
                self.time_signature
                    .store(((n as u32) << 16) | d as u32, Ordering::Relaxed);
            }
        }
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate.load(Ordering::Acquire)
    }

    pub fn set_sample_rate(&self, rate: u32) {
        self.sample_rate.store(rate, Ordering::Release);
    }

    pub fn tempo(&self) -> Option<f64> {
        let t = f64::from_bits(self.tempo.load(Ordering::Relaxed));
        t.is_finite().then_some(t)
    }

    pub fn time_signature(&self) -> Option<(u32, u32)> {
        let v = self.time_signature.load(Ordering::Relaxed);
        (v != 0).then_some((v >> 16, v & 0xffff))
    }
}

/// What the audio thread is sounding, for the editor's playhead: the take's
/// key (0: nothing), the position and the clip length, in host samples.
#[derive(Default)]
pub struct Playhead {
    take: AtomicU64,
    pos: AtomicU64,
    len: AtomicU64,
}

impl Playhead {
    /// Real-time safe: stores only.
    pub fn publish(&self, now: Option<(u64, usize, usize)>) {
        let (take, pos, len) = now.unwrap_or((0, 0, 0));
        self.take.store(take, Ordering::Relaxed);
        self.pos.store(pos as u64, Ordering::Relaxed);
        self.len.store(len as u64, Ordering::Relaxed);
    }

    /// The sounding take's key and its position as a fraction of its length.
    pub fn get(&self) -> Option<(u64, f32)> {
        let take = self.take.load(Ordering::Relaxed);
        let len = self.len.load(Ordering::Relaxed);
        (take != 0 && len > 0).then(|| (take, self.pos.load(Ordering::Relaxed) as f32 / len as f32))
    }
}

/// Where a job stands, for the editor.
#[derive(Debug, Clone, PartialEq)]
pub enum JobStage {
    Queued,
    Downloading { file: String, done: u64, total: u64 },
    Loading,
    EncodingText,
    Generating,
    DecodingAudio,
    Saving,
    Done,
    Cancelled,
    Failed(String),
}

impl JobStage {
    pub fn finished(&self) -> bool {
        matches!(
            self,
            JobStage::Done | JobStage::Cancelled | JobStage::Failed(_)
        )
    }
}

/// A job's progress as the editor reads it.
#[derive(Debug, Clone)]
pub struct JobProgress {
    pub stage: JobStage,
    pub step: usize,
    pub total: usize,
    pub steps_per_s: f64,
    pub eta_s: Option<f64>,
    pub queued_at: Instant,
    pub started_at: Option<Instant>,
    pub finished_at: Option<Instant>,
}

/// What a job should make, fixed when it is requested.
#[derive(Debug, Clone)]
pub struct TakePlan {
    pub seconds: f64,
    pub tempo: Option<f64>,
    pub bars: Option<f64>,
    pub time_signature: Option<(u32, u32)>,
    pub file: PathBuf,
}

/// One generation, queued for the inference worker.
pub struct Job {
    pub take_id: String,
    /// `frames` is set by the worker once the model's frame rate is known.
    pub request: GenerationRequest,
    pub plan: TakePlan,
    pub cancel: AtomicBool,
    pub progress: Mutex<JobProgress>,
}

impl Job {
    pub fn set_stage(&self, stage: JobStage) {
        let mut p = self.progress.lock();
        if stage.finished() {
            p.finished_at = Some(Instant::now());
        } else if p.started_at.is_none() && stage != JobStage::Queued {
            p.started_at = Some(Instant::now());
        }
        p.stage = stage;
    }

    pub fn set_step(&self, step: usize, total: usize) {
        let mut p = self.progress.lock();
        p.stage = JobStage::Generating;
        p.step = step;
        p.total = total;
        if let Some(t0) = p.started_at {
            let s = t0.elapsed().as_secs_f64();
            if s > 0.0 && step > 0 {
                p.steps_per_s = step as f64 / s;
                p.eta_s = Some((total - step) as f64 / p.steps_per_s);
            }
        }
    }

    pub fn stage(&self) -> JobStage {
        self.progress.lock().stage.clone()
    }
}

/// The shared, non-real-time side of one plugin instance.
pub struct Instance {
    pub session: RwLock<Session>,
    pub host: HostInfo,
    pub playhead: Playhead,
    /// Bumped by the audio thread on the generate note; the I/O worker acts on it.
    pub generate_trigger: AtomicU32,
    trigger_seen: AtomicU32,
    audio_tx: Mutex<rtrb::Producer<AudioCommand>>,
    returns_rx: Mutex<rtrb::Consumer<Arc<Clip>>>,
    jobs: Mutex<Vec<Arc<Job>>>,
    workers: Mutex<Option<Arc<Workers>>>,
    /// The last host rate takes were resampled for (0: none yet).
    resampled_for: AtomicU32,
    closed: AtomicBool,
}

/// Every live instance in the process, for purging unused takes.
static INSTANCES: Mutex<Vec<Weak<Instance>>> = Mutex::new(Vec::new());

impl Instance {
    /// Builds the instance and the audio thread's ends of its queues. Cheap: no
    /// thread, no I/O (hosts construct plugins while scanning).
    pub fn new() -> (
        Arc<Self>,
        rtrb::Consumer<AudioCommand>,
        rtrb::Producer<Arc<Clip>>,
    ) {
        let (audio_tx, audio_rx) = rtrb::RingBuffer::new(QUEUE_CAPACITY);
        let (returns_tx, returns_rx) = rtrb::RingBuffer::new(QUEUE_CAPACITY);
        let instance = Arc::new(Self {
            session: RwLock::new(Session::default()),
            host: HostInfo::new(),
            playhead: Playhead::default(),
            generate_trigger: AtomicU32::new(0),
            trigger_seen: AtomicU32::new(0),
            audio_tx: Mutex::new(audio_tx),
            returns_rx: Mutex::new(returns_rx),
            jobs: Mutex::new(Vec::new()),
            workers: Mutex::new(None),
            resampled_for: AtomicU32::new(0),
            closed: AtomicBool::new(false),
        });
        let mut all = INSTANCES.lock();
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&instance));
        (instance, audio_rx, returns_tx)
    }

    /// Called from the plugin's `initialize`: starts (or joins) the workers and
    /// brings the takes to the host's rate. Safe to call again.
    pub fn activate(self: &Arc<Self>, sample_rate: u32) {
        self.host.set_sample_rate(sample_rate);
        let workers = {
            let mut slot = self.workers.lock();
            match slot.as_ref() {
                Some(w) => w.clone(),
                None => {
                    let w = Workers::acquire();
                    w.send_io(IoMsg::Register(Arc::downgrade(self)));
                    *slot = Some(w.clone());
                    w
                }
            }
        };
        let previous = self.resampled_for.swap(sample_rate, Ordering::AcqRel);
        if previous != sample_rate {
            workers.send_io(IoMsg::Refresh(Arc::downgrade(self)));
        }
    }

    /// Loads the takes of a restored session (off the audio thread), now if the
    /// instance is active, else when it activates.
    pub fn reload_takes(self: &Arc<Self>) {
        if let Some(w) = self.workers() {
            w.send_io(IoMsg::Refresh(Arc::downgrade(self)));
        }
    }

    fn workers(&self) -> Option<Arc<Workers>> {
        self.workers.lock().clone()
    }

    /// Sends a command to the audio thread. Never blocks; a full queue drops it.
    pub fn send_audio(&self, cmd: AudioCommand) -> bool {
        self.audio_tx.lock().push(cmd).is_ok()
    }

    /// Drops the clips the audio thread has let go of. Called by the I/O worker.
    pub fn collect_returns(&self) {
        let mut rx = self.returns_rx.lock();
        while let Ok(clip) = rx.pop() {
            drop(clip);
        }
    }

    /// Starts the generations the audio thread was asked for by MIDI.
    pub fn poll_triggers(self: &Arc<Self>) {
        let now = self.generate_trigger.load(Ordering::Acquire);
        let seen = self.trigger_seen.swap(now, Ordering::AcqRel);
        if now != seen {
            if let Err(e) = self.generate() {
                self.session.write().last_error = Some(e);
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Queues a generation with the current settings. The error, in words, is
    /// also kept for the editor.
    pub fn generate(self: &Arc<Self>) -> Result<String, String> {
        let result = self.queue_generation();
        if let Err(e) = &result {
            self.session.write().last_error = Some(e.clone());
        }
        result
    }

    fn queue_generation(self: &Arc<Self>) -> Result<String, String> {
        let workers = self
            .workers()
            .ok_or("the plugin is not active yet: start the host's audio engine")?;
        let mut session = self.session.write();
        session.last_error = None;
        let s = session.settings.clone();
        if s.prompt.chars().count() > MAX_PROMPT_CHARS {
            return Err(format!(
                "the prompt is {} characters long; the limit is {MAX_PROMPT_CHARS}",
                s.prompt.chars().count()
            ));
        }
        let host_tempo = self.host.tempo();
        let (seconds, bars, time_signature, tempo) = match s.length {
            Length::Seconds(sec) => (sec, None, self.host.time_signature(), host_tempo),
            Length::Bars(b) => {
                let tempo = host_tempo.unwrap_or(FALLBACK_TEMPO);
                let (n, d) = self.host.time_signature().unwrap_or((4, 4));
                let sec = bars_to_seconds(b, tempo, n, d);
                (sec, Some(b), Some((n, d)), Some(tempo))
            }
        };
        if !(seconds.is_finite() && seconds > 0.0) {
            return Err(format!("a take must be longer than 0 s (got {seconds} s)"));
        }
        if seconds > MAX_SECONDS + 1e-9 {
            let what = match (bars, tempo) {
                (Some(b), Some(t)) => format!("{b} bars at {t:.1} bpm is {seconds:.2} s"),
                _ => format!("{seconds:.2} s"),
            };
            return Err(format!(
                "{what}; MusicGen makes at most {MAX_SECONDS} s: choose fewer bars or seconds"
            ));
        }
        let seed = s.seed.unwrap_or_else(random_seed);
        let request = GenerationRequest {
            prompt: s.prompt.clone(),
            model: s.model.clone(),
            precision: s.precision,
            device: s.device,
            frames: 1,
            guidance_scale: s.guidance_scale,
            sampling: s.sampling(),
            seed,
        };
        let prompt = s.prompt.trim().to_string();
        session.recent_prompts.retain(|p| p != &prompt);
        if !prompt.is_empty() {
            session.recent_prompts.insert(0, prompt);
            session
                .recent_prompts
                .truncate(crate::session::RECENT_PROMPTS);
        }
        drop(session);
        let plan = |file| TakePlan {
            seconds,
            tempo,
            bars,
            time_signature,
            file,
        };
        Ok(self.queue(&workers, request, plan, s.data_folder.as_deref()))
    }

    /// Queues the same request as an earlier take (same seed, length and
    /// tempo): the editor's "regenerate".
    pub fn regenerate(self: &Arc<Self>, take_id: &str) -> Result<String, String> {
        let workers = self
            .workers()
            .ok_or("the plugin is not active yet: start the host's audio engine")?;
        let session = self.session.read();
        let meta = session
            .take(take_id)
            .ok_or_else(|| format!("no take {take_id}"))?
            .meta
            .clone();
        let folder = session.settings.data_folder.clone();
        drop(session);
        let plan = |file| TakePlan {
            seconds: meta.seconds,
            tempo: meta.tempo,
            bars: meta.bars,
            time_signature: meta.time_signature,
            file,
        };
        Ok(self.queue(&workers, meta.request.clone(), plan, folder.as_deref()))
    }

    fn queue(
        self: &Arc<Self>,
        workers: &Workers,
        request: GenerationRequest,
        plan: impl FnOnce(PathBuf) -> TakePlan,
        data_folder: Option<&Path>,
    ) -> String {
        let id = new_take_id();
        let file = takes_folder(data_folder).join(format!("{id}.wav"));
        let job = Arc::new(Job {
            take_id: id.clone(),
            request,
            plan: plan(file),
            cancel: AtomicBool::new(false),
            progress: Mutex::new(JobProgress {
                stage: JobStage::Queued,
                step: 0,
                total: 0,
                steps_per_s: 0.0,
                eta_s: None,
                queued_at: Instant::now(),
                started_at: None,
                finished_at: None,
            }),
        });
        {
            let mut jobs = self.jobs.lock();
            // Keep the finished ones a while for the editor, not for ever.
            let finished = jobs.iter().filter(|j| j.stage().finished()).count();
            if finished > 8 {
                let mut drop_n = finished - 8;
                jobs.retain(|j| {
                    let keep = drop_n == 0 || !j.stage().finished();
                    if !keep {
                        drop_n -= 1;
                    }
                    keep
                });
            }
            jobs.push(job.clone());
        }
        workers.generate(Arc::downgrade(self), job);
        id
    }

    /// This instance's jobs, oldest first.
    pub fn jobs(&self) -> Vec<Arc<Job>> {
        self.jobs.lock().clone()
    }

    /// Cancels one job (queued or running).
    pub fn cancel(&self, take_id: &str) {
        for j in self.jobs.lock().iter() {
            if j.take_id == take_id {
                j.cancel.store(true, Ordering::Release);
            }
        }
    }

    pub fn cancel_all(&self) {
        for j in self.jobs.lock().iter() {
            j.cancel.store(true, Ordering::Release);
        }
    }

    /// Makes a take the one Loop and MIDI play.
    pub fn select(&self, take_id: Option<&str>) {
        let mut session = self.session.write();
        let clip = take_id.and_then(|id| session.take(id)?.clip.clone());
        session.selected = take_id.map(str::to_string);
        drop(session);
        self.send_audio(AudioCommand::Select(clip));
    }

    /// Plays a take once from the start (the editor's preview).
    pub fn preview(&self, take_id: &str) -> bool {
        let clip = self
            .session
            .read()
            .take(take_id)
            .and_then(|t| t.clip.clone());
        match clip {
            Some(c) => self.send_audio(AudioCommand::Preview(c)),
            None => false,
        }
    }

    pub fn stop_preview(&self) {
        self.send_audio(AudioCommand::StopPreview);
    }

    /// Hides a take. Its file stays: an older save of the project, or the host's
    /// undo, may still point at it.
    pub fn delete(&self, take_id: &str) {
        let mut session = self.session.write();
        if let Some(t) = session.take_mut(take_id) {
            t.meta.hidden = true;
        }
        let was_selected = session.selected.as_deref() == Some(take_id);
        drop(session);
        if was_selected {
            self.select(None);
        }
    }

    /// The folder this instance's take WAVs go in.
    pub fn takes_folder(&self) -> PathBuf {
        takes_folder(self.session.read().settings.data_folder.as_deref())
    }

    /// The folder of WAVs exported at the host's rate (drag-out, copy path).
    pub fn exports_folder(&self) -> PathBuf {
        self.takes_folder().join("exports")
    }

    /// Frees the model's memory now (the next generation loads it again).
    pub fn unload_models(&self) {
        if let Some(w) = self.workers() {
            w.unload();
        }
    }

    /// Called by the plugin's `Drop`: cancels this instance's jobs and hands
    /// back its share of the workers, for the caller to drop (on the host's
    /// thread, never on a worker's own).
    pub fn close(&self) -> Option<Arc<Workers>> {
        self.closed.store(true, Ordering::Release);
        self.cancel_all();
        self.workers.lock().take()
    }

    /// The files this instance's visible takes use.
    fn referenced_files(&self) -> Vec<PathBuf> {
        self.session
            .read()
            .takes
            .iter()
            .filter(|t| !t.meta.hidden)
            .map(|t| t.meta.file.clone())
            .collect()
    }

    pub(crate) fn set_take_status(&self, take_id: &str, status: TakeStatus) {
        if let Some(t) = self.session.write().take_mut(take_id) {
            t.status = status;
        }
    }
}

/// Holds every lock the editor and the workers use, of every instance, for
/// `duration`: the host tests check that `process()` runs on regardless.
pub fn hold_all_locks(duration: std::time::Duration) {
    let all = INSTANCES.lock();
    let live: Vec<Arc<Instance>> = all.iter().filter_map(Weak::upgrade).collect();
    let jobs: Vec<Arc<Job>> = live.iter().flat_map(|i| i.jobs.lock().clone()).collect();
    let guards: Vec<_> = live
        .iter()
        .map(|i| {
            (
                i.session.write(),
                i.audio_tx.lock(),
                i.returns_rx.lock(),
                i.workers.lock(),
                i.jobs.lock(),
            )
        })
        .collect();
    let progress: Vec<_> = jobs.iter().map(|j| j.progress.lock()).collect();
    // Last: `activate` takes an instance's `workers` lock before the registry's.
    let registry = crate::workers::lock_registry();
    std::thread::sleep(duration);
    drop(registry);
    drop(progress);
    drop(guards);
}

/// Removes take WAVs in `folder` that no take of any instance loaded in this
/// process shows. Returns the files removed. Projects not open in this process
/// are not known: the editor says so before it asks.
pub fn purge_unused_takes(folder: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut referenced: Vec<PathBuf> = Vec::new();
    for instance in INSTANCES.lock().iter().filter_map(Weak::upgrade) {
        referenced.extend(instance.referenced_files());
    }
    let referenced: Vec<PathBuf> = referenced
        .iter()
        .map(|p| p.canonicalize().unwrap_or_else(|_| p.clone()))
        .collect();
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(folder) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let is_take = path.extension().is_some_and(|e| e == "wav")
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("take-"));
        if !is_take {
            continue;
        }
        let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
        if !referenced.contains(&canonical) {
            std::fs::remove_file(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// The folder take WAVs go in: the configured one, else `$PROMPTLOOP_DATA_DIR`,
/// else the user's data directory.
pub fn takes_folder(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured.filter(|p| !p.as_os_str().is_empty()) {
        return p.to_path_buf();
    }
    match std::env::var_os("PROMPTLOOP_DATA_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("takes"),
        _ => dirs::data_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("Promptloop")
            .join("takes"),
    }
}

fn unique_bits() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// A new take id: `take-<unix ms>-<random>`, sortable by creation.
pub fn new_take_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("take-{ms}-{:08x}", unique_bits() as u32)
}

/// A seed for "random" mode; kept with the take so it can be reused.
pub fn random_seed() -> u64 {
    unique_bits() >> 16
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

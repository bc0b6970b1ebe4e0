//! One plugin instance's non-real-time side: its session, its jobs, the host
//! facts the audio thread publishes, and its end of the audio hand-off. The
//! editor and the plugin's `activate` call in here; `process()` only publishes
//! host facts and bumps the MIDI trigger. The workers see an instance only as a
//! [`TakeOwner`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use musicgen::request::Pcm;
use musicgen::{GenerationRequest, Melody};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use serde_json::Value;

use crate::capture::{Capture, CaptureKind, CaptureProgress, CaptureState};
use crate::error::{PluginError, Result};
use crate::handoff::{handoff, AudioCommand, ControlEnd, PlayerEnd, QUEUE_CAPACITY};
use crate::host::HostInfo;
use crate::models::capabilities;
use crate::player::Playhead;
use crate::request::{request_for, HostTime, Job, TakePlan};
use crate::session::{Session, Settings};
use crate::store::files::{purge_unreferenced, takes_folder};
use crate::store::IoMsg;
use crate::take::{MelodySource, TakeId, TakeSource, TakeStatus};
use crate::workers::{Owner, TakeOwner, WorkerThreads};

/// Finished jobs kept for the editor (the running and queued ones always are).
const FINISHED_JOBS_KEPT: usize = 8;

/// The shared, non-real-time side of one plugin instance.
pub struct Instance {
    session: RwLock<Session>,
    pub host: HostInfo,
    pub playhead: Playhead,
    /// The armed or running recording, as the audio thread reports it.
    pub capture: Arc<CaptureProgress>,
    /// Bumped by the audio thread on the generate note; the I/O worker acts on it.
    generate_trigger: AtomicU32,
    trigger_seen: AtomicU32,
    /// Bumped by the audio thread on the capture and melody notes.
    capture_triggers: [AtomicU32; 2],
    capture_seen: [AtomicU32; 2],
    audio: ControlEnd,
    jobs: Mutex<Vec<Arc<Job>>>,
    workers: Mutex<Option<Arc<WorkerThreads>>>,
    /// The last host rate takes were resampled for (0: none yet).
    resampled_for: AtomicU32,
    closed: AtomicBool,
}

/// Every live instance in the process, for purging unused takes.
static INSTANCES: Mutex<Vec<Weak<Instance>>> = Mutex::new(Vec::new());

impl Instance {
    /// Builds the instance and the audio thread's end of its hand-off. Cheap: no
    /// thread, no I/O (hosts construct plugins while scanning).
    pub fn new() -> (Arc<Self>, PlayerEnd) {
        let (player_end, audio) = handoff(QUEUE_CAPACITY, QUEUE_CAPACITY);
        let instance = Arc::new(Self {
            session: RwLock::new(Session::default()),
            host: HostInfo::default(),
            playhead: Playhead::default(),
            capture: Arc::default(),
            generate_trigger: AtomicU32::new(0),
            trigger_seen: AtomicU32::new(0),
            capture_triggers: Default::default(),
            capture_seen: Default::default(),
            audio,
            jobs: Mutex::new(Vec::new()),
            workers: Mutex::new(None),
            resampled_for: AtomicU32::new(0),
            closed: AtomicBool::new(false),
        });
        let mut all = INSTANCES.lock();
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&instance));
        (instance, player_end)
    }

    fn owner(self: &Arc<Self>) -> Owner {
        let owner: Arc<dyn TakeOwner> = self.clone();
        Arc::downgrade(&owner)
    }

    /// Called from the plugin's `activate`: starts (or joins) the workers and
    /// brings the takes to the host's rate. Safe to call again.
    pub fn activate(self: &Arc<Self>, sample_rate: u32) {
        self.host.set_sample_rate(sample_rate);
        let workers = {
            let mut slot = self.workers.lock();
            match slot.as_ref() {
                Some(w) => w.clone(),
                None => {
                    let w = WorkerThreads::acquire();
                    w.send_io(IoMsg::Register(self.owner()));
                    *slot = Some(w.clone());
                    w
                }
            }
        };
        let previous = self.resampled_for.swap(sample_rate, Ordering::AcqRel);
        if previous != sample_rate {
            workers.send_io(IoMsg::Refresh(self.owner()));
        }
    }

    /// The session, to read. Changes go through the methods below.
    pub fn session(&self) -> RwLockReadGuard<'_, Session> {
        self.session.read()
    }

    /// Changes the settings of the next generation (sanitised by the session).
    pub fn update_settings(&self, change: impl FnOnce(&mut Settings)) {
        self.session.write().update_settings(change);
    }

    /// Replaces the session with a saved document: the old project's clip
    /// stops and the new takes load off the audio thread.
    pub fn load_document(self: &Arc<Self>, doc: &Value) {
        self.session.write().load_document(doc);
        self.audio.send(AudioCommand::Select(None));
        self.reload_takes();
    }

    /// Loads the takes of a restored session (off the audio thread), now if the
    /// instance is active, else when it activates.
    fn reload_takes(self: &Arc<Self>) {
        if let Some(w) = self.workers() {
            w.send_io(IoMsg::Refresh(self.owner()));
        }
    }

    fn workers(&self) -> Option<Arc<WorkerThreads>> {
        self.workers.lock().clone()
    }

    /// Asks for a generation from the audio thread (the generate note).
    /// Real-time safe: one atomic add.
    pub fn trigger_generation(&self) {
        self.generate_trigger.fetch_add(1, Ordering::AcqRel);
    }

    /// Asks for a recording from the audio thread (the capture and melody
    /// notes). Real-time safe: one atomic add.
    pub fn trigger_capture(&self, kind: CaptureKind) {
        self.capture_triggers[kind as usize].fetch_add(1, Ordering::AcqRel);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Queues a generation with the current settings and the host's tempo.
    /// The error is also kept for the editor.
    pub fn generate(self: &Arc<Self>) -> Result<TakeId> {
        let result = self.queue_from_settings();
        self.session
            .write()
            .set_error(result.as_ref().err().cloned());
        result
    }

    fn queue_from_settings(self: &Arc<Self>) -> Result<TakeId> {
        let workers = self.workers().ok_or(PluginError::NotActive)?;
        let settings = self.session.read().settings().clone();
        let id = TakeId::new();
        let file = takes_folder(settings.data_folder.as_deref()).join(format!("{id}.wav"));
        let mut plan = TakePlan::for_length(settings.length, self.host.time(), file)?;
        plan.hear_while_made = settings.hear_while_made;
        let mut request = request_for(&settings)?;
        self.add_melody(&mut request, &mut plan, settings.melody.as_ref())?;
        self.session.write().remember_prompt(&settings.prompt);
        Ok(self.queue(&workers, id, request, plan))
    }

    /// Makes a take that carries on from the end of take `of`, for the length
    /// in the settings (bars at `of`'s own tempo and metre, so it sits on its
    /// grid), with the settings' prompt, model and sampling. It holds only the
    /// new part, cut to that length: place it right after `of`.
    pub fn continue_take(self: &Arc<Self>, of: &TakeId) -> Result<TakeId> {
        let result = self.queue_continuation(of);
        self.session
            .write()
            .set_error(result.as_ref().err().cloned());
        result
    }

    fn queue_continuation(self: &Arc<Self>, of: &TakeId) -> Result<TakeId> {
        let workers = self.workers().ok_or(PluginError::NotActive)?;
        let settings = self.session.read().settings().clone();
        let (tempo, time_signature) = {
            let s = self.session.read();
            let t = s
                .take(of)
                .ok_or_else(|| PluginError::NoSuchTake(of.clone()))?;
            (t.meta.tempo, t.meta.time_signature)
        };
        let audio = self.take_audio(of)?;
        let host = self.host.time();
        let time = HostTime {
            tempo: tempo.or(host.tempo),
            time_signature: time_signature.or(host.time_signature),
        };
        let id = TakeId::new();
        let file = takes_folder(settings.data_folder.as_deref()).join(format!("{id}.wav"));
        let mut plan = TakePlan::for_length(settings.length, time, file)?;
        plan.hear_while_made = settings.hear_while_made;
        let mut request = request_for(&settings)?;
        self.add_melody(&mut request, &mut plan, settings.melody.as_ref())?;
        plan.source = TakeSource::Continuation {
            of: of.clone(),
            // The engine keeps at most a window minus the stride (12 s);
            // the finished take records exactly what it kept.
            prompt_seconds: audio.duration_s(),
        };
        request.audio_prompt = Some(audio);
        self.session.write().remember_prompt(&settings.prompt);
        Ok(self.queue(&workers, id, request, plan))
    }

    /// Arms a recording of the length in the settings (bars at the host's
    /// tempo where it starts, or seconds): the audio input (`Audio`, a take
    /// when done) or the MIDI notes played in (`Notes`, then the melody of a
    /// new take). It starts at the next bar line while the host plays.
    pub fn arm_capture(&self, kind: CaptureKind) -> Result<()> {
        let rate = self.host.sample_rate();
        if rate == 0 || self.workers().is_none() {
            return Err(PluginError::NotActive);
        }
        let length = self.session.read().settings().length;
        let time = self.host.time();
        // Allocated here, off the audio thread, before it is armed.
        let capture = Capture::new(
            kind,
            length,
            rate,
            time.tempo,
            time.time_signature,
            self.capture.clone(),
        );
        if !self.audio.send(AudioCommand::Capture(Box::new(capture))) {
            self.capture.set(CaptureState::Idle);
            return Err(PluginError::CaptureStopped(
                "the audio thread is not taking commands (is the host's audio running?)".into(),
            ));
        }
        self.session.write().set_error(None);
        Ok(())
    }

    /// Stops an armed or running recording; what it held is dropped.
    pub fn cancel_capture(&self) {
        self.audio.send(AudioCommand::CancelCapture);
    }

    /// Called from `activate` with a recording the audio thread held: one at
    /// another rate ends with the reason; one at this rate is armed again.
    pub fn capture_interrupted(&self, capture: Box<Capture>, rate: u32) {
        if capture.sample_rate == rate {
            if capture.started {
                // Audio was lost while the host stopped processing.
                self.capture.set(CaptureState::Idle);
                self.session
                    .write()
                    .set_error(Some(PluginError::CaptureStopped(
                        "the host restarted its audio engine during the recording".into(),
                    )));
                return;
            }
            self.audio.send(AudioCommand::Capture(capture));
            return;
        }
        self.capture.set(CaptureState::Idle);
        self.session
            .write()
            .set_error(Some(PluginError::CaptureStopped(format!(
                "the sample rate changed from {} to {rate} Hz",
                capture.sample_rate
            ))));
    }

    /// A take's audio, planar at its own rate: an audio prompt or a melody.
    fn take_audio(&self, id: &TakeId) -> Result<Pcm> {
        let s = self.session.read();
        let t = s
            .take(id)
            .ok_or_else(|| PluginError::SourceGone(id.clone()))?;
        let pcm = match (&t.pcm, &t.status) {
            (Some(pcm), _) => pcm.clone(),
            (None, TakeStatus::Loading) => return Err(PluginError::TakeNotReady),
            (None, _) => return Err(PluginError::SourceGone(id.clone())),
        };
        let channels = t.meta.channels.max(1);
        Ok(Pcm {
            channels: (0..channels)
                .map(|c| crate::clip::channel(&pcm, channels, c))
                .collect(),
            sample_rate: t.meta.sample_rate,
        })
    }

    /// Puts a melody into a request (refused for a model known to take none).
    fn add_melody(
        &self,
        request: &mut GenerationRequest,
        plan: &mut TakePlan,
        melody: Option<&MelodySource>,
    ) -> Result<()> {
        let Some(melody) = melody else {
            return Ok(());
        };
        if capabilities(&request.model).is_some_and(|c| !c.melody) {
            return Err(PluginError::MelodyUnsupported {
                model: request.model.to_string(),
            });
        }
        request.melody = Some(match melody {
            MelodySource::Take { of } => Melody::Audio(self.take_audio(of)?),
            MelodySource::Notes { notes, seconds } => Melody::Notes {
                notes: notes
                    .iter()
                    .map(|n| musicgen::chroma::Note {
                        start_s: n.start_s,
                        end_s: n.end_s,
                        pitch: n.pitch,
                    })
                    .collect(),
                duration_s: *seconds,
            },
        });
        plan.melody = Some(melody.clone());
        Ok(())
    }

    /// Makes a take of an audio file (WAV, FLAC, MP3, Ogg Vorbis), read and
    /// stored on the I/O worker; a file that cannot be read is an error in the
    /// editor and no take.
    pub fn import(self: &Arc<Self>, path: &Path) -> Result<TakeId> {
        let result = (|| {
            let workers = self.workers().ok_or(PluginError::NotActive)?;
            if !path.is_file() {
                return Err(PluginError::Import {
                    path: path.to_path_buf(),
                    reason: "there is no such file".into(),
                });
            }
            let id = TakeId::new();
            let file = self.takes_folder().join(format!("{id}.wav"));
            workers.send_io(IoMsg::Import {
                owner: self.owner(),
                id: id.clone(),
                from: path.to_path_buf(),
                file,
                tempo: self.host.time(),
            });
            Ok(id)
        })();
        self.session
            .write()
            .set_error(result.as_ref().err().cloned());
        result
    }

    /// Queues the same request as an earlier take (same seed, length and
    /// tempo): the editor's "regenerate".
    pub fn regenerate(self: &Arc<Self>, take: &TakeId) -> Result<TakeId> {
        let result = self.queue_again(take);
        self.session
            .write()
            .set_error(result.as_ref().err().cloned());
        result
    }

    fn queue_again(self: &Arc<Self>, take: &TakeId) -> Result<TakeId> {
        // An imported take is made again from its file.
        let imported = match self.session.read().take(take).map(|t| &t.meta.source) {
            Some(TakeSource::Imported { path }) => Some(path.clone()),
            _ => None,
        };
        if let Some(path) = imported {
            return self.import(&path);
        }
        let workers = self.workers().ok_or(PluginError::NotActive)?;
        let session = self.session.read();
        let meta = session
            .take(take)
            .ok_or_else(|| PluginError::NoSuchTake(take.clone()))?
            .meta
            .clone();
        let folder = takes_folder(session.settings().data_folder.as_deref());
        drop(session);
        let id = TakeId::new();
        let mut plan = TakePlan {
            seconds: meta.seconds,
            tempo: meta.tempo,
            bars: meta.bars,
            time_signature: meta.time_signature,
            file: folder.join(format!("{id}.wav")),
            source: meta.source.clone(),
            melody: None,
            hear_while_made: self.session.read().settings().hear_while_made,
        };
        let mut request = meta.request;
        // The audio it was made from is not in the request: take it again.
        match &meta.source {
            TakeSource::Text => {}
            TakeSource::Continuation { of, .. } => {
                request.audio_prompt = Some(self.take_audio(of)?);
            }
            TakeSource::Captured => return Err(PluginError::NotGenerated("captured")),
            TakeSource::Imported { .. } => unreachable!("imported takes are imported again above"),
        }
        self.add_melody(&mut request, &mut plan, meta.melody.as_ref())?;
        Ok(self.queue(&workers, id, request, plan))
    }

    fn queue(
        self: &Arc<Self>,
        workers: &WorkerThreads,
        id: TakeId,
        request: GenerationRequest,
        plan: TakePlan,
    ) -> TakeId {
        let job = Arc::new(Job::new(id.clone(), request, plan));
        {
            let mut jobs = self.jobs.lock();
            let finished = jobs.iter().filter(|j| j.stage().finished()).count();
            let mut drop_n = finished.saturating_sub(FINISHED_JOBS_KEPT);
            jobs.retain(|j| {
                let keep = drop_n == 0 || !j.stage().finished();
                if !keep {
                    drop_n -= 1;
                }
                keep
            });
            jobs.push(job.clone());
        }
        workers.queue_job(self.owner(), job);
        id
    }

    /// This instance's jobs, oldest first.
    pub fn jobs(&self) -> Vec<Arc<Job>> {
        self.jobs.lock().clone()
    }

    /// Cancels one job (queued or running). The editor cancels all; tests one.
    #[cfg(feature = "test-hooks")]
    pub fn cancel(&self, take: &TakeId) {
        for j in self.jobs.lock().iter().filter(|j| &j.take_id == take) {
            j.cancel();
        }
    }

    pub fn cancel_all(&self) {
        for j in self.jobs.lock().iter() {
            j.cancel();
        }
    }

    /// Makes a take the one Loop and MIDI play (`None`: nothing).
    pub fn select(&self, take: Option<&TakeId>) {
        let clip = self.session.write().select(take);
        self.audio.send(AudioCommand::Select(clip));
    }

    /// Plays a take once from the start (the editor's preview).
    pub fn preview(&self, take: &TakeId) -> bool {
        let clip = self.session.read().take(take).and_then(|t| t.clip.clone());
        match clip {
            Some(c) => self.audio.send(AudioCommand::Preview(c)),
            None => false,
        }
    }

    /// Makes the next takes with an earlier take's seed.
    pub fn use_seed_of(&self, take: &TakeId) {
        let mut session = self.session.write();
        if let Some(seed) = session.take(take).map(|t| t.meta.request.seed) {
            session.update_settings(|s| s.seed = Some(seed));
        }
    }

    /// Hides a take. Its file stays: an older save of the project, or the host's
    /// undo, may still point at it.
    pub fn delete(&self, take: &TakeId) {
        let was_selected = self.session.write().hide(take);
        if was_selected {
            self.audio.send(AudioCommand::Select(None));
        }
    }

    /// The folder this instance's take WAVs go in.
    pub fn takes_folder(&self) -> PathBuf {
        takes_folder(self.session.read().settings().data_folder.as_deref())
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
    pub fn close(&self) -> Option<Arc<WorkerThreads>> {
        self.closed.store(true, Ordering::Release);
        self.cancel_all();
        self.workers.lock().take()
    }

    /// The files this instance's visible takes use, and the takes they were
    /// made from.
    fn referenced_files(&self) -> Vec<PathBuf> {
        self.session.read().kept_files()
    }
}

impl TakeOwner for Instance {
    fn is_closed(&self) -> bool {
        Instance::is_closed(self)
    }

    fn host_rate(&self) -> u32 {
        self.host.sample_rate()
    }

    fn session(&self) -> &RwLock<Session> {
        &self.session
    }

    fn audio(&self) -> &ControlEnd {
        &self.audio
    }

    fn melody_recorded(self: Arc<Self>, melody: MelodySource) {
        self.update_settings(|s| s.melody = Some(melody));
        // A refusal (a model without melody) is kept for the editor.
        let _ = self.generate();
    }

    fn poll_triggers(self: Arc<Self>) {
        let now = self.generate_trigger.load(Ordering::Acquire);
        let seen = self.trigger_seen.swap(now, Ordering::AcqRel);
        if now != seen {
            // A refusal is kept for the editor by `generate`.
            let _ = self.generate();
        }
        for kind in [CaptureKind::Audio, CaptureKind::Notes] {
            let k = kind as usize;
            let now = self.capture_triggers[k].load(Ordering::Acquire);
            if self.capture_seen[k].swap(now, Ordering::AcqRel) != now {
                if let Err(e) = self.arm_capture(kind) {
                    self.session.write().set_error(Some(e));
                }
            }
        }
    }
}

/// Removes take WAVs in `folder` that no take of any instance loaded in this
/// process shows. Returns the files removed. Projects not open in this process
/// are not known: the editor says so before it asks.
pub fn purge_unused_takes(folder: &Path) -> std::io::Result<Vec<PathBuf>> {
    let referenced: Vec<PathBuf> = INSTANCES
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .flat_map(|i| i.referenced_files())
        .collect();
    purge_unreferenced(folder, &referenced)
}

/// Holds every lock the editor and the workers use, of every instance, for
/// `duration`: the host tests check that `process()` runs on regardless.
#[cfg(feature = "test-hooks")]
pub fn hold_all_locks(duration: std::time::Duration) {
    let all = INSTANCES.lock();
    let live: Vec<Arc<Instance>> = all.iter().filter_map(Weak::upgrade).collect();
    let jobs: Vec<Arc<Job>> = live.iter().flat_map(|i| i.jobs.lock().clone()).collect();
    let guards: Vec<_> = live
        .iter()
        .map(|i| {
            (
                i.session.write(),
                i.audio.lock_both(),
                i.workers.lock(),
                i.jobs.lock(),
            )
        })
        .collect();
    let progress: Vec<_> = jobs.iter().map(|j| j.lock_progress()).collect();
    // Last: `activate` takes an instance's `workers` lock before the registry's.
    let registry = crate::workers::lock_registry();
    std::thread::sleep(duration);
    drop(registry);
    drop(progress);
    drop(guards);
}

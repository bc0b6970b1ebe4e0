//! Where a take is stored and prepared, on the I/O worker: a finished
//! generation is written as a WAV and added to its session; takes of a
//! reopened project are read back; every take is resampled (rubato, as a loop)
//! to the host's rate and the selected one handed to the audio thread; the
//! clips the audio threads let go of are dropped here. It never waits behind a
//! generation.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use musicgen::GenerationRequest;

use crate::capture::{Capture, CaptureKind, CaptureState};
use crate::clip::Clip;
use crate::error::{PluginError, Result};
use crate::handoff::AudioCommand;
use crate::inference::{job_cancelled, job_failed};
use crate::request::{request_for, HostTime, Job, JobStage};
use crate::take::{
    unix_now, MelodySource, NoteRecord, Take, TakeId, TakeMeta, TakeSource, TakeStatus,
};
use crate::workers::{Owner, TakeOwner, COUNTERS};

pub mod files;
pub mod import;

pub const THREAD_NAME: &str = "promptloop-io";

/// How often the I/O worker polls the instances' return queues and triggers.
const POLL: Duration = Duration::from_millis(10);

/// A generation's result at the model's rate, before it is a take.
pub struct FinishedTake {
    /// The request as run (with its frame count).
    pub request: GenerationRequest,
    /// The loop, exactly the planned length, interleaved when stereo.
    pub pcm: Vec<f32>,
    pub channels: usize,
    pub sample_rate: u32,
    /// A continuation: the seconds of the original the engine kept as its prompt.
    pub prompt_seconds: Option<f64>,
}

pub enum IoMsg {
    /// Poll this instance's queues from now on.
    Register(Owner),
    /// Load takes whose audio is not in memory and resample every take for the
    /// host's current rate.
    Refresh(Owner),
    /// A generation finished: save it and hand it to the audio thread.
    Finished {
        owner: Owner,
        job: Arc<Job>,
        take: Box<FinishedTake>,
    },
    /// Make a take of an audio file.
    Import {
        owner: Owner,
        id: TakeId,
        from: PathBuf,
        file: PathBuf,
        tempo: HostTime,
    },
}

/// The I/O thread's loop.
pub fn run(rx: Receiver<IoMsg>) {
    let mut owners: Vec<Owner> = Vec::new();
    loop {
        match rx.recv_timeout(POLL) {
            Ok(IoMsg::Register(w)) => owners.push(w),
            Ok(IoMsg::Refresh(w)) => {
                if let Some(i) = w.upgrade() {
                    load_and_prepare(&*i);
                }
            }
            Ok(IoMsg::Finished { owner, job, take }) => save_take(&owner, &job, *take),
            Ok(IoMsg::Import {
                owner,
                id,
                from,
                file,
                tempo,
            }) => import_take(&owner, id, &from, &file, tempo),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        owners.retain(|w| w.strong_count() > 0);
        for i in owners.iter().filter_map(|w| w.upgrade()) {
            i.audio().collect_returns();
            while let Some(c) = i.audio().pop_capture() {
                save_capture(&i, *c);
            }
            if !i.is_closed() {
                i.poll_triggers();
            }
        }
    }
}

/// Resamples a take's loop for the host, as a loop, each channel on its own.
fn resample(meta: &TakeMeta, pcm: &[f32], host_rate: u32) -> Result<Arc<Clip>> {
    let channels = meta.channels.max(1);
    let sides = (0..channels)
        .map(|c| {
            let side = crate::clip::channel(pcm, channels, c);
            musicgen::wav::resample_loop(&side, meta.sample_rate, host_rate).map_err(|e| {
                PluginError::Resample {
                    rate: host_rate,
                    reason: e.to_string(),
                }
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Clip::new(
        meta.id.key(),
        crate::clip::interleave(&sides),
        channels,
        host_rate,
        meta.beats(),
        meta.tempo,
    ))
}

/// Saves a finished generation as a take, selects it and hands it to the audio
/// thread at the host's rate.
fn save_take(owner: &Owner, job: &Arc<Job>, finished: FinishedTake) {
    let Some(i) = owner.upgrade() else {
        return job_cancelled(job);
    };
    let plan = &job.plan;
    let FinishedTake {
        request,
        pcm,
        channels,
        sample_rate,
        prompt_seconds,
    } = finished;
    if let Err(e) = files::write_take(&plan.file, &pcm, channels, sample_rate) {
        return job_failed(owner, job, e);
    }
    let frames = pcm.len() / channels.max(1);
    let meta = TakeMeta {
        id: job.take_id.clone(),
        request,
        engine_version: musicgen::ENGINE_VERSION.to_string(),
        seconds: frames as f64 / sample_rate as f64,
        samples: frames,
        sample_rate,
        channels,
        tempo: plan.tempo,
        bars: plan.bars,
        time_signature: plan.time_signature,
        created: unix_now(),
        file: plan.file.clone(),
        hidden: false,
        source: match (&plan.source, prompt_seconds) {
            (TakeSource::Continuation { of, .. }, Some(kept)) => TakeSource::Continuation {
                of: of.clone(),
                prompt_seconds: kept,
            },
            (source, _) => source.clone(),
        },
        melody: plan.melody.clone(),
    };
    let pcm = Arc::new(pcm);
    i.session().write().add_take(Take {
        meta: meta.clone(),
        status: TakeStatus::Ready,
        pcm: Some(pcm.clone()),
        clip: None,
    });
    prepare_clip(&*i, &meta, &pcm);
    COUNTERS.jobs_done.fetch_add(1, Ordering::Relaxed);
    job.set_stage(JobStage::Done);
}

/// Makes a take of a finished audio recording, or the melody of a new take of
/// a finished melody recording; a cancelled one is dropped.
fn save_capture(i: &Arc<dyn TakeOwner>, c: Capture) {
    let progress = c.progress.clone();
    let result = make_capture(i, c);
    progress.set(CaptureState::Idle);
    if let Err(e) = result {
        i.session().write().set_error(Some(e));
    }
}

fn make_capture(i: &Arc<dyn TakeOwner>, c: Capture) -> Result<()> {
    if c.cancelled {
        return Ok(());
    }
    let rate = c.sample_rate;
    if c.kind == CaptureKind::Notes {
        if c.notes.is_empty() {
            return Err(PluginError::CaptureStopped(
                "no MIDI notes were played during it".into(),
            ));
        }
        let s = |f: u64| f as f64 / rate as f64;
        let notes = c
            .notes
            .iter()
            .map(|n| NoteRecord {
                start_s: s(n.start),
                end_s: s(n.end),
                pitch: n.pitch,
            })
            .collect();
        i.clone().melody_recorded(MelodySource::Notes {
            notes,
            seconds: c.seconds(),
        });
        return Ok(());
    }
    let folder = files::takes_folder(i.session().read().settings().data_folder.as_deref());
    let id = TakeId::new();
    let file = folder.join(format!("{id}.wav"));
    files::write_take(&file, &c.audio, 2, rate)?;
    let settings = i.session().read().settings().clone();
    let mut request = request_for(&settings).unwrap_or_default();
    request.prompt = String::new();
    request.frames = (c.seconds() * 50.0).ceil().max(1.0) as usize;
    let (bars, seconds) = match c.length {
        crate::session::Length::Bars(b) if c.frames == c.target => (Some(b), c.seconds()),
        _ => (None, c.seconds()),
    };
    let meta = TakeMeta {
        id,
        request,
        engine_version: musicgen::ENGINE_VERSION.to_string(),
        seconds,
        samples: c.frames as usize,
        sample_rate: rate,
        channels: 2,
        tempo: c.tempo,
        bars,
        time_signature: Some(c.time_signature),
        created: unix_now(),
        file,
        hidden: false,
        source: TakeSource::Captured,
        melody: None,
    };
    let pcm = Arc::new(c.audio);
    i.session().write().add_take(Take {
        meta: meta.clone(),
        status: TakeStatus::Ready,
        pcm: Some(pcm.clone()),
        clip: None,
    });
    prepare_clip(&**i, &meta, &pcm);
    Ok(())
}

/// Reads an audio file, stores it as a take's WAV (its own rate and channels),
/// selects it and hands it to the audio thread. A file that cannot be read is
/// the editor's error, and no take.
fn import_take(owner: &Owner, id: TakeId, from: &Path, file: &Path, host: HostTime) {
    let Some(i) = owner.upgrade() else {
        return;
    };
    let fail = |reason: String| {
        let e = PluginError::Import {
            path: from.to_path_buf(),
            reason,
        };
        i.session().write().set_error(Some(e));
    };
    let pcm = match import::read_audio_file(from) {
        Ok(p) => p,
        Err(reason) => return fail(reason),
    };
    let channels = pcm.channels.len();
    let interleaved = crate::clip::interleave(&pcm.channels);
    if let Err(e) = files::write_take(file, &interleaved, channels, pcm.sample_rate) {
        return i.session().write().set_error(Some(e));
    }
    let settings = i.session().read().settings().clone();
    let mut request = request_for(&settings).unwrap_or_default();
    request.prompt = String::new();
    request.frames = (pcm.duration_s() * 50.0).ceil().max(1.0) as usize;
    let meta = TakeMeta {
        id,
        request,
        engine_version: musicgen::ENGINE_VERSION.to_string(),
        seconds: pcm.duration_s(),
        samples: pcm.len(),
        sample_rate: pcm.sample_rate,
        channels,
        tempo: host.tempo,
        bars: None,
        time_signature: host.time_signature,
        created: unix_now(),
        file: file.to_path_buf(),
        hidden: false,
        source: TakeSource::Imported {
            path: from.to_path_buf(),
        },
        melody: None,
    };
    let pcm = Arc::new(interleaved);
    {
        let mut s = i.session().write();
        s.add_take(Take {
            meta: meta.clone(),
            status: TakeStatus::Ready,
            pcm: Some(pcm.clone()),
            clip: None,
        });
        s.set_error(None);
    }
    prepare_clip(&*i, &meta, &pcm);
}

/// Resamples one take for the host's current rate (again, should the rate change
/// meanwhile) and gives the audio thread the new clip if the take is selected.
fn prepare_clip(i: &dyn TakeOwner, meta: &TakeMeta, pcm: &[f32]) {
    loop {
        let rate = i.host_rate();
        if rate == 0 {
            return; // not active yet; `activate` refreshes
        }
        let clip = match resample(meta, pcm, rate) {
            Ok(c) => c,
            Err(e) => {
                let missing = TakeStatus::Missing(e.to_string());
                i.session().write().set_status(&meta.id, missing);
                return;
            }
        };
        if i.host_rate() != rate {
            continue;
        }
        if i.session().write().set_clip(&meta.id, clip.clone()) {
            i.audio().send(AudioCommand::Select(Some(clip)));
        }
        return;
    }
}

/// Loads takes whose audio is not in memory, then resamples every take whose
/// clip is not at the host's rate, the selected one first.
fn load_and_prepare(i: &dyn TakeOwner) {
    let to_load: Vec<TakeMeta> = i
        .session()
        .read()
        .takes()
        .iter()
        .filter(|t| t.pcm.is_none() && t.status == TakeStatus::Loading)
        .map(|t| t.meta.clone())
        .collect();
    for meta in to_load {
        let loaded = files::read_take(&meta);
        let mut session = i.session().write();
        match loaded {
            Ok(pcm) => session.set_audio(&meta.id, Arc::new(pcm)),
            Err(e) => session.set_status(&meta.id, TakeStatus::Missing(e.to_string())),
        }
    }
    let rate = i.host_rate();
    let (stale, selected) = {
        let session = i.session().read();
        let stale: Vec<(TakeMeta, Arc<Vec<f32>>)> = session
            .takes()
            .iter()
            .filter(|t| t.clip.as_ref().is_none_or(|c| c.sample_rate != rate))
            .filter_map(|t| Some((t.meta.clone(), t.pcm.clone()?)))
            .collect();
        (stale, session.selected().cloned())
    };
    // The selected take first: it is the one the producer hears.
    let (first, rest): (Vec<_>, Vec<_>) = stale
        .into_iter()
        .partition(|(m, _)| Some(&m.id) == selected.as_ref());
    for (meta, pcm) in first.into_iter().chain(rest) {
        prepare_clip(i, &meta, &pcm);
    }
    if selected.is_none() {
        i.audio().send(AudioCommand::Select(None));
    }
}

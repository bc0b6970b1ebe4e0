//! Where a take is computed: the inference worker runs jobs one at a time, in
//! the order they were asked for (across instances), on a dedicated compute
//! pool (cores - 1, lowered priority), and keeps the model loaded between them
//! in its [`ModelCache`] (one copy per model, precision and device) until it is
//! unused for a while or asked to unload. The finished loop at the model's rate
//! goes to the I/O worker (`store`) to be saved and prepared.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use musicgen::{DeviceChoice, HubOptions, ModelSource, MusicGen, Precision, Progress};

use crate::clip::{make_loop_interleaved, GrowingClip, LinearResampler, LOOP_CROSSFADE_S};
use crate::error::{PluginError, Result};
use crate::handoff::AudioCommand;
use crate::request::{Job, JobStage};
use crate::store::{FinishedTake, IoMsg};
use crate::take::TakeSource;
use crate::workers::{Owner, COUNTERS};

pub const THREAD_NAME: &str = "promptloop-inference";

pub enum InferenceMsg {
    Generate(Owner, Arc<Job>),
    Unload,
}

/// A model unused this long is unloaded (`PROMPTLOOP_UNLOAD_AFTER_S` overrides).
fn unload_after() -> Duration {
    std::env::var("PROMPTLOOP_UNLOAD_AFTER_S")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(600))
}

/// Threads of the compute pool: all cores but one, so the host keeps one.
pub fn compute_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .saturating_sub(1)
        .max(1)
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

type ModelKey = (ModelSource, Precision, DeviceChoice);

/// The loaded model and the compute pool it runs on.
#[derive(Default)]
pub struct ModelCache {
    pool: Option<Arc<rayon::ThreadPool>>,
    loaded: Option<(ModelKey, MusicGen)>,
    last_used: Option<Instant>,
}

impl ModelCache {
    /// The model for a job's request, loading it (and freeing any other) first.
    fn model_for(&mut self, job: &Job) -> Result<&mut MusicGen> {
        let r = &job.request;
        let key: ModelKey = (r.model.clone(), r.precision, r.device);
        if self.loaded.as_ref().is_some_and(|(k, _)| *k != key) {
            // One model at a time: free the old one before the new one loads.
            self.unload();
        }
        if self.loaded.is_none() {
            let pool = self.pool()?;
            job.set_stage(JobStage::Loading);
            let model = MusicGen::from_source(
                &r.model,
                &HubOptions::default(),
                r.device,
                r.precision,
                pool,
                &mut |p| {
                    if let Progress::Download(d) = p {
                        job.set_stage(JobStage::Downloading {
                            file: d.file,
                            done: d.done,
                            total: d.total,
                        });
                    }
                },
                job.cancel_flag(),
            )?;
            COUNTERS.model_loads.fetch_add(1, Ordering::Relaxed);
            COUNTERS.models_resident.fetch_add(1, Ordering::Relaxed);
            self.loaded = Some((key, model));
        }
        self.last_used = Some(Instant::now());
        Ok(&mut self.loaded.as_mut().expect("loaded above").1)
    }

    fn pool(&mut self) -> Result<Arc<rayon::ThreadPool>> {
        if let Some(p) = &self.pool {
            return Ok(p.clone());
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(compute_threads())
            .thread_name(|i| format!("promptloop-compute-{i}"))
            .start_handler(|_| lower_thread_priority())
            .build()
            .map(Arc::new)
            .map_err(|e| PluginError::ComputePool(e.to_string()))?;
        self.pool = Some(pool.clone());
        Ok(pool)
    }

    fn unload(&mut self) {
        if self.loaded.take().is_some() {
            COUNTERS.models_resident.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn unload_if_idle(&mut self, idle: Duration) {
        if self.last_used.is_some_and(|t| t.elapsed() >= idle) {
            self.unload();
        }
    }
}

/// The inference thread's loop.
pub fn run(rx: Receiver<InferenceMsg>, io: Sender<IoMsg>) {
    lower_thread_priority();
    let mut cache = ModelCache::default();
    let idle = unload_after();
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(InferenceMsg::Generate(owner, job)) => run_job(&owner, &job, &mut cache, &io),
            Ok(InferenceMsg::Unload) => cache.unload(),
            Err(RecvTimeoutError::Timeout) => cache.unload_if_idle(idle),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    cache.unload();
}

fn run_job(owner: &Owner, job: &Arc<Job>, cache: &mut ModelCache, io: &Sender<IoMsg>) {
    let alive = owner.upgrade().is_some_and(|i| !i.is_closed());
    if !alive || job.is_cancelled() {
        job_cancelled(job);
        return;
    }
    match compute_loop(owner, job, cache) {
        Ok(finished) => {
            job.set_stage(JobStage::Saving);
            let _ = io.send(IoMsg::Finished {
                owner: owner.clone(),
                job: job.clone(),
                take: Box::new(finished),
            });
        }
        Err(PluginError::Engine(e)) if matches!(*e, musicgen::Error::Cancelled) => {
            job_cancelled(job)
        }
        Err(e) => job_failed(owner, job, e),
    }
}

pub(crate) fn job_cancelled(job: &Job) {
    job.set_stage(JobStage::Cancelled);
    COUNTERS.jobs_cancelled.fetch_add(1, Ordering::Relaxed);
}

/// Marks a job failed and tells its instance's editor.
pub(crate) fn job_failed(owner: &Owner, job: &Job, error: PluginError) {
    COUNTERS.jobs_failed.fetch_add(1, Ordering::Relaxed);
    job.set_stage(JobStage::Failed(error.clone()));
    if let Some(i) = owner.upgrade() {
        i.session().write().set_error(Some(error));
    }
}

/// Generates the job's take: a seamless loop of the planned length at the
/// model's rate. A little more than the loop is generated, to crossfade the
/// seam with what followed it. A continuation is cut to the planned length
/// with no crossfade: its first sample follows the original's last.
fn compute_loop(owner: &Owner, job: &Job, cache: &mut ModelCache) -> Result<FinishedTake> {
    let model = cache.model_for(job)?;
    let rate = model.sample_rate();
    let hop = model.hop_length();
    let loop_len = (job.plan.seconds * rate as f64).round() as usize;
    let continuation = matches!(job.plan.source, TakeSource::Continuation { .. });
    let fade = if continuation {
        0
    } else {
        (LOOP_CROSSFADE_S * rate as f64).round() as usize
    };
    // Past one window (30 s) the engine goes on in windows, up to 5 minutes.
    let frames = (loop_len + fade)
        .div_ceil(model.hop_length())
        .clamp(1, musicgen::request::MAX_TOTAL_FRAMES);
    let mut request = job.request.clone();
    request.frames = frames;
    // Heard while it is made: the pieces go, resampled, into a clip the audio
    // thread plays as it grows (an audio prompt's kept part, 12 s at most, first).
    let mut hearing = match owner.upgrade() {
        Some(i) if job.plan.hear_while_made && i.host_rate() > 0 => {
            let host = i.host_rate();
            let prompt = if request.audio_prompt.is_some() {
                600
            } else {
                0
            };
            let samples = (frames + prompt) * hop;
            let capacity = (samples as u64 * host as u64).div_ceil(rate as u64) as usize + 2;
            let channels = model.channels();
            let clip = GrowingClip::new(job.take_id.key(), capacity, channels);
            i.audio().send(AudioCommand::PreviewGrowing(clip.clone()));
            Some((clip, LinearResampler::new(rate, host, channels)))
        }
        _ => None,
    };
    let real_time = model.frame_rate();
    let started = Instant::now();
    let generation = model.generate(
        &request,
        &mut |p| match p {
            Progress::EncodingText | Progress::EncodingAudio | Progress::EncodingMelody => {
                job.set_stage(JobStage::EncodingText)
            }
            Progress::Window { index, count } => job.set_window(index, count),
            Progress::Step { step, total } => {
                job.set_step(step, total);
                if let Some((clip, _)) = &hearing {
                    // Slower than real time, playing waits for a lead that
                    // lets it end as the take does (and 10 % more).
                    let speed = job
                        .progress()
                        .steps_per_s
                        .max(step as f64 / started.elapsed().as_secs_f64().max(1e-3));
                    let short = (1.0 - speed / real_time).max(0.0);
                    clip.set_start_at((clip.capacity() as f64 * (short * 1.1).min(1.0)) as usize);
                }
            }
            Progress::Audio { pcm, .. } => {
                if let Some((clip, resampler)) = &mut hearing {
                    clip.write(&resampler.process(&pcm));
                }
            }
            Progress::DecodingAudio => job.set_stage(JobStage::DecodingAudio),
            _ => {}
        },
        job.cancel_flag(),
    );
    if let Some((clip, _)) = &hearing {
        clip.finish();
    }
    cache.last_used = Some(Instant::now());
    let generation = generation?;
    let channels = generation.channels;
    let pcm = if continuation {
        let new = generation.continuation();
        new[..(loop_len * channels).min(new.len())].to_vec()
    } else {
        // A stereo model's take stays stereo, each side looped alike.
        make_loop_interleaved(&generation.audio, channels, loop_len, fade)
    };
    let prompt_seconds =
        continuation.then(|| (generation.prompt_frames * hop) as f64 / rate as f64);
    // The request as run, without the audio it was given (the take stores
    // where that came from).
    request.audio_prompt = None;
    request.melody = None;
    Ok(FinishedTake {
        request,
        pcm,
        channels,
        sample_rate: generation.sample_rate,
        prompt_seconds,
    })
}

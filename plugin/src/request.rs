//! Where a take is asked for: the settings and the host's tempo become a
//! generation request and a plan (length, tempo, file), queued as a job whose
//! progress the editor follows.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use musicgen::GenerationRequest;
use parking_lot::Mutex;

use crate::clip::bars_to_seconds;
use crate::error::{PluginError, Result};
use crate::session::{Length, Settings};
use crate::take::{random_seed, MelodySource, TakeId, TakeSource};

/// Longest prompt accepted, in characters (the engine also limits tokens).
pub const MAX_PROMPT_CHARS: usize = 2000;
/// Longest take: 5 minutes (past 30 s the engine works in windows).
pub const MAX_SECONDS: f64 = 300.0;
/// Tempo assumed when the host gives none (and the editor says so).
pub const FALLBACK_TEMPO: f64 = 120.0;

/// The host's musical time when a take is asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostTime {
    pub tempo: Option<f64>,
    pub time_signature: Option<(u32, u32)>,
}

/// What a job should make, fixed when it is requested.
#[derive(Debug, Clone, PartialEq)]
pub struct TakePlan {
    pub seconds: f64,
    pub tempo: Option<f64>,
    pub bars: Option<f64>,
    pub time_signature: Option<(u32, u32)>,
    /// The take's WAV at the model rate.
    pub file: PathBuf,
    /// What the take is made from: the settings alone, or the end of a take.
    pub source: TakeSource,
    /// The melody it follows (melody models).
    pub melody: Option<MelodySource>,
    /// Play it while it is made (the pieces as they come).
    pub hear_while_made: bool,
}

impl TakePlan {
    /// The plan for a length at the host's time: bars use its tempo and time
    /// signature (or 120 bpm in 4/4 when it gives none). Refuses lengths the
    /// engine cannot make.
    pub fn for_length(length: Length, host: HostTime, file: PathBuf) -> Result<Self> {
        let plan = match length {
            Length::Seconds(seconds) => TakePlan {
                seconds,
                tempo: host.tempo,
                bars: None,
                time_signature: host.time_signature,
                file,
                source: TakeSource::Text,
                melody: None,
                hear_while_made: false,
            },
            Length::Bars(bars) => {
                let tempo = host.tempo.unwrap_or(FALLBACK_TEMPO);
                let (n, d) = host.time_signature.unwrap_or((4, 4));
                TakePlan {
                    seconds: bars_to_seconds(bars, tempo, n, d),
                    tempo: Some(tempo),
                    bars: Some(bars),
                    time_signature: Some((n, d)),
                    file,
                    source: TakeSource::Text,
                    melody: None,
                    hear_while_made: false,
                }
            }
        };
        let seconds = plan.seconds;
        if !(seconds.is_finite() && seconds > 0.0) {
            return Err(PluginError::EmptyLength { seconds });
        }
        if seconds > MAX_SECONDS + 1e-9 {
            return Err(PluginError::TooLong {
                seconds,
                max: MAX_SECONDS,
                bars: plan.bars,
                tempo: plan.tempo,
            });
        }
        Ok(plan)
    }
}

/// The engine request for the current settings: the settings' seed, or a new
/// random one. `frames` is left for the inference worker, which knows the
/// model's frame rate.
pub fn request_for(settings: &Settings) -> Result<GenerationRequest> {
    let chars = settings.prompt.chars().count();
    if chars > MAX_PROMPT_CHARS {
        return Err(PluginError::PromptTooLong {
            chars,
            max: MAX_PROMPT_CHARS,
        });
    }
    Ok(GenerationRequest {
        prompt: settings.prompt.clone(),
        model: settings.model.clone(),
        precision: settings.precision,
        device: settings.device,
        frames: 1,
        guidance_scale: settings.guidance_scale,
        sampling: settings.sampling(),
        seed: settings.seed.unwrap_or_else(random_seed),
        extend_stride: None,
        audio_prompt: None,
        melody: None,
    })
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
    Failed(PluginError),
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
    /// Decoder steps done and due in the current window.
    pub step: usize,
    pub total: usize,
    /// The current window (from 1) and how many there are (takes over 30 s).
    pub window: usize,
    pub windows: usize,
    /// Steps done in the windows before the current one.
    pub steps_before: usize,
    pub steps_per_s: f64,
    pub eta_s: Option<f64>,
    pub queued_at: Instant,
    pub started_at: Option<Instant>,
    pub finished_at: Option<Instant>,
}

/// One generation, queued for the inference worker.
pub struct Job {
    pub take_id: TakeId,
    /// `frames` is set by the worker once the model's frame rate is known.
    pub request: GenerationRequest,
    pub plan: TakePlan,
    cancel: AtomicBool,
    progress: Mutex<JobProgress>,
}

impl Job {
    pub fn new(take_id: TakeId, request: GenerationRequest, plan: TakePlan) -> Self {
        Self {
            take_id,
            request,
            plan,
            cancel: AtomicBool::new(false),
            progress: Mutex::new(JobProgress {
                stage: JobStage::Queued,
                step: 0,
                total: 0,
                window: 1,
                windows: 1,
                steps_before: 0,
                steps_per_s: 0.0,
                eta_s: None,
                queued_at: Instant::now(),
                started_at: None,
                finished_at: None,
            }),
        }
    }

    pub fn set_stage(&self, stage: JobStage) {
        let mut p = self.progress.lock();
        if stage.finished() {
            p.finished_at = Some(Instant::now());
        } else if p.started_at.is_none() && stage != JobStage::Queued {
            p.started_at = Some(Instant::now());
        }
        p.stage = stage;
    }

    /// Window `index` (from 1) of `count` starts.
    pub fn set_window(&self, index: usize, count: usize) {
        let mut p = self.progress.lock();
        if index > p.window {
            p.steps_before += p.step;
        }
        p.window = index;
        p.windows = count.max(1);
        p.step = 0;
    }

    pub fn set_step(&self, step: usize, total: usize) {
        let mut p = self.progress.lock();
        p.stage = JobStage::Generating;
        p.step = step;
        p.total = total;
        if let Some(t0) = p.started_at {
            let s = t0.elapsed().as_secs_f64();
            let done = p.steps_before + step;
            if s > 0.0 && done > 0 {
                p.steps_per_s = done as f64 / s;
                // Later windows are about as long as this one.
                let left = (total - step) + (p.windows - p.window) * total;
                p.eta_s = Some(left as f64 / p.steps_per_s);
            }
        }
    }

    /// The whole job's share done: windows before, and this one's steps.
    pub fn fraction(p: &JobProgress) -> f32 {
        if p.total == 0 {
            return 0.0;
        }
        let window = p.step as f64 / p.total as f64;
        ((p.window.saturating_sub(1) as f64 + window) / p.windows.max(1) as f64) as f32
    }

    pub fn stage(&self) -> JobStage {
        self.progress.lock().stage.clone()
    }

    pub fn progress(&self) -> JobProgress {
        self.progress.lock().clone()
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }

    /// The flag the engine polls between steps.
    pub fn cancel_flag(&self) -> &AtomicBool {
        &self.cancel
    }

    /// Holds the progress lock (test hooks: `process()` must not wait on it).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn lock_progress(&self) -> parking_lot::MutexGuard<'_, JobProgress> {
        self.progress.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(tempo: f64, n: u32, d: u32) -> HostTime {
        HostTime {
            tempo: Some(tempo),
            time_signature: Some((n, d)),
        }
    }

    #[test]
    fn bars_use_the_host_tempo_and_refuse_past_5_minutes() {
        let p = TakePlan::for_length(Length::Bars(4.0), host(90.0, 4, 4), "a".into()).unwrap();
        assert!((p.seconds - 10.666_666).abs() < 1e-5);
        assert_eq!((p.bars, p.tempo), (Some(4.0), Some(90.0)));
        let e = TakePlan::for_length(Length::Bars(160.0), host(90.0, 4, 4), "a".into());
        let e = e.unwrap_err().to_string();
        assert!(e.contains("160 bars at 90.0 bpm is 426.67 s"), "{e}");
        let none = TakePlan::for_length(Length::Bars(2.0), HostTime::default(), "a".into());
        assert_eq!(
            none.unwrap().seconds,
            4.0,
            "120 bpm in 4/4 when the host says nothing"
        );
        let zero = TakePlan::for_length(Length::Seconds(0.0), HostTime::default(), "a".into());
        assert!(matches!(zero, Err(PluginError::EmptyLength { .. })));
    }

    #[test]
    fn five_minute_takes_are_planned_and_longer_refused() {
        let p = TakePlan::for_length(Length::Seconds(300.0), HostTime::default(), "a".into());
        assert_eq!(p.unwrap().seconds, 300.0);
        // 128 bars at 90 bpm is 341 s.
        let e = TakePlan::for_length(Length::Bars(128.0), host(90.0, 4, 4), "a".into());
        assert!(matches!(e, Err(PluginError::TooLong { .. })));
    }

    #[test]
    fn progress_spans_the_windows() {
        let job = Job::new(TakeId::new(), GenerationRequest::default(), {
            TakePlan::for_length(Length::Seconds(40.0), HostTime::default(), "a".into()).unwrap()
        });
        job.set_stage(JobStage::Loading);
        job.set_window(1, 2);
        job.set_step(1503, 1503);
        let p = job.progress();
        assert_eq!(Job::fraction(&p), 0.5);
        job.set_window(2, 2);
        job.set_step(250, 503);
        let p = job.progress();
        assert_eq!((p.window, p.windows, p.steps_before), (2, 2, 1503));
        assert!(
            (Job::fraction(&p) - 0.7485).abs() < 1e-3,
            "{}",
            Job::fraction(&p)
        );
    }

    #[test]
    fn long_prompts_are_refused_by_characters() {
        let s = Settings {
            prompt: "x".repeat(MAX_PROMPT_CHARS + 1),
            ..Settings::default()
        };
        let e = request_for(&s).unwrap_err();
        assert!(matches!(
            e,
            PluginError::PromptTooLong {
                chars: 2001,
                max: 2000
            }
        ));
        let seeded = Settings {
            seed: Some(7),
            ..Settings::default()
        };
        assert_eq!(request_for(&seeded).unwrap().seed, 7);
    }
}

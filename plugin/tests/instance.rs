//! An instance's non-real-time side without a host: generation through the
//! workers, refused requests, failed jobs, cancel, delete and purge.

use std::sync::Arc;
use std::time::Duration;

use musicgen::{DeviceChoice, ModelSource, Precision};
use promptloop::testing::{
    purge_unused_takes, Instance, JobStage, Length, MelodySource, TakeId, TakeSource, TakeStatus,
};
use test_support::{fixture_model, tiny_model, wait_for};

fn instance(data: &std::path::Path, seconds: f64) -> Arc<Instance> {
    let (i, _audio) = Instance::new();
    i.update_settings(|s| {
        s.model = ModelSource::Local { path: tiny_model() };
        s.precision = Precision::F32;
        s.device = DeviceChoice::Cpu;
        s.length = Length::Seconds(seconds);
        s.data_folder = Some(data.to_path_buf());
        s.seed = Some(1);
        s.prompt = "test".into();
    });
    i.activate(48_000);
    i
}

fn wait_finished(i: &Instance, id: &TakeId) -> JobStage {
    wait_for("the job to finish", Duration::from_secs(120), || {
        let job = i.jobs().into_iter().find(|j| &j.take_id == id).unwrap();
        Some(job.stage()).filter(JobStage::finished)
    })
}

#[test]
fn generation_makes_a_selected_take_with_its_wav() {
    let data = tempfile::tempdir().unwrap();
    let i = instance(data.path(), 1.0);
    let id = i.generate().unwrap();
    assert_eq!(wait_finished(&i, &id), JobStage::Done);
    let job = i.jobs().pop().unwrap();
    let p = job.progress();
    assert_eq!(p.step, p.total);
    assert!(p.steps_per_s > 0.0 && p.eta_s == Some(0.0), "{p:?}");
    let s = i.session();
    let take = s.take(&id).unwrap();
    assert_eq!(take.status, TakeStatus::Ready);
    assert_eq!(take.meta.samples, 32_000);
    assert_eq!(take.meta.request.seed, 1);
    assert!(take.meta.file.exists());
    assert_eq!(s.selected(), Some(&id));
    assert_eq!(s.recent_prompts(), ["test"]);
    // The clip for the host follows within moments.
    drop(s);
    let clip = wait_for("the clip", Duration::from_secs(10), || {
        i.session().take(&id).unwrap().clip.clone()
    });
    assert_eq!((clip.sample_rate, clip.len()), (48_000, 48_000));
}

#[test]
fn overlong_and_bad_requests_are_refused_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let i = instance(data.path(), 1.0);
    // 160 bars at the fallback 120 bpm in 4/4: 320 s, over the 5 minutes.
    i.update_settings(|s| s.length = Length::Bars(160.0));
    let err = i.generate().unwrap_err();
    assert!(
        err.to_string()
            .contains("160 bars at 120.0 bpm is 320.00 s"),
        "{err}"
    );
    assert_eq!(i.session().last_error(), Some(&err));
    i.update_settings(|s| {
        s.length = Length::Seconds(2.0);
        s.prompt = "x".repeat(5000);
    });
    assert!(i
        .generate()
        .unwrap_err()
        .to_string()
        .contains("5000 characters"));
    assert!(i.jobs().is_empty(), "nothing was queued");
}

#[test]
fn a_missing_model_fails_the_job_with_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let i = instance(data.path(), 1.0);
    i.update_settings(|s| {
        s.model = ModelSource::Local {
            path: data.path().join("no-such-model"),
        }
    });
    let id = i.generate().unwrap();
    match wait_finished(&i, &id) {
        JobStage::Failed(e) => assert!(e.to_string().contains("no-such-model"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(i.session().last_error().is_some());
    assert!(i.session().takes().is_empty());
}

#[test]
fn a_cancelled_job_makes_no_take() {
    let data = tempfile::tempdir().unwrap();
    let i = instance(data.path(), 30.0);
    let id = i.generate().unwrap();
    i.cancel(&id);
    assert_eq!(wait_finished(&i, &id), JobStage::Cancelled);
    assert!(i.session().takes().is_empty());
    assert_eq!(
        std::fs::read_dir(data.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[test]
fn delete_hides_and_purge_removes_only_unreferenced_takes() {
    let data = tempfile::tempdir().unwrap();
    let i = instance(data.path(), 0.5);
    let keep = i.generate().unwrap();
    assert_eq!(wait_finished(&i, &keep), JobStage::Done);
    let gone = i.generate().unwrap();
    assert_eq!(wait_finished(&i, &gone), JobStage::Done);
    let stray = data.path().join("take-0-stray.wav");
    std::fs::write(&stray, b"RIFF").unwrap();
    let notes = data.path().join("notes.txt");
    std::fs::write(&notes, b"mine").unwrap();

    i.delete(&gone);
    let s = i.session();
    assert!(s.take(&gone).unwrap().meta.hidden, "hidden, not removed");
    assert_eq!(s.selected(), None, "the deleted take was selected");
    let (keep_file, gone_file) = (
        s.take(&keep).unwrap().meta.file.clone(),
        s.take(&gone).unwrap().meta.file.clone(),
    );
    drop(s);
    assert!(gone_file.exists(), "deleting keeps the file");

    let removed = purge_unused_takes(data.path()).unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(keep_file.exists() && notes.exists());
    assert!(!gone_file.exists() && !stray.exists());
}

#[test]
fn a_stereo_model_makes_a_stereo_take() {
    let data = tempfile::tempdir().unwrap();
    let i = instance(data.path(), 1.0);
    i.update_settings(|s| {
        s.model = ModelSource::Local {
            path: fixture_model("tiny-stereo"),
        }
    });
    let id = i.generate().unwrap();
    assert_eq!(wait_finished(&i, &id), JobStage::Done);
    let take = i.session().take(&id).unwrap().clone();
    assert_eq!((take.meta.channels, take.meta.samples), (2, 32_000));
    let wav = hound::WavReader::open(&take.meta.file).unwrap();
    assert_eq!(wav.spec().channels, 2, "the take's WAV is stereo");
    let clip = wait_for("the clip", Duration::from_secs(10), || {
        i.session().take(&id).unwrap().clip.clone()
    });
    assert_eq!((clip.channels, clip.len()), (2, 48_000));
    let differ = (0..clip.len()).filter(|&f| {
        let (l, r) = clip.frame(f);
        (l - r).abs() > 1e-4
    });
    assert!(differ.count() > 1000, "the sides differ");
}

#[test]
fn a_take_past_30_s_is_made_in_windows() {
    let data = tempfile::tempdir().unwrap();
    let i = instance(data.path(), 35.0);
    let id = i.generate().unwrap();
    let mut saw_second_window = false;
    let stage = wait_for("the job to finish", Duration::from_secs(300), || {
        let job = i.jobs().into_iter().find(|j| j.take_id == id).unwrap();
        let p = job.progress();
        saw_second_window |= p.window == 2 && p.windows == 2;
        Some(p.stage).filter(JobStage::finished)
    });
    assert_eq!(stage, JobStage::Done);
    assert!(saw_second_window, "progress names the window");
    let take = i.session().take(&id).unwrap().clone();
    assert_eq!(take.meta.samples, 35 * 32_000);
    assert_eq!(take.meta.request.frames, 1751, "35 s and the seam's 10 ms");
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn wait_take(i: &Instance, id: &TakeId) -> promptloop::testing::Take {
    wait_for("the take", Duration::from_secs(60), || {
        i.session().take(id).filter(|t| t.clip.is_some()).cloned()
    })
}

#[test]
fn flac_and_24_bit_wav_files_become_takes_and_a_broken_file_none() {
    let data = tempfile::tempdir().unwrap();
    let i = instance(data.path(), 1.0);
    let flac = i.import(&fixture("stereo-220-330hz.flac")).unwrap();
    let t = wait_take(&i, &flac);
    assert_eq!(
        (t.meta.channels, t.meta.sample_rate, t.meta.samples),
        (2, 44_100, 33_075)
    );
    assert!(matches!(t.meta.source, TakeSource::Imported { .. }));
    assert!(t.meta.file.exists() && t.meta.file.starts_with(data.path()));
    let clip = t.clip.unwrap();
    assert_eq!((clip.channels, clip.sample_rate), (2, 48_000));
    assert_eq!(clip.len(), 36_000, "0.75 s at the host's rate");
    // The two sides keep their own tones: 220 Hz left, 330 Hz right.
    let pcm = t.pcm.unwrap();
    let crossings = |side: usize| {
        pcm.chunks(2)
            .map(|f| f[side])
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
            .count()
    };
    assert_eq!(
        (crossings(0), crossings(1)),
        (164, 247),
        "one rise per period"
    );

    let wav = i.import(&fixture("mono-440hz-24bit.wav")).unwrap();
    let t = wait_take(&i, &wav);
    assert_eq!(
        (t.meta.channels, t.meta.sample_rate, t.meta.samples),
        (1, 48_000, 24_000)
    );
    let peak = t.pcm.unwrap().iter().fold(0f32, |m, s| m.max(s.abs()));
    assert!((peak - 0.5).abs() < 1e-3, "24-bit samples scaled: {peak}");
    assert_eq!(i.session().selected(), Some(&wav), "an import is selected");

    // A broken file: an error in words, and no take.
    let broken = data.path().join("broken.flac");
    std::fs::write(&broken, b"fLaC but not really a flac file").unwrap();
    let before = i.session().takes().len();
    let id = i.import(&broken).unwrap();
    let err = wait_for("the import error", Duration::from_secs(10), || {
        i.session().last_error().cloned()
    });
    assert!(err.to_string().contains("broken.flac"), "{err}");
    assert!(i.session().take(&id).is_none());
    assert_eq!(i.session().takes().len(), before);
    let missing = i.import(&data.path().join("nope.wav")).unwrap_err();
    assert!(missing.to_string().contains("no such file"), "{missing}");
    // Regenerating an imported take reads its file again.
    let again = i.regenerate(&wav).unwrap();
    let t2 = wait_take(&i, &again);
    assert_eq!(t2.meta.source, t.meta.source);
    assert_eq!(t2.pcm, i.session().take(&wav).unwrap().pcm);
}

#[test]
fn continue_makes_the_engines_continuation_exactly_and_keeps_its_source() {
    let data = tempfile::tempdir().unwrap();
    let i = instance(data.path(), 1.0);
    // Top-k 1: the most likely code every step, as the CLI's --greedy.
    i.update_settings(|s| s.top_k = 1);
    let a = i.generate().unwrap();
    assert_eq!(wait_finished(&i, &a), JobStage::Done);
    i.update_settings(|s| s.length = Length::Seconds(0.5));
    let asked = std::time::Instant::now();
    let b = i.continue_take(&a).unwrap();
    // Deleting the original while it is continued changes nothing.
    i.delete(&a);
    assert_eq!(wait_finished(&i, &b), JobStage::Done);
    eprintln!(
        "a continued take in {:?} (tiny model, loaded)",
        asked.elapsed()
    );
    let take_b = i.session().take(&b).unwrap().clone();
    assert_eq!(take_b.meta.samples, 16_000, "exactly the length asked");
    match &take_b.meta.source {
        TakeSource::Continuation { of, prompt_seconds } => {
            assert_eq!(of, &a);
            assert_eq!(*prompt_seconds, 1.0, "the whole 1 s take was the prompt");
        }
        other => panic!("{other:?}"),
    }
    // The engine on the same audio, as `musicgen generate --audio-prompt A.wav
    // --continuation-only` runs it.
    let file_a = i.session().take(&a).unwrap().meta.file.clone();
    let prompt = musicgen::wav::read_wav_channels(&file_a, "audio prompt").unwrap();
    let mut engine = musicgen::MusicGen::from_source(
        &ModelSource::Local { path: tiny_model() },
        &Default::default(),
        DeviceChoice::Cpu,
        Precision::F32,
        musicgen::compute_pool(1).unwrap(),
        &mut |_| {},
        &Default::default(),
    )
    .unwrap();
    let request = musicgen::GenerationRequest {
        audio_prompt: Some(prompt),
        ..take_b.meta.request.clone()
    };
    let g = engine
        .generate(&request, &mut |_| {}, &Default::default())
        .unwrap();
    assert_eq!(
        &g.continuation()[..16_000],
        &take_b.pcm.as_ref().unwrap()[..]
    );

    // Purging keeps what a visible take was made from, deleted or not.
    let removed = purge_unused_takes(data.path()).unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    assert!(file_a.exists());
    // Regenerating the continuation gives the same audio again.
    let again = i.regenerate(&b).unwrap();
    assert_eq!(wait_finished(&i, &again), JobStage::Done);
    assert_eq!(
        i.session().take(&again).unwrap().pcm,
        take_b.pcm,
        "same prompt audio, seed and settings"
    );
}

#[test]
fn a_take_can_be_the_melody_of_a_melody_models_take() {
    let data = tempfile::tempdir().unwrap();
    let i = instance(data.path(), 1.0);
    let a = i.generate().unwrap();
    assert_eq!(wait_finished(&i, &a), JobStage::Done);
    i.update_settings(|s| s.melody = Some(MelodySource::Take { of: a.clone() }));
    // tiny-a takes no melody: refused before anything is queued.
    let err = i.generate().unwrap_err();
    assert!(err.to_string().contains("takes no melody"), "{err}");
    i.update_settings(|s| {
        s.model = ModelSource::Local {
            path: fixture_model("tiny-melody"),
        }
    });
    let b = i.generate().unwrap();
    assert_eq!(wait_finished(&i, &b), JobStage::Done);
    let take_b = i.session().take(&b).unwrap().clone();
    assert_eq!(
        take_b.meta.melody,
        Some(MelodySource::Take { of: a.clone() })
    );
    assert_eq!(take_b.meta.samples, 32_000);
    // Without the melody the same seed makes another take.
    i.update_settings(|s| s.melody = None);
    let c = i.generate().unwrap();
    assert_eq!(wait_finished(&i, &c), JobStage::Done);
    assert_ne!(i.session().take(&c).unwrap().pcm, take_b.pcm);
    // Regenerate takes the melody again.
    let again = i.regenerate(&b).unwrap();
    assert_eq!(wait_finished(&i, &again), JobStage::Done);
    assert_eq!(i.session().take(&again).unwrap().pcm, take_b.pcm);
}

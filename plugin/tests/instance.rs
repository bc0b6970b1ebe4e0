//! An instance's non-real-time side without a host: generation through the
//! workers, refused requests, failed jobs, cancel, delete and purge.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use musicgen::{DeviceChoice, ModelSource, Precision};
use promptloop::instance::{purge_unused_takes, Instance, JobStage};
use promptloop::session::{Length, TakeStatus};

fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny-a")
}

fn instance(data: &std::path::Path, seconds: f64) -> Arc<Instance> {
    let (i, _commands, _returns) = Instance::new();
    {
        let mut s = i.session.write();
        s.settings.model = ModelSource::Local { path: tiny_model() };
        s.settings.precision = Precision::F32;
        s.settings.device = DeviceChoice::Cpu;
        s.settings.length = Length::Seconds(seconds);
        s.settings.data_folder = Some(data.to_path_buf());
        s.settings.seed = Some(1);
        s.settings.prompt = "test".into();
    }
    i.activate(48_000);
    i
}

fn wait_finished(i: &Instance, id: &str) -> JobStage {
    let start = Instant::now();
    loop {
        let job = i.jobs().into_iter().find(|j| j.take_id == id).unwrap();
        let stage = job.stage();
        if stage.finished() {
            return stage;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "stuck in {stage:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn generation_makes_a_selected_take_with_its_wav() {
    let data = tempfile::tempdir().unwrap();
    let i = instance(data.path(), 1.0);
    let id = i.generate().unwrap();
    assert_eq!(wait_finished(&i, &id), JobStage::Done);
    let job = i.jobs().pop().unwrap();
    let p = job.progress.lock().clone();
    assert_eq!(p.step, p.total);
    assert!(p.steps_per_s > 0.0 && p.eta_s == Some(0.0), "{p:?}");
    let s = i.session.read();
    let take = s.take(&id).unwrap();
    assert_eq!(take.status, TakeStatus::Ready);
    assert_eq!(take.meta.samples, 32_000);
    assert_eq!(take.meta.request.seed, 1);
    assert!(take.meta.file.exists());
    assert_eq!(s.selected.as_deref(), Some(id.as_str()));
    assert_eq!(s.recent_prompts, ["test"]);
    // The clip for the host follows within moments.
    drop(s);
    let start = Instant::now();
    while i.session.read().take(&id).unwrap().clip.is_none() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    let clip = i.session.read().take(&id).unwrap().clip.clone().unwrap();
    assert_eq!((clip.sample_rate, clip.len()), (48_000, 48_000));
}

#[test]
fn overlong_and_bad_requests_are_refused_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let i = instance(data.path(), 1.0);
    // 16 bars at the fallback 120 bpm in 4/4: 32 s.
    i.session.write().settings.length = Length::Bars(16.0);
    let err = i.generate().unwrap_err();
    assert!(err.contains("16 bars at 120.0 bpm is 32.00 s"), "{err}");
    assert_eq!(i.session.read().last_error.as_deref(), Some(err.as_str()));
    i.session.write().settings.length = Length::Seconds(2.0);
    i.session.write().settings.prompt = "x".repeat(5000);
    assert!(i.generate().unwrap_err().contains("5000 characters"));
    assert!(i.jobs().is_empty(), "nothing was queued");
}

#[test]
fn a_missing_model_fails_the_job_with_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let i = instance(data.path(), 1.0);
    i.session.write().settings.model = ModelSource::Local {
        path: data.path().join("no-such-model"),
    };
    let id = i.generate().unwrap();
    match wait_finished(&i, &id) {
        JobStage::Failed(msg) => assert!(msg.contains("no-such-model"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(i.session.read().last_error.is_some());
    assert!(i.session.read().takes.is_empty());
}

#[test]
fn a_cancelled_job_makes_no_take() {
    let data = tempfile::tempdir().unwrap();
    let i = instance(data.path(), 30.0);
    let id = i.generate().unwrap();
    i.cancel(&id);
    assert_eq!(wait_finished(&i, &id), JobStage::Cancelled);
    assert!(i.session.read().takes.is_empty());
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
    let s = i.session.read();
    assert!(s.take(&gone).unwrap().meta.hidden, "hidden, not removed");
    assert_eq!(s.selected, None, "the deleted take was selected");
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

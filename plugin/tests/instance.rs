//! An instance's non-real-time side without a host: generation through the
//! workers, refused requests, failed jobs, cancel, delete and purge.

use std::sync::Arc;
use std::time::Duration;

use musicgen::{DeviceChoice, ModelSource, Precision};
use promptloop::testing::{purge_unused_takes, Instance, JobStage, Length, TakeId, TakeStatus};
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

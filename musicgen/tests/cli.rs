//! The `musicgen` command line on the committed fixture, as the README shows it.

mod common;

use std::path::Path;
use std::process::Command;

use common::{model_dir, Reference};

fn musicgen() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_musicgen"));
    // Never touch the network or the user's cache from a test.
    c.env("HF_HUB_OFFLINE", "1");
    c
}

/// `musicgen generate` on tiny-a for half a second, writing `wav` and `codes`.
fn generate_half_second(wav: &Path, codes: &Path, extra: &[&str]) -> std::process::Output {
    musicgen()
        .args(["generate", "--prompt", "dusty boom-bap drums, 90 bpm"])
        .args(["--duration", "0.5", "--seed", "7"])
        .arg("--model")
        .arg(model_dir("tiny-a"))
        .arg("--out")
        .arg(wav)
        .arg("--codes")
        .arg(codes)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn generates_a_wav_of_exactly_frames_times_640_samples_and_the_codes() {
    let out = tempfile::tempdir().unwrap();
    let wav = out.path().join("loop.wav");
    let codes = out.path().join("codes.json");
    let status = generate_half_second(&wav, &codes, &[]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let (audio, rate) = musicgen::wav::read_wav(&wav).unwrap();
    assert_eq!(rate, 32_000);
    assert_eq!(audio.len(), 25 * 640);
    assert!(audio.iter().all(|s| s.is_finite()));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&codes).unwrap()).unwrap();
    let rows = json["codes"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r.as_array().unwrap().len() == 25));
    assert!(rows
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .all(|c| c.as_u64().unwrap() < 64));

    // Same seed, same codes; the resampled WAV has the host's length.
    let wav2 = out.path().join("loop48.wav");
    let codes2 = out.path().join("codes2.json");
    let status = generate_half_second(&wav2, &codes2, &["--sample-rate", "48000"]);
    assert!(status.status.success());
    assert_eq!(
        std::fs::read(&codes).unwrap(),
        std::fs::read(&codes2).unwrap()
    );
    let (audio48, rate48) = musicgen::wav::read_wav(&wav2).unwrap();
    assert_eq!((audio48.len(), rate48), (24_000, 48_000));
}

#[test]
fn bad_arguments_fail_with_a_message_and_write_nothing() {
    let out = tempfile::tempdir().unwrap();
    let wav = out.path().join("x.wav");
    let cases: &[(&[&str], &str)] = &[
        (&["--duration", "0"], "more than 0"),
        (&["--duration", "301"], "limit of 300"),
        (&["--extend-stride", "0.5"], "between 1 and 29"),
        (
            &["--audio-prompt", "/nonexistent-prompt.wav"],
            "/nonexistent-prompt.wav",
        ),
        (&["--guidance-scale", "0.5"], "at least 1"),
        (&["--top-k", "0"], "top-k"),
        (&["--top-p", "1.5"], "top-p"),
        (&["--temperature", "0"], "greedy"),
        (&["--sample-rate", "0"], "sample-rate"),
    ];
    for (extra, needle) in cases {
        let o = musicgen()
            .args(["generate", "--prompt", "drums"])
            .arg("--model")
            .arg(model_dir("tiny-a"))
            .arg("--out")
            .arg(&wav)
            .args(*extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!wav.exists(), "{extra:?} left a file behind");
    }
    // An unwritable output path and a missing model folder.
    let o = musicgen()
        .args([
            "generate",
            "--prompt",
            "drums",
            "--out",
            "/nonexistent-dir/x.wav",
        ])
        .arg("--model")
        .arg(model_dir("tiny-a"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot write to /nonexistent-dir/x.wav"));
    let o = musicgen()
        .args([
            "generate",
            "--prompt",
            "drums",
            "--model",
            "/nonexistent-model",
        ])
        .arg("--out")
        .arg(&wav)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("model file not found: /nonexistent-model"));
    // --greedy with sampling flags is a usage error.
    let o = musicgen()
        .args([
            "generate", "--prompt", "d", "--greedy", "--top-k", "5", "--out",
        ])
        .arg(&wav)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    // --continuation-only needs an audio prompt.
    let o = musicgen()
        .args(["generate", "--prompt", "d", "--continuation-only", "--out"])
        .arg(&wav)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--audio-prompt"));
    assert!(!wav.exists());
}

#[test]
fn help_explains_every_flag() {
    let o = musicgen().args(["generate", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--prompt",
        "--model",
        "--duration",
        "--guidance-scale",
        "--top-k",
        "--top-p",
        "--temperature",
        "--seed",
        "--greedy",
        "--sample-rate",
        "--codes",
        "--out",
        "--device",
        "--audio-prompt",
        "--continuation-only",
        "--extend-stride",
        "--melody",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(help.contains("default"));
}

#[test]
fn melody_follows_a_wav_and_matches_the_reference() {
    let r = Reference::load("tiny-melody");
    let out = tempfile::tempdir().unwrap();
    let melody = out.path().join("melody.wav");
    musicgen::wav::write_wav(&melody, &r.floats("chroma.sine.audio"), 32_000).unwrap();
    let wav = out.path().join("take.wav");
    let codes = out.path().join("codes.json");
    let run = |model: &str, melody: &Path| {
        musicgen()
            .args(["generate", "--prompt", &r.prompt(), "--duration", "0.4"])
            .args(["--greedy", "--guidance-scale", "3"])
            .arg("--model")
            .arg(model_dir(model))
            .arg("--melody")
            .arg(melody)
            .arg("--out")
            .arg(&wav)
            .arg("--codes")
            .arg(&codes)
            .output()
            .unwrap()
    };
    let o = run("tiny-melody", &melody);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&codes).unwrap()).unwrap();
    let got: Vec<Vec<u32>> = serde_json::from_value(json["codes"].clone()).unwrap();
    assert_eq!(got, r.codes("sine.g3.codes"));
    let (audio, _) = musicgen::wav::read_wav(&wav).unwrap();
    assert_eq!(audio.len(), 20 * 640);
    std::fs::remove_file(&wav).unwrap();
    std::fs::remove_file(&codes).unwrap();

    // A text-only checkpoint names the ones that take a melody; nothing is written.
    let o = run("tiny-a", &melody);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("facebook/musicgen-melody"), "{err}");
    assert!(!wav.exists() && !codes.exists());
    // A melody WAV with no samples, and one that is not there.
    let empty = out.path().join("empty.wav");
    musicgen::wav::write_wav(&empty, &[], 32_000).unwrap();
    for (file, needle) in [
        (empty.as_path(), "melody has no samples"),
        (
            Path::new("/nonexistent-melody.wav"),
            "/nonexistent-melody.wav",
        ),
    ] {
        let o = run("tiny-melody", file);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(!wav.exists());
    }
}

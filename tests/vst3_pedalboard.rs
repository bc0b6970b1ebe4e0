//! The `.vst3` in a real third-party host that runs headless here: pedalboard
//! (Spotify's JUCE-based Python host). It loads the bundle, lists the
//! parameters, renders, and a generation asked for through the state and the
//! MIDI trigger produces a take that plays at the host rate. The check itself
//! is `tests/vst3/pedalboard_check.py`.

use std::path::PathBuf;
use std::process::Command;

use host_tests::{bundle, tiny_model, workspace};

/// `$PROMPTLOOP_PYTHON`, else the virtual environment `.ci/run` makes.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PROMPTLOOP_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workspace().join("target/pyvenv/bin/python");
    assert!(
        venv.exists(),
        "no Python with pedalboard: run .ci/run once, or\n  python3 -m venv target/pyvenv && \
         target/pyvenv/bin/pip install -r tests/vst3/requirements.txt"
    );
    venv
}

#[test]
fn pedalboard_loads_renders_and_generates() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(python())
        .arg(workspace().join("tests/vst3/pedalboard_check.py"))
        .arg(bundle("Promptloop.vst3"))
        .arg(tiny_model())
        .arg(data.path())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "pedalboard check failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("one JSON line");
    assert_eq!(result["sounding_samples"], 48_000);
    assert_eq!(result["take_samples_32k"], 32_000);
    // The take's WAV is where the state said.
    let wavs = std::fs::read_dir(data.path()).unwrap().count();
    assert_eq!(wavs, 1);
}

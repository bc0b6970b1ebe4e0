//! The standalone build (nice-plug's standalone wrapper, dummy audio backend)
//! starts, and exits with status 0 soon after SIGINT.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use host_tests::workspace;

#[test]
fn standalone_exits_cleanly_on_sigint() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let exe = target.join("debug").join("promptloop-standalone");
    assert!(
        exe.exists(),
        "{} is missing: run `cargo xtask test`, which builds it",
        exe.display()
    );
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(&exe)
        .args(["--backend", "dummy", "--sample-rate", "48000"])
        .env("PROMPTLOOP_DATA_DIR", data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the standalone starts");
    // Let it start its audio thread and the plugin's workers.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let threads = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(threads >= 3, "main, audio and worker threads ({threads})");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            panic!("still running 5 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("exited {:?} after SIGINT ({threads} threads)", t0.elapsed());
    assert!(status.success(), "exit status {status}");
}

//! The standalone build (nice-plug's standalone wrapper, dummy audio backend,
//! with the editor) starts under Xvfb with Mesa, opens its window, and exits
//! with status 0 soon after SIGINT.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use host_tests::{workspace, Xvfb};

fn window_named(display: &str, name: &str) -> bool {
    Command::new("xdotool")
        .args(["search", "--name", name])
        .env("DISPLAY", display)
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false)
}

#[test]
fn standalone_opens_its_editor_and_exits_cleanly_on_sigint() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let exe = target.join("debug").join("promptloop-standalone");
    assert!(
        exe.exists(),
        "{} is missing: run `cargo xtask test`, which builds it",
        exe.display()
    );
    let x = Xvfb::start("1280x1024x24");
    let data = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(&exe)
            .args(["--backend", "dummy", "--sample-rate", "48000"])
            .env("DISPLAY", &x.display)
            .env("LIBGL_ALWAYS_SOFTWARE", "1")
            .env("PROMPTLOOP_DATA_DIR", data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the standalone starts"),
    );
    let t0 = Instant::now();
    while !window_named(&x.display, "Promptloop") {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the standalone exited ({status}) before its window opened:\n{err}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no Promptloop window"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let it run a moment: audio thread, workers, editor frames.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let threads = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .map(|d| d.count())
        .unwrap_or(0);
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
    eprintln!(
        "exited {:?} after SIGINT ({threads} threads were running)",
        t0.elapsed()
    );
    assert!(status.success(), "exit status {status}");
}

/// The app under test, killed if the test fails before it exits, so no
/// standalone outlives a failed run.
struct KillOnDrop(Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

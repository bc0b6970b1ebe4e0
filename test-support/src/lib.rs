//! What the workspace's tests share: where the fixtures are, a private X
//! server (Xvfb) on a display it picks itself, and waiting for a condition with
//! a deadline that fails the test with what it was waiting for.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support sits in the workspace")
        .to_path_buf()
}

/// A checkpoint from the engine's fixtures (`tests/fixtures/models/<name>`).
pub fn fixture_model(name: &str) -> PathBuf {
    workspace().join("tests/fixtures/models").join(name)
}

/// The tiny checkpoint most tests generate with (2 layers, 64 wide).
pub fn tiny_model() -> PathBuf {
    fixture_model("tiny-a")
}

/// Polls `done` every 10 ms until it gives a value; panics with `what` after
/// `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut done: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = done() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "waited {timeout:?} for {what}, in vain"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A private X server for a test, killed on drop.
pub struct Xvfb {
    child: Child,
    /// The display, as `$DISPLAY` takes it (`:N`).
    pub display: String,
}

impl Xvfb {
    /// An X server of its own with one screen of `size` (`WxHxDEPTH`), on a
    /// display number Xvfb picks itself (`-displayfd`), so tests never race
    /// for one.
    pub fn start(size: &str) -> Self {
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", size, "-nolisten", "tcp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb runs (apt-get install xvfb; .ci/run installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("Xvfb prints its display");
        let number: u32 = match line.trim().parse() {
            Ok(n) => n,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("Xvfb did not start (it printed {line:?})");
            }
        };
        Self {
            child,
            display: format!(":{number}"),
        }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_are_where_the_tests_look() {
        assert!(tiny_model().join("config.json").exists());
    }

    #[test]
    fn waits_end_with_the_value_or_fail_with_what() {
        let mut n = 0;
        assert_eq!(
            wait_for("n to reach 3", Duration::from_secs(5), || {
                n += 1;
                (n >= 3).then_some(n)
            }),
            3
        );
        let failed = std::panic::catch_unwind(|| {
            wait_for("never", Duration::from_millis(30), || None::<()>)
        });
        let message = failed.unwrap_err();
        let text = message.downcast_ref::<String>().unwrap();
        assert!(text.contains("for never"), "{text}");
    }
}

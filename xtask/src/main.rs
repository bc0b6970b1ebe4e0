//! `cargo xtask bundle promptloop [--release]`: nice-plug's bundler.
//! `cargo xtask test [cargo test args]`: builds the bundles and the standalone
//! app in debug mode (with `assert_process_allocs`), then runs every test; the
//! host-level tests in `tests/` load those bundles. The bundles and the tests
//! are built with the plugin's `test-hooks` feature: the C hooks the host tests
//! call, and the inner parts `plugin/tests` drives. Release bundles have none.

use std::process::Command;

use anyhow::{bail, Result};

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo).args(args).status()?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("test") => {
            let rest: Vec<String> = args.collect();
            // The standalone first: the bundle step below then leaves the
            // plugin library built without the standalone feature.
            cargo(&[
                "build",
                "--locked",
                "-p",
                "promptloop",
                "--features",
                "standalone",
                "--bin",
                "promptloop-standalone",
            ])?;
            nice_plug_xtask::main_with_args(
                "cargo xtask",
                ["bundle", "promptloop", "--features", "test-hooks"]
                    .into_iter()
                    .map(String::from),
            )?;
            let mut test = vec![
                "test",
                "--workspace",
                "--locked",
                "--features",
                "promptloop/test-hooks,musicgen/bench",
            ];
            test.extend(rest.iter().map(String::as_str));
            cargo(&test)
        }
        _ => nice_plug_xtask::main(),
    }
}

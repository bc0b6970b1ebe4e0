//! `musicgen`: generate music from a text prompt with MusicGen, on the command line.
//! One file per subcommand: `generate.rs`, `bench.rs`; progress and checks
//! they share are here.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use musicgen::Progress;

#[cfg(feature = "bench")]
mod bench;
mod generate;

#[cfg(feature = "bench")]
use bench::BenchArgs;
use generate::GenerateArgs;

#[derive(Parser)]
#[command(
    name = "musicgen",
    version,
    about = "Generate music from a text prompt with Meta's MusicGen, locally",
    long_about = "Generate music from a text prompt with Meta's MusicGen, locally.\n\n\
        Models come from the Hugging Face hub (downloaded once into the standard cache, \
        ~/.cache/huggingface/hub or $HF_HOME/hub; HF_ENDPOINT and HF_HUB_OFFLINE are honoured) \
        or from a local folder in the transformers layout.\n\n\
        Meta's MusicGen weights are licensed CC-BY-NC 4.0: non-commercial use only."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate audio from a prompt and write it as a WAV file.
    Generate(GenerateArgs),
    /// Time a generation stage by stage and compare it with this machine's memory
    /// bandwidth floor; optionally measure a precision's logits against f32.
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
}

/// Frames per second of every published MusicGen (EnCodec 32 kHz, hop 640).
pub(crate) const MUSICGEN_FRAME_RATE: f64 = 50.0;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        #[cfg(feature = "bench")]
        Command::Bench(args) => bench::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Reports progress: a bar on a terminal, plain lines otherwise.
pub(crate) struct Reporter {
    bar: Option<ProgressBar>,
    last_line: Instant,
    stage: String,
    /// "window i/n" while a take over 30 s is made.
    window: Option<String>,
}

impl Reporter {
    pub(crate) fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            last_line: Instant::now(),
            stage: String::new(),
            window: None,
        }
    }

    pub(crate) fn stage(&mut self, name: &str) {
        if self.stage != name {
            self.stage = name.to_string();
            match &self.bar {
                Some(bar) => bar.set_message(name.to_string()),
                None => eprintln!("{name}"),
            }
        }
    }

    pub(crate) fn report(&mut self, p: Progress) {
        match p {
            Progress::Download(d) => {
                self.stage(&format!("downloading {}", d.file));
                self.counts(d.done, d.total);
            }
            Progress::Loading => self.stage("loading"),
            Progress::EncodingText => self.stage("text"),
            Progress::EncodingAudio => self.stage("audio prompt"),
            Progress::EncodingMelody => self.stage("melody"),
            Progress::Window { index, count } => {
                self.window = (count > 1).then(|| format!("window {index}/{count}"));
            }
            Progress::Step { step, total } => {
                match &self.window {
                    Some(w) => self.stage(&format!("generating, {w}")),
                    None => self.stage("generating"),
                }
                self.counts(step as u64, total as u64);
            }
            Progress::DecodingAudio => self.stage("decoding audio"),
            Progress::Audio { .. } => {}
        }
    }

    fn counts(&mut self, done: u64, total: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            None => {
                if done == total || self.last_line.elapsed().as_secs_f64() > 2.0 {
                    eprintln!("{}: {done}/{total}", self.stage);
                    self.last_line = Instant::now();
                }
            }
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Fails early, before minutes of generation, when the output cannot be written.
pub(crate) fn check_writable(path: &Path) -> Result<()> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot write to {}", path.display()))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

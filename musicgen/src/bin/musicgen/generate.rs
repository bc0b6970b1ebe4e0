//! `musicgen generate`: a prompt to a WAV file.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use musicgen::{
    compute_pool, frames_for_duration, hub::HubOptions, wav, DeviceChoice, GenerationRequest,
    ModelSource, MusicGen, Precision, Sampling,
};

use crate::{check_writable, Reporter, MUSICGEN_FRAME_RATE};

#[derive(Args)]
pub(crate) struct GenerateArgs {
    /// The text prompt, e.g. "dusty boom-bap drums, 90 bpm". An empty prompt gives
    /// MusicGen's unconditional generation.
    #[arg(long)]
    prompt: String,

    /// A hub model id (facebook/musicgen-small, -medium, -large) or a local folder
    /// holding config.json, model.safetensors (or a sharded index) and tokenizer.json.
    #[arg(long, default_value = musicgen::request::DEFAULT_MODEL)]
    model: String,

    /// The hub revision (branch, tag or commit) when --model is a hub id.
    #[arg(long, default_value = "main")]
    revision: String,

    /// Length of the audio in seconds, more than 0 and at most 30; rounded to whole
    /// frames (50 per second).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// Classifier-free guidance scale, at least 1 (1 turns guidance off).
    /// [default: the model's generation_config.json, else 3.0]
    #[arg(long)]
    guidance_scale: Option<f64>,

    /// Sample only among the K most likely codes (at least 1).
    /// [default: the model's generation_config.json, else 250]
    #[arg(long)]
    top_k: Option<usize>,

    /// Sample only from the smallest set of codes whose probability reaches P,
    /// between 0 and 1. [default: off]
    #[arg(long)]
    top_p: Option<f64>,

    /// Sampling temperature, more than 0 (use --greedy for the most likely codes).
    /// [default: 1.0]
    #[arg(long)]
    temperature: Option<f64>,

    /// Seed of the sampler: the same seed and settings give the same audio.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Take the most likely code at every step instead of sampling.
    #[arg(long, conflicts_with_all = ["top_k", "top_p", "temperature"])]
    greedy: bool,

    /// Write the WAV at this rate (resampled with rubato) instead of the model's 32 kHz.
    #[arg(long)]
    sample_rate: Option<u32>,

    /// Also write the generated codes as JSON: {"codes": [[...], ...]}, one row per
    /// codebook, one code per frame.
    #[arg(long, value_name = "FILE.json")]
    codes: Option<PathBuf>,

    /// Where to run: auto (a GPU when built in and present), cpu, cuda, metal.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,

    /// Weight precision.
    #[arg(long, default_value = "f32")]
    precision: Precision,

    /// Compute threads. [default: the number of cores]
    #[arg(long)]
    threads: Option<usize>,

    /// The output WAV file (32-bit float, mono).
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run(args: GenerateArgs) -> Result<()> {
    check_writable(&args.out)?;
    if let Some(codes) = &args.codes {
        check_writable(codes)?;
    }
    if args.sample_rate == Some(0) {
        bail!("--sample-rate must be more than 0 Hz");
    }
    let source = match ModelSource::parse(&args.model) {
        ModelSource::Hub { id, .. } => ModelSource::Hub {
            id,
            revision: args.revision.clone(),
        },
        local => local,
    };
    // Check the flags before a download or load that may take minutes.
    let provisional = GenerationRequest {
        frames: frames_for_duration(args.duration, MUSICGEN_FRAME_RATE)?,
        guidance_scale: args.guidance_scale.unwrap_or(1.0),
        sampling: if args.greedy {
            Sampling::Greedy
        } else {
            Sampling::Sample {
                temperature: args.temperature.unwrap_or(1.0),
                top_k: args.top_k,
                top_p: args.top_p,
            }
        },
        ..Default::default()
    };
    provisional.validate()?;
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let cancel = AtomicBool::new(false);
    let mut reporter = Reporter::new();
    let t0 = Instant::now();
    let mut model = MusicGen::from_source(
        &source,
        &HubOptions::default(),
        args.device,
        args.precision,
        compute_pool(threads)?,
        &mut |p| reporter.report(p),
        &cancel,
    )?;
    let load_time = t0.elapsed();

    let defaults = model.defaults();
    let sampling = if args.greedy {
        Sampling::Greedy
    } else {
        let (t, k, p) = match defaults.sampling {
            Sampling::Sample {
                temperature,
                top_k,
                top_p,
            } => (temperature, top_k, top_p),
            Sampling::Greedy => (1.0, Some(musicgen::request::DEFAULT_TOP_K), None),
        };
        Sampling::Sample {
            temperature: args.temperature.unwrap_or(t),
            top_k: args.top_k.map(Some).unwrap_or(k),
            top_p: args.top_p.or(p),
        }
    };
    let request = GenerationRequest {
        prompt: args.prompt.clone(),
        model: source,
        precision: args.precision,
        device: args.device,
        frames: frames_for_duration(args.duration, model.frame_rate())?,
        guidance_scale: args.guidance_scale.unwrap_or(defaults.guidance_scale),
        sampling,
        seed: args.seed,
    };
    let take = model.generate(&request, &mut |p| reporter.report(p), &cancel)?;
    reporter.finish();

    let (audio, rate) = match args.sample_rate {
        Some(rate) if rate != take.sample_rate => {
            (wav::resample(&take.audio, take.sample_rate, rate)?, rate)
        }
        _ => (take.audio.clone(), take.sample_rate),
    };
    wav::write_wav(&args.out, &audio, rate)?;
    if let Some(path) = &args.codes {
        let json = serde_json::json!({ "codes": take.codes });
        std::fs::write(path, serde_json::to_string(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let steps = take.timings.steps.len().max(1);
    let decode: f64 = take.timings.steps.iter().map(|d| d.as_secs_f64()).sum();
    eprintln!(
        "wrote {} ({} samples at {} Hz, {:.2} s); load {:.2} s, text {:.3} s, {} steps at {:.1} ms/step, audio decode {:.2} s",
        args.out.display(),
        audio.len(),
        rate,
        audio.len() as f64 / rate as f64,
        load_time.as_secs_f64(),
        take.timings.text.as_secs_f64(),
        steps,
        1e3 * decode / steps as f64,
        take.timings.audio.as_secs_f64(),
    );
    Ok(())
}

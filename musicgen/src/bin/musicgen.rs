//! `musicgen`: generate music from a text prompt with MusicGen, on the command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use musicgen::{
    compute_pool, frames_for_duration, hub::HubOptions, wav, DeviceChoice, GenerationRequest,
    ModelSource, MusicGen, Precision, Progress, Sampling,
};

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
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// A hub model id or a local folder (see `generate --help`).
    #[arg(long, default_value = musicgen::request::DEFAULT_MODEL)]
    model: String,

    /// Seconds of audio to generate.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// Decoder precision: f32, f16, bf16, q8_0, q4_0, q4k.
    #[arg(long, default_value = "f32")]
    precision: Precision,

    /// Classifier-free guidance scale (guidance > 1 runs a batch of 2).
    #[arg(long, default_value_t = 3.0)]
    guidance_scale: f64,

    /// Top-k of the sampler.
    #[arg(long, default_value_t = 250)]
    top_k: usize,

    #[arg(long, default_value = "dusty boom-bap drums, 90 bpm")]
    prompt: String,

    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Compute threads. [default: the number of cores]
    #[arg(long)]
    threads: Option<usize>,

    #[arg(long, default_value = "auto")]
    device: DeviceChoice,

    /// Also load the f32 model and report, per codebook, the relative RMS error,
    /// KL divergence and top-1 agreement of this precision's logits when fed the
    /// f32 run's codes (teacher forcing).
    #[arg(long)]
    quality: bool,

    /// Undo optimisations to measure them, comma-separated: kv-concat (grow the KV
    /// cache by concatenation), cross-kv-every-step (recompute the prompt's keys and
    /// values at every step).
    #[arg(long, value_delimiter = ',')]
    ablate: Vec<String>,

    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
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

/// Frames per second of every published MusicGen (EnCodec 32 kHz, hop 640).
const MUSICGEN_FRAME_RATE: f64 = 50.0;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
        Command::Bench(args) => bench(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Reports progress: a bar on a terminal, plain lines otherwise.
struct Reporter {
    bar: Option<ProgressBar>,
    last_line: Instant,
    stage: String,
}

impl Reporter {
    fn new() -> Self {
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
        }
    }

    fn stage(&mut self, name: &str) {
        if self.stage != name {
            self.stage = name.to_string();
            match &self.bar {
                Some(bar) => bar.set_message(name.to_string()),
                None => eprintln!("{name}"),
            }
        }
    }

    fn report(&mut self, p: Progress) {
        match p {
            Progress::Download(d) => {
                self.stage(&format!("downloading {}", d.file));
                self.counts(d.done, d.total);
            }
            Progress::Loading => self.stage("loading"),
            Progress::EncodingText => self.stage("text"),
            Progress::Step { step, total } => {
                self.stage("generating");
                self.counts(step as u64, total as u64);
            }
            Progress::DecodingAudio => self.stage("decoding audio"),
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

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Fails early, before minutes of generation, when the output cannot be written.
fn check_writable(path: &Path) -> Result<()> {
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

fn generate(args: GenerateArgs) -> Result<()> {
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

fn bench(args: BenchArgs) -> Result<()> {
    use musicgen::bench::{current_rss, median_ms, peak_rss, read_bandwidth, reset_peak_rss};
    use musicgen::CodeSource;

    let source = ModelSource::parse(&args.model);
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let pool = compute_pool(threads)?;
    let frames = frames_for_duration(args.duration, MUSICGEN_FRAME_RATE)?;
    let cancel = AtomicBool::new(false);
    let hub = HubOptions::default();
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);

    // Measured first, in the same run, so the floor is this machine's right now.
    let bandwidth = read_bandwidth(&pool, 1 << 30);

    reset_peak_rss();
    let t0 = Instant::now();
    let mut model = MusicGen::from_source(
        &source,
        &hub,
        args.device,
        args.precision,
        pool.clone(),
        &mut |_| {},
        &cancel,
    )?;
    let load_s = t0.elapsed().as_secs_f64();
    let load_peak = peak_rss().unwrap_or(0);
    let mut ablation = musicgen::decoder::Ablation::default();
    for a in &args.ablate {
        match a.as_str() {
            "kv-concat" => ablation.kv_concat = true,
            "cross-kv-every-step" => ablation.cross_kv_every_step = true,
            other => bail!("unknown --ablate \"{other}\" (kv-concat, cross-kv-every-step)"),
        }
    }
    model.set_ablation(ablation);
    let rss_loaded = current_rss().unwrap_or(0);

    let request = GenerationRequest {
        prompt: args.prompt.clone(),
        model: source.clone(),
        precision: args.precision,
        device: args.device,
        frames,
        guidance_scale: args.guidance_scale,
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_k: Some(args.top_k),
            top_p: None,
        },
        seed: args.seed,
    };
    request.validate()?;
    reset_peak_rss();
    let t0 = Instant::now();
    // Peak memory of the decoder loop, then of the audio decode, separately.
    let mut loop_peak = 0;
    let take = model.generate(
        &request,
        &mut |p| {
            if p == Progress::DecodingAudio {
                loop_peak = peak_rss().unwrap_or(0);
                reset_peak_rss();
            }
        },
        &cancel,
    )?;
    let total_s = t0.elapsed().as_secs_f64();
    let audio_peak = peak_rss().unwrap_or(0);
    let gen_peak = loop_peak.max(audio_peak);

    let steps = &take.timings.steps;
    // The first step includes one-off setup (cache allocation, first touches).
    let steady = if steps.len() > 1 {
        &steps[1..]
    } else {
        &steps[..]
    };
    let step_median = median_ms(steady);
    let step_mean =
        steady.iter().map(|d| d.as_secs_f64()).sum::<f64>() * 1e3 / steady.len().max(1) as f64;
    let text_tokens = if args.prompt.trim().is_empty() {
        0
    } else {
        model.tokenize(&args.prompt)?.len()
    };
    let guided = args.guidance_scale > 1.0 && text_tokens > 0;
    let step_bytes = model.step_bytes(frames, guided, text_tokens);
    let floor_ms = step_bytes as f64 / bandwidth * 1e3;
    let audio_s = take.audio.len() as f64 / take.sample_rate as f64;
    let t5_ms = take.timings.text.as_secs_f64() * 1e3;
    let encodec_s = take.timings.audio.as_secs_f64();

    eprintln!(
        "model        {source} ({}, {} threads, {:?})",
        args.precision,
        threads,
        model.device()
    );
    eprintln!(
        "audio        {frames} frames = {audio_s:.2} s, guidance {}, top-k {}",
        args.guidance_scale, args.top_k
    );
    eprintln!(
        "bandwidth    {:.1} GB/s read (all {threads} threads)",
        bandwidth / 1e9
    );
    eprintln!(
        "load         {load_s:.2} s (peak RSS {:.0} MB, after load {:.0} MB)",
        mb(load_peak),
        mb(rss_loaded)
    );
    eprintln!("T5           {t5_ms:.1} ms");
    eprintln!(
        "decoder      {} steps, median {step_median:.2} ms/step (mean {step_mean:.2}); reads {:.1} MB/step -> floor {floor_ms:.2} ms ({:.2}x)",
        steps.len(),
        step_bytes as f64 / 1e6,
        step_median / floor_ms
    );
    eprintln!("EnCodec      {encodec_s:.2} s");
    eprintln!(
        "total        {total_s:.2} s, real-time factor {:.2} (compute s per audio s)",
        total_s / audio_s
    );
    eprintln!(
        "peak RSS     {:.0} MB during generation (decoder loop {:.0} MB, audio decode {:.0} MB)",
        mb(gen_peak),
        mb(loop_peak),
        mb(audio_peak)
    );

    let mut quality = serde_json::Value::Null;
    if args.quality && args.precision != Precision::F32 {
        let mut reference = MusicGen::from_source(
            &source,
            &hub,
            args.device,
            Precision::F32,
            pool.clone(),
            &mut |_| {},
            &cancel,
        )?;
        let mut sampler = musicgen::LogitsProcessor::new(request.sampling, args.seed);
        let (codes, ref_logits) = reference.codes_and_logits(
            &args.prompt,
            frames,
            args.guidance_scale,
            CodeSource::Sample(&mut sampler),
            &cancel,
        )?;
        drop(reference);
        let (_, logits) = model.codes_and_logits(
            &args.prompt,
            frames,
            args.guidance_scale,
            CodeSource::Forced(&codes),
            &cancel,
        )?;
        let vocab = model.config().decoder.vocab_size;
        let per_codebook = musicgen::metrics::compare_logits(
            &ref_logits,
            &logits,
            model.num_codebooks(),
            vocab,
            frames,
        );
        eprintln!("quality vs f32, teacher-forced on the f32 run's codes:");
        eprintln!("  codebook  rel RMS error   KL (nats)   top-1 agreement");
        for (i, q) in per_codebook.iter().enumerate() {
            eprintln!(
                "  {i:>8}  {:>12.2}%  {:>10.5}  {:>14.1}%",
                100.0 * q.rel_rms,
                q.kl,
                100.0 * q.top1
            );
        }
        quality = serde_json::to_value(&per_codebook)?;
    }

    if args.json {
        let json = serde_json::json!({
            "impl": "promptloop",
            "precision": args.precision.name(),
            "device": format!("{:?}", model.device()),
            "load_s": load_s,
            "load_peak_rss_mb": mb(load_peak),
            "t5_ms": t5_ms,
            "step_ms_median": step_median,
            "step_ms_mean": step_mean,
            "steps": steps.len(),
            "encodec_s": encodec_s,
            "total_s": total_s,
            "rtf": total_s / audio_s,
            "peak_rss_mb": mb(gen_peak),
            "loop_peak_rss_mb": mb(loop_peak),
            "audio_peak_rss_mb": mb(audio_peak),
            "rss_after_load_mb": mb(rss_loaded),
            "threads": threads,
            "frames": frames,
            "audio_s": audio_s,
            "bandwidth_gbs": bandwidth / 1e9,
            "step_bytes": step_bytes,
            "floor_ms": floor_ms,
            "quality": quality,
            "ablate": args.ablate,
        });
        println!("{json}");
    }
    Ok(())
}

//! `musicgen generate`: a prompt to a WAV file.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use musicgen::{
    compute_pool, frames_for_duration, hub::HubOptions, wav, DeviceChoice, GenerationRequest,
    Melody, ModelSource, MusicGen, Precision, Sampling,
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

    /// Length of the new audio in seconds, more than 0 and at most 300; rounded to
    /// whole frames (50 per second). With --audio-prompt, the length of the part
    /// after the prompt. Past 30 s the take is made in windows (see --extend-stride).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// Continue this audio (a WAV: 16, 24 or 32-bit integer or 32-bit float, any
    /// rate, resampled to the model's rate; stereo averaged for a mono model, mono
    /// copied to both sides for a stereo one). The output holds the prompt, as
    /// re-encoded by EnCodec, then the continuation. Only the prompt's last
    /// 30 s minus --extend-stride (12 s by default) are kept.
    #[arg(long, value_name = "FILE.wav")]
    audio_prompt: Option<PathBuf>,

    /// With --audio-prompt, write only the new audio to --out (what goes after the
    /// original clip); --codes still lists the prompt's frames too.
    #[arg(long, requires = "audio_prompt")]
    continuation_only: bool,

    /// Follow this melody (a WAV, read as --audio-prompt is): its chroma, the
    /// dominant pitch class of every 128 ms, conditions the take. Needs a melody
    /// checkpoint (facebook/musicgen-melody, -melody-large, -stereo-melody,
    /// -stereo-melody-large). The first 30 s count; a shorter melody repeats;
    /// past 30 s each window follows the melody from where it starts.
    #[arg(long, value_name = "FILE.wav")]
    melody: Option<PathBuf>,

    /// For takes over 30 s: seconds each window after the first adds, 1 to 29
    /// (audiocraft's extend_stride). Each further window is prompted by the last
    /// 30 s minus this of the take so far.
    #[arg(long, default_value_t = musicgen::request::DEFAULT_EXTEND_STRIDE_S)]
    extend_stride: f64,

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
    /// codebook in the decoder's order (stereo: left, right, left, ...), one code
    /// per frame, the audio prompt's frames first.
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

    /// The output WAV file (32-bit float; mono, or 2 channels for a stereo model).
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
        extend_stride: Some(args.extend_stride),
        ..Default::default()
    };
    provisional.validate()?;
    // Read the prompt before the model: a bad file fails in a moment.
    let audio_prompt = match &args.audio_prompt {
        Some(path) => {
            let pcm = wav::read_wav_channels(path, "audio prompt")?;
            pcm.check("audio prompt")?;
            Some(pcm)
        }
        None => None,
    };
    let melody = match &args.melody {
        Some(path) => {
            let pcm = wav::read_wav_channels(path, "melody")?;
            pcm.check("melody")?;
            Some(Melody::Audio(pcm))
        }
        None => None,
    };
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
    if melody.is_some() && !model.has_melody() {
        bail!(musicgen::Error::MelodyUnsupported {
            checkpoints: musicgen::config::MELODY_CHECKPOINTS.join(", "),
        });
    }

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
        extend_stride: Some(args.extend_stride),
        audio_prompt,
        melody,
    };
    let take = model.generate(&request, &mut |p| reporter.report(p), &cancel)?;
    reporter.finish();
    if let Some(pcm) = &request.audio_prompt {
        let kept = take.prompt_frames as f64 / model.frame_rate();
        if kept + 0.5 / model.frame_rate() < pcm.duration_s() {
            eprintln!(
                "audio prompt: kept its last {kept:.2} s of {:.2} s (a window of {:.0} s minus the {} s stride)",
                pcm.duration_s(),
                model.window_frames() as f64 / model.frame_rate(),
                args.extend_stride,
            );
        } else {
            eprintln!("audio prompt: {kept:.2} s ({} frames)", take.prompt_frames);
        }
    }

    let channels = take.channels;
    let pcm = if args.continuation_only {
        take.continuation()
    } else {
        &take.audio[..]
    };
    let (audio, rate) = match args.sample_rate {
        Some(rate) if rate != take.sample_rate => {
            let planar = wav::deinterleave(pcm, channels, take.sample_rate);
            (wav::interleave(&wav::resample_pcm(&planar, rate)?), rate)
        }
        _ => (pcm.to_vec(), take.sample_rate),
    };
    wav::write_wav_interleaved(&args.out, &audio, channels as u16, rate)?;
    if let Some(path) = &args.codes {
        let json = serde_json::json!({ "codes": take.codes });
        std::fs::write(path, serde_json::to_string(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let steps = take.timings.steps.len().max(1);
    let decode: f64 = take.timings.steps.iter().map(|d| d.as_secs_f64()).sum();
    eprintln!(
        "wrote {} ({} channel(s), {} samples at {} Hz, {:.2} s); load {:.2} s, text {:.3} s, {} steps at {:.1} ms/step, audio decode {:.2} s",
        args.out.display(),
        channels,
        audio.len() / channels,
        rate,
        (audio.len() / channels) as f64 / rate as f64,
        load_time.as_secs_f64(),
        take.timings.text.as_secs_f64(),
        steps,
        1e3 * decode / steps as f64,
        take.timings.audio.as_secs_f64(),
    );
    Ok(())
}

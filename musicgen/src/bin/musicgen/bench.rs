//! `musicgen bench`: a generation timed stage by stage against this machine's
//! bandwidth floor, and a precision's logits against f32.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use musicgen::{
    compute_pool, frames_for_duration, hub::HubOptions, DeviceChoice, GenerationRequest,
    ModelSource, MusicGen, Precision, Progress, Sampling,
};

use crate::MUSICGEN_FRAME_RATE;

#[derive(Args)]
pub(crate) struct BenchArgs {
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
    /// values at every step), unfused (a step's layers as candle tensor operations,
    /// not the fused pass), kernel-scalar / kernel-avx2 / kernel-avx512 (run the
    /// quantized kernels at that level instead of the CPU's best).
    #[arg(long, value_delimiter = ',')]
    ablate: Vec<String>,

    /// Only time the quantized kernels: one decoder layer's products (musicgen-small
    /// shapes, 2 rows) with candle's quantized matmul and each kernel level this CPU
    /// runs, in ms and GB/s.
    #[arg(long)]
    kernels: bool,

    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// The CPU's model name (Linux), for the report.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn kernels(args: &BenchArgs) -> Result<()> {
    let threads = args.threads.unwrap_or(0);
    if threads > 0 {
        bail!("--kernels runs on candle's CPU workers (set RAYON_NUM_THREADS to change them)");
    }
    eprintln!(
        "kernels      musicgen-small decoder layers (qkv, out, cross q, cross out, fc1, fc2; 12 in turn, from memory), 2 rows, {} ({}), {} threads",
        cpu_name(),
        musicgen::qgemv::Level::detected().name(),
        candle_core::utils::get_num_threads()
    );
    let rows = musicgen::bench::kernel_table(1024, 4096, 2, 12, 20);
    eprintln!("  format  kernel        ms/layer    GB/s");
    for r in &rows {
        eprintln!(
            "  {:<6}  {:<12}  {:>8.3}  {:>6.1}",
            format!("{:?}", r.format).to_lowercase(),
            r.kernel,
            r.layer_ms,
            r.gb_per_s
        );
    }
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "format": format!("{:?}", r.format).to_lowercase(),
                    "kernel": r.kernel,
                    "layer_ms": r.layer_ms,
                    "gb_per_s": r.gb_per_s,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "cpu": cpu_name(), "kernels": rows })
        );
    }
    Ok(())
}

pub(crate) fn run(args: BenchArgs) -> Result<()> {
    use musicgen::bench::{current_rss, median_ms, peak_rss, read_bandwidth, reset_peak_rss};
    use musicgen::qgemv::{set_level, Level};
    use musicgen::CodeSource;

    if args.kernels {
        return kernels(&args);
    }

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
            "unfused" => ablation.unfused = true,
            "kernel-scalar" => set_level(Level::Scalar),
            "kernel-avx2" => set_level(Level::Avx2),
            "kernel-avx512" => set_level(Level::Avx512),
            other => bail!(
                "unknown --ablate \"{other}\" (kv-concat, cross-kv-every-step, unfused, kernel-scalar, kernel-avx2, kernel-avx512)"
            ),
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
        extend_stride: None,
        audio_prompt: None,
        melody: None,
    };
    request.validate()?;
    reset_peak_rss();
    let t0 = Instant::now();
    // Peak memory of the decoder loop, then of the audio decode, separately.
    let mut loop_peak = 0;
    let mut first_audio = None;
    let take = model.generate(
        &request,
        &mut |p| match p {
            Progress::DecodingAudio => {
                loop_peak = peak_rss().unwrap_or(0);
                reset_peak_rss();
            }
            Progress::Audio { .. } if first_audio.is_none() => {
                first_audio = Some(t0.elapsed().as_secs_f64());
            }
            _ => {}
        },
        &cancel,
    )?;
    let first_audio_s = first_audio.unwrap_or(f64::NAN);
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
    // Past one window the cache never holds more than a window's frames.
    let step_bytes = model.step_bytes(frames.min(model.window_frames()), guided, text_tokens);
    let floor_ms = step_bytes as f64 / bandwidth * 1e3;
    let audio_s = take.audio.len() as f64 / take.sample_rate as f64;
    let t5_ms = take.timings.text.as_secs_f64() * 1e3;
    let encodec_s = take.timings.audio.as_secs_f64();
    // The same decode in one call after the take, as the reference times its own:
    // the streamed figure above runs between decoder steps, on caches they filled.
    let t0 = Instant::now();
    let again = model.decode_audio(&take.codes)?;
    let encodec_alone_s = t0.elapsed().as_secs_f64();
    if again != take.audio {
        bail!("the decode after the take differs from the streamed one");
    }

    eprintln!(
        "model        {source} ({}, {} threads, {:?})",
        args.precision,
        threads,
        model.device()
    );
    eprintln!(
        "cpu          {} (quantized kernels: {})",
        cpu_name(),
        musicgen::qgemv::level().name()
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
    eprintln!(
        "EnCodec      {encodec_s:.2} s, decoded as the frames come ({encodec_alone_s:.2} s in one call after the take); first audio {first_audio_s:.2} s after the start"
    );
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

    // The audio-side conditioning a take can add, timed on the take's own audio:
    // the EnCodec encoder on up to a window minus the default stride (the most of
    // an audio prompt a take keeps), and melody chroma on up to 30 s.
    let pcm = musicgen::wav::deinterleave(&take.audio, take.channels, take.sample_rate);
    let keep =
        model.window_frames() - model.stride_frames(musicgen::request::DEFAULT_EXTEND_STRIDE_S);
    let prompt_s = (take.prompt_frames + frames).min(keep) as f64 / MUSICGEN_FRAME_RATE;
    let t0 = Instant::now();
    let prompt_codes = model.encode_prompt_audio(&pcm, keep)?;
    let encoder_s = t0.elapsed().as_secs_f64();
    let chroma_config = musicgen::chroma::ChromaConfig::default();
    let t0 = Instant::now();
    let chroma = musicgen::chroma::chroma_from_audio(&chroma_config, &pcm)?;
    let chroma_s = t0.elapsed().as_secs_f64();
    let chroma_audio_s = audio_s.min(chroma_config.chunk_length as f64);
    eprintln!(
        "encoder      {encoder_s:.2} s for a {prompt_s:.2} s audio prompt ({} frames), {:.1}% of this take's time",
        prompt_codes[0].len(),
        100.0 * encoder_s / total_s
    );
    eprintln!(
        "chroma       {:.1} ms for {chroma_audio_s:.2} s of melody ({} frames), {:.2}% of this take's time",
        chroma_s * 1e3,
        chroma.len(),
        100.0 * chroma_s / total_s
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
            "cpu": cpu_name(),
            "kernel": musicgen::qgemv::level().name(),
            "load_s": load_s,
            "load_peak_rss_mb": mb(load_peak),
            "t5_ms": t5_ms,
            "step_ms_median": step_median,
            "step_ms_mean": step_mean,
            "steps": steps.len(),
            "encodec_s": encodec_s,
            "encodec_alone_s": encodec_alone_s,
            "first_audio_s": first_audio_s,
            "encoder_s": encoder_s,
            "encoder_audio_s": prompt_s,
            "chroma_ms": chroma_s * 1e3,
            "chroma_audio_s": chroma_audio_s,
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

//! Quantized and half-precision decoders: they load, generate, and their logits
//! stay close to f32's when fed the same codes. The fixture's widths (64) are
//! below q4k's 256-wide blocks, so this test builds a checkpoint with a 256-wide
//! decoder around tiny-a's text encoder and EnCodec.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use common::{model_dir, pool};
use musicgen::{hub, CodeSource, MusicGen, Precision};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const HIDDEN: usize = 256;
const FFN: usize = 512;
const LAYERS: usize = 2;
const VOCAB: usize = 64;
const K: usize = 4;

fn random(rng: &mut ChaCha8Rng, shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    // Sum of uniforms: roughly normal, zero mean, unit variance.
    let data: Vec<f32> = (0..n)
        .map(|_| {
            let s: f32 = (0..4)
                .map(|_| (rng.next_u32() as f32 / u32::MAX as f32) - 0.5)
                .sum();
            s * 3f32.sqrt() * scale
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn build_wide_checkpoint(dir: &Path) {
    let src = model_dir("tiny-a");
    for f in ["tokenizer.json", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let dec = &mut config["decoder"];
    dec["hidden_size"] = HIDDEN.into();
    dec["ffn_dim"] = FFN.into();
    dec["num_hidden_layers"] = LAYERS.into();
    dec["num_attention_heads"] = 4.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    tensors.retain(|name, _| !name.starts_with("decoder."));
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let text = 64;
    let mut put = |name: String, t: Tensor| {
        tensors.insert(name, t);
    };
    let fan = |n: usize| 1.0 / (n as f32).sqrt();
    put(
        "enc_to_dec_proj.weight".into(),
        random(&mut rng, &[HIDDEN, text], fan(text)),
    );
    put(
        "enc_to_dec_proj.bias".into(),
        random(&mut rng, &[HIDDEN], 0.1),
    );
    let p = "decoder.model.decoder";
    for k in 0..K {
        put(
            format!("{p}.embed_tokens.{k}.weight"),
            random(&mut rng, &[VOCAB + 1, HIDDEN], 0.5),
        );
        put(
            format!("decoder.lm_heads.{k}.weight"),
            random(&mut rng, &[VOCAB, HIDDEN], 4.0 * fan(HIDDEN)),
        );
    }
    let ln = |rng: &mut ChaCha8Rng| {
        (
            (random(rng, &[HIDDEN], 0.1) + 1.0).unwrap(),
            random(rng, &[HIDDEN], 0.1),
        )
    };
    let (w, b) = ln(&mut rng);
    put(format!("{p}.layer_norm.weight"), w);
    put(format!("{p}.layer_norm.bias"), b);
    for l in 0..LAYERS {
        let lp = format!("{p}.layers.{l}");
        for attn in ["self_attn", "encoder_attn"] {
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                put(
                    format!("{lp}.{attn}.{proj}.weight"),
                    random(&mut rng, &[HIDDEN, HIDDEN], fan(HIDDEN)),
                );
            }
        }
        for norm in [
            "self_attn_layer_norm",
            "encoder_attn_layer_norm",
            "final_layer_norm",
        ] {
            let (w, b) = ln(&mut rng);
            put(format!("{lp}.{norm}.weight"), w);
            put(format!("{lp}.{norm}.bias"), b);
        }
        put(
            format!("{lp}.fc1.weight"),
            random(&mut rng, &[FFN, HIDDEN], fan(HIDDEN)),
        );
        put(
            format!("{lp}.fc2.weight"),
            random(&mut rng, &[HIDDEN, FFN], fan(FFN)),
        );
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}

fn load(dir: &Path, precision: Precision) -> MusicGen {
    let files = hub::local_files(dir).unwrap();
    MusicGen::load(&files, &Device::Cpu, precision, pool()).unwrap()
}

#[cfg(feature = "bench")]
#[test]
fn reduced_precisions_generate_and_stay_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    build_wide_checkpoint(dir.path());
    let prompt = "dusty boom-bap drums, 90 bpm";
    let frames = 40;
    let cancel = AtomicBool::new(false);
    let mut reference = load(dir.path(), Precision::F32);
    let sampling = musicgen::Sampling::Sample {
        temperature: 1.0,
        top_k: Some(250),
        top_p: None,
    };
    let mut sampler = musicgen::LogitsProcessor::new(sampling, 5);
    let (codes, ref_logits) = reference
        .codes_and_logits(
            prompt,
            frames,
            3.0,
            CodeSource::Sample(&mut sampler),
            &cancel,
        )
        .unwrap();
    let f32_bytes = reference.step_bytes(frames, true, 18);

    // (precision, largest relative RMS error allowed, largest weight-bytes ratio to
    // f32; the LM heads stay in f32, a larger share of this small decoder's bytes
    // than of musicgen-small's)
    let cases = [
        (Precision::Q8_0, 0.03, 0.36),
        (Precision::Q4_0, 0.20, 0.25),
        (Precision::Q4K, 0.20, 0.25),
        (Precision::F16, 0.01, 0.55),
        (Precision::Bf16, 0.05, 0.55),
    ];
    for (precision, max_err, max_bytes) in cases {
        let mut model = load(dir.path(), precision);
        let (_, logits) = model
            .codes_and_logits(prompt, frames, 3.0, CodeSource::Forced(&codes), &cancel)
            .unwrap();
        let quality = musicgen::metrics::compare_logits(&ref_logits, &logits, K, VOCAB, frames);
        for (c, q) in quality.iter().enumerate() {
            println!(
                "{precision}: codebook {c}: rel RMS {:.2}%, KL {:.5}, top-1 {:.0}%",
                100.0 * q.rel_rms,
                q.kl,
                100.0 * q.top1
            );
            assert!(q.rel_rms < max_err, "{precision} codebook {c}: {q:?}");
            assert!(q.rel_rms > 0.0, "{precision} should differ from f32 at all");
        }
        // Fewer bytes per step is the point of the exercise.
        let ratio = model.step_bytes(frames, true, 18) as f64 / f32_bytes as f64;
        println!("{precision}: {ratio:.3} of f32's bytes per step");
        assert!(ratio < max_bytes, "{precision}: bytes ratio {ratio}");
        // And a whole sampled generation works end to end.
        let take = model
            .generate(
                &musicgen::GenerationRequest {
                    prompt: prompt.into(),
                    frames: 10,
                    precision,
                    ..Default::default()
                },
                &mut |_| {},
                &cancel,
            )
            .unwrap();
        assert_eq!(take.audio.len(), 10 * 640);
        assert!(take.audio.iter().all(|s| s.is_finite()));
        assert!(take.codes.iter().flatten().all(|&c| (c as usize) < VOCAB));
    }
}

#[test]
fn the_small_fixture_quantizes_what_fits_the_blocks() {
    // tiny-a's 64-wide matrices fit q8_0's 32-wide blocks but not q4k's 256:
    // q4k leaves them in f32 and still runs.
    let f32_model = load(&model_dir("tiny-a"), Precision::F32);
    let q8 = load(&model_dir("tiny-a"), Precision::Q8_0);
    let q4k = load(&model_dir("tiny-a"), Precision::Q4K);
    let (a, b, c) = (
        f32_model.step_weight_bytes(),
        q8.step_weight_bytes(),
        q4k.step_weight_bytes(),
    );
    assert!(b < a / 2, "q8_0 {b} vs f32 {a}");
    assert_eq!(c, a, "q4k cannot quantize 64-wide rows");
}

#[test]
fn quantized_matrices_are_cached_on_disk_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    build_wide_checkpoint(dir.path());
    let cache = tempfile::tempdir().unwrap();
    let files = hub::local_files(dir.path()).unwrap();
    let load_cached = || {
        MusicGen::load_with_cache(
            &files,
            &Device::Cpu,
            Precision::Q4K,
            pool(),
            Some(cache.path()),
        )
        .unwrap()
    };
    let cancel = AtomicBool::new(false);
    let codes = vec![vec![1u32; 12]; K];
    let run = |m: &mut MusicGen| {
        m.codes_and_logits("drums", 12, 3.0, CodeSource::Forced(&codes), &cancel)
            .unwrap()
            .1
    };
    let first = run(&mut load_cached());
    let written: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(written.len(), 1, "one cache file: {written:?}");
    assert!(written[0].to_string_lossy().ends_with(".gguf"));
    let stamp = std::fs::metadata(&written[0]).unwrap().modified().unwrap();
    // The second load reads the cache (the file is not rewritten) and computes the same.
    let second = run(&mut load_cached());
    assert_eq!(first, second);
    assert_eq!(
        std::fs::metadata(&written[0]).unwrap().modified().unwrap(),
        stamp
    );
    // A damaged cache is ignored and rewritten.
    std::fs::write(&written[0], b"not gguf").unwrap();
    let third = run(&mut load_cached());
    assert_eq!(first, third);
    assert!(std::fs::metadata(&written[0]).unwrap().len() > 1000);
}

/// The fused CPU step (plain buffers, the row kernels) against the same step as
/// candle tensor operations: the same arithmetic, so the same logits — exactly for
/// the quantized kernels (each row's products are independent of the other rows),
/// to rounding for f32 (whose two-row dot products add in another order than one
/// row's), and trivially for f16 (which has no fused step).
#[cfg(feature = "bench")]
#[test]
fn the_fused_step_computes_what_the_tensor_operations_do() {
    let dir = tempfile::tempdir().unwrap();
    build_wide_checkpoint(dir.path());
    let prompt = "dusty boom-bap drums, 90 bpm";
    let frames = 24;
    let cancel = AtomicBool::new(false);
    for precision in [
        Precision::F32,
        Precision::Q8_0,
        Precision::Q4K,
        Precision::F16,
    ] {
        let mut model = load(dir.path(), precision);
        let sampling = musicgen::Sampling::Sample {
            temperature: 1.0,
            top_k: Some(250),
            top_p: None,
        };
        let mut sampler = musicgen::LogitsProcessor::new(sampling, 7);
        let (codes, fused) = model
            .codes_and_logits(
                prompt,
                frames,
                3.0,
                CodeSource::Sample(&mut sampler),
                &cancel,
            )
            .unwrap();
        model.set_ablation(musicgen::decoder::Ablation {
            unfused: true,
            ..Default::default()
        });
        let (_, unfused) = model
            .codes_and_logits(prompt, frames, 3.0, CodeSource::Forced(&codes), &cancel)
            .unwrap();
        assert_eq!(fused.len(), unfused.len());
        let peak = unfused.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = fused
            .iter()
            .zip(&unfused)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        println!("{precision}: largest difference {diff:e} of {peak}");
        match precision {
            Precision::F32 => assert!(diff <= 1e-5 * peak, "{precision}: {diff} of {peak}"),
            _ => assert_eq!(diff, 0.0, "{precision}"),
        }
    }
}

//! The engine against transformers' MusicGen: greedy codes exactly, T5 states,
//! teacher-forced logits at every step and audio to 1e-4 of their peak.

mod common;

use std::sync::atomic::AtomicBool;

use common::{flat, load, rel_error, Reference};
use musicgen::{CodeSource, GenerationRequest, LogitsProcessor, ModelSource, MusicGen, Sampling};

const TOL: f32 = 1e-4;

fn check_text(model: &mut MusicGen, r: &Reference) {
    let ids = model.tokenize(&r.prompt()).unwrap();
    let want: Vec<u32> = r
        .get("input_ids")
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect();
    assert_eq!(ids, want, "token ids");
    let states = model.text_states(&ids).unwrap();
    assert_eq!(states.dims(), r.get("t5_hidden").dims());
    let e = rel_error(&flat(&states), &r.floats("t5_hidden"));
    println!("T5 states: max error {e:.2e} of peak");
    assert!(e < TOL, "T5 states differ by {e}");
}

fn check_guidance(model: &mut MusicGen, r: &Reference, scale: f64, key: &str) {
    let frames = r.frames();
    let cond = model.encode_prompt(&r.prompt()).unwrap();
    let cancel = AtomicBool::new(false);
    let want_codes = r.codes(&format!("{key}.codes"));

    // Greedy codes, exactly.
    let mut greedy = LogitsProcessor::new(Sampling::Greedy, 0);
    let codes = model
        .generate_codes(
            cond.as_ref(),
            frames,
            scale,
            CodeSource::Sample(&mut greedy),
            None,
            &mut |_| {},
            &cancel,
            &mut Vec::new(),
        )
        .unwrap();
    assert_eq!(codes, want_codes, "greedy codes at guidance {scale}");

    // Guided logits at every step, with the reference's codes fed back.
    let mut logits = Vec::new();
    let mut collect = |_step: usize, t: &candle_core::Tensor| logits.extend(flat(t));
    model
        .generate_codes(
            cond.as_ref(),
            frames,
            scale,
            CodeSource::Forced(&want_codes),
            Some(&mut collect),
            &mut |_| {},
            &cancel,
            &mut Vec::new(),
        )
        .unwrap();
    let e = rel_error(&logits, &r.floats(&format!("{key}.logits")));
    println!("guidance {scale}: teacher-forced logits max error {e:.2e} of peak");
    assert!(e < TOL, "logits differ by {e}");

    // Audio.
    let audio = model.decode_audio(&want_codes).unwrap();
    assert_eq!(audio.len(), frames * 640);
    let e = rel_error(&audio, &r.floats(&format!("{key}.audio")));
    println!("guidance {scale}: audio max error {e:.2e} of peak");
    assert!(e < TOL, "audio differs by {e}");
}

fn check_encodec(model: &MusicGen, r: &Reference) {
    for n in 1..=3 {
        let codes = r.codes(&format!("encodec.codes_{n}"));
        let audio = model.decode_audio(&codes).unwrap();
        assert_eq!(audio.len(), n * 640);
        let e = rel_error(&audio, &r.floats(&format!("encodec.audio_{n}")));
        println!("EnCodec {n} frame(s): max error {e:.2e} of peak");
        assert!(e < TOL, "EnCodec decode of {n} frames differs by {e}");
    }
}

fn check_checkpoint(name: &str) {
    let mut model = load(name);
    let r = Reference::load(name);
    check_text(&mut model, &r);
    check_guidance(&mut model, &r, 1.0, "g1");
    check_guidance(&mut model, &r, 3.0, "g3");
    check_encodec(&model, &r);
}

#[test]
fn tiny_a_matches_the_reference() {
    check_checkpoint("tiny-a");
}

#[test]
fn tiny_b_sharded_with_projection_matches_the_reference() {
    check_checkpoint("tiny-b");
}

#[test]
fn parametrizations_names_load_the_same_model() {
    // tiny-a-param holds tiny-a's weights under newer transformers' names.
    let mut model = load("tiny-a-param");
    let r = Reference::load("tiny-a");
    check_guidance(&mut model, &r, 3.0, "g3");
}

#[test]
fn generate_with_greedy_request_gives_reference_codes_and_audio() {
    let mut model = load("tiny-b");
    let r = Reference::load("tiny-b");
    let request = GenerationRequest {
        prompt: r.prompt(),
        model: ModelSource::Local {
            path: common::model_dir("tiny-b"),
        },
        frames: r.frames(),
        guidance_scale: 3.0,
        sampling: Sampling::Greedy,
        ..Default::default()
    };
    let mut steps = 0;
    let take = model
        .generate(
            &request,
            &mut |p| {
                if let musicgen::Progress::Step { step, total } = p {
                    assert_eq!(total, r.frames() + 3);
                    steps = step;
                }
            },
            &AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(
        steps,
        r.frames() + 3,
        "one progress report per decoder step"
    );
    assert_eq!(take.codes, r.codes("g3.codes"));
    assert_eq!(take.sample_rate, 32_000);
    let e = rel_error(&take.audio, &r.floats("g3.audio"));
    assert!(e < TOL, "audio differs by {e}");
}

#[cfg(feature = "bench")]
#[test]
fn ablations_change_speed_not_results() {
    let mut model = load("tiny-b");
    let r = Reference::load("tiny-b");
    model.set_ablation(musicgen::decoder::Ablation {
        kv_concat: true,
        cross_kv_every_step: true,
        unfused: false,
    });
    check_guidance(&mut model, &r, 3.0, "g3");
    // The step as candle tensor operations instead of the fused pass.
    let mut model = load("tiny-b");
    model.set_ablation(musicgen::decoder::Ablation {
        unfused: true,
        ..Default::default()
    });
    check_guidance(&mut model, &r, 3.0, "g3");
}

#[test]
fn audio_decoded_as_codes_come_is_the_whole_decode_exactly() {
    for (name, frames) in [("tiny-a", 150), ("tiny-a", 3), ("tiny-stereo", 77)] {
        let model = load(name);
        let k = model.num_codebooks();
        // Codes of every value, in an order no two rows share.
        let codes: Vec<Vec<u32>> = (0..k)
            .map(|c| {
                (0..frames)
                    .map(|f| ((f * 7 + c * 13) % 64) as u32)
                    .collect()
            })
            .collect();
        let whole = model.decode_audio(&codes).unwrap();
        let mut stream = model.audio_stream();
        let mut joined = Vec::new();
        let mut pieces = 0;
        for f in 0..frames {
            let column: Vec<Vec<u32>> = codes.iter().map(|r| vec![r[f]]).collect();
            stream.push(&column).unwrap();
            let piece = stream.ready().unwrap();
            pieces += usize::from(!piece.is_empty());
            joined.extend(piece);
            assert_eq!(joined.len() / model.channels(), stream.samples());
        }
        let before_finish = joined.len();
        joined.extend(stream.finish().unwrap());
        println!("{name}, {frames} frames: {pieces} pieces before the end, {before_finish} of {} samples", whole.len());
        assert_eq!(joined, whole, "{name}: the pieces joined are the decode");
        if frames > 64 {
            assert!(
                pieces >= frames / 32 - 2,
                "{name}: audio came while frames came"
            );
        }
    }
}

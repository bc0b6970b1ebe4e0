//! Takes over 30 s, window by window as audiocraft's `generate` with
//! `extend_stride`: the first window is exactly a plain take, and each further
//! window continues the previous one's last 30 s minus the stride.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::{load, model_dir};
use musicgen::{
    CodeSource, Error, GenerationRequest, LogitsProcessor, ModelSource, Progress, Sampling,
};

fn greedy(frames: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: "dusty boom-bap drums, 90 bpm".into(),
        model: ModelSource::Local {
            path: model_dir("tiny-a"),
        },
        frames,
        guidance_scale: 1.0,
        sampling: Sampling::Greedy,
        ..Default::default()
    }
}

#[test]
fn a_40_s_take_starts_as_the_30_s_take_and_continues_its_tail() {
    let mut model = load("tiny-a");
    let cancel = AtomicBool::new(false);
    let mut windows = Vec::new();
    let mut steps = 0;
    let long = model
        .generate(
            &greedy(2000),
            &mut |p| match p {
                Progress::Window { index, count } => windows.push((index, count)),
                Progress::Step { .. } => steps += 1,
                _ => {}
            },
            &cancel,
        )
        .unwrap();
    assert_eq!(windows, vec![(1, 2), (2, 2)]);
    // 1500 frames + 3 delay steps, then 500 new frames + 3.
    assert_eq!(steps, 1503 + 503);
    assert_eq!(long.codes[0].len(), 2000);
    assert_eq!(long.audio.len(), 2000 * 640);

    let plain = model.generate(&greedy(1500), &mut |_| {}, &cancel).unwrap();
    let head: Vec<Vec<u32>> = long.codes.iter().map(|r| r[..1500].to_vec()).collect();
    assert_eq!(head, plain.codes, "the first window is a plain 30 s take");

    // The second window: the last 12 s of the first as its prompt, 10 s more.
    let tail_prompt: Vec<Vec<u32>> = plain.codes.iter().map(|r| r[900..].to_vec()).collect();
    let cond = model.encode_prompt(&greedy(1).prompt).unwrap();
    let mut sampler = LogitsProcessor::new(Sampling::Greedy, 0);
    let second = model
        .continue_codes(
            cond.as_ref(),
            &tail_prompt,
            500,
            1.0,
            CodeSource::Sample(&mut sampler),
            None,
            &mut |_| {},
            &cancel,
            &mut Vec::new(),
        )
        .unwrap();
    let tail: Vec<Vec<u32>> = long.codes.iter().map(|r| r[1500..].to_vec()).collect();
    let want: Vec<Vec<u32>> = second.iter().map(|r| r[600..].to_vec()).collect();
    assert_eq!(
        tail, want,
        "the second window continues the first's last 12 s"
    );
}

#[test]
fn cancel_stops_a_long_take_in_its_second_window() {
    let mut model = load("tiny-a");
    let cancel = AtomicBool::new(false);
    let mut window = 0;
    let mut steps_in_second = 0;
    let err = model
        .generate(
            &greedy(2000),
            &mut |p| match p {
                Progress::Window { index, .. } => window = index,
                Progress::Step { .. } if window == 2 => {
                    steps_in_second += 1;
                    if steps_in_second == 5 {
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
                _ => {}
            },
            &cancel,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    assert_eq!(steps_in_second, 5, "stopped at the next step");
}

#[test]
fn a_stride_that_leaves_no_prompt_room_is_refused() {
    let mut model = load("tiny-a");
    for stride in [0.5, 29.5, 40.0] {
        let r = GenerationRequest {
            extend_stride: Some(stride),
            ..greedy(2000)
        };
        let e = model
            .generate(&r, &mut |_| {}, &AtomicBool::new(false))
            .unwrap_err();
        assert!(e.to_string().contains("between 1 and 29"), "{e}");
    }
}

#[test]
fn a_take_is_heard_while_it_is_made_and_its_pieces_are_its_audio() {
    let mut model = load("tiny-a");
    let cancel = AtomicBool::new(false);
    let mut pieces: Vec<(usize, Vec<f32>)> = Vec::new();
    let mut steps_at_first_piece = None;
    let mut steps = 0;
    let mut before_decoding = 0;
    // 40 s: two windows, the second streaming on from the first.
    let take = model
        .generate(
            &greedy(2000),
            &mut |p| match p {
                Progress::Step { .. } => steps += 1,
                Progress::Audio { start, pcm } => {
                    steps_at_first_piece.get_or_insert(steps);
                    pieces.push((start, pcm));
                }
                Progress::DecodingAudio => before_decoding = pieces.len(),
                _ => {}
            },
            &cancel,
        )
        .unwrap();
    let mut joined = Vec::new();
    for (start, pcm) in &pieces {
        assert_eq!(*start, joined.len(), "pieces come in order, without gaps");
        joined.extend_from_slice(pcm);
    }
    assert_eq!(joined, take.audio, "the pieces are the take's audio");
    assert_eq!(
        joined,
        model.decode_audio(&take.codes).unwrap(),
        "and the whole decode, exactly"
    );
    let first = steps_at_first_piece.unwrap();
    println!("first audio after {first} of {steps} steps; {before_decoding} pieces before the end");
    assert!(first < 50, "the first audio comes after {first} steps");
    assert!(
        before_decoding > 50,
        "{before_decoding} pieces while generating"
    );
}

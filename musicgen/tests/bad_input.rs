//! Every class of bad input gets a clear error, never a panic.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use common::{load, model_dir, pool};
use musicgen::{
    hub, Error, GenerationRequest, ModelSource, MusicGen, Precision, Progress, Sampling,
};

fn copy_model(name: &str, to: &Path) {
    for entry in std::fs::read_dir(model_dir(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn load_dir(dir: &Path) -> Result<MusicGen, Error> {
    let files = hub::local_files(dir)?;
    MusicGen::load(&files, &Device::Cpu, Precision::F32, pool())
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
}

fn err_text<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn missing_folder_and_missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("nope");
    assert!(matches!(load_dir(&gone), Err(Error::MissingFile { .. })));
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        let d = tempfile::tempdir().unwrap();
        copy_model("tiny-a", d.path());
        std::fs::remove_file(d.path().join(file)).unwrap();
        let msg = err_text(load_dir(d.path()));
        assert!(msg.contains(file), "{file}: {msg}");
    }
    // A sharded checkpoint missing one shard.
    let d = tempfile::tempdir().unwrap();
    copy_model("tiny-b", d.path());
    std::fs::remove_file(d.path().join("model-00002-of-00002.safetensors")).unwrap();
    let msg = err_text(load_dir(d.path()));
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");
}

#[test]
fn corrupt_files_are_refused() {
    // Truncated weights.
    let d = tempfile::tempdir().unwrap();
    copy_model("tiny-a", d.path());
    let w = d.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let msg = err_text(load_dir(d.path()));
    assert!(msg.contains("cannot load the weights"), "{msg}");
    // Garbage weights.
    std::fs::write(&w, b"not a safetensors file at all").unwrap();
    assert!(matches!(load_dir(d.path()), Err(Error::Weights { .. })));
    // Garbage config.
    let d = tempfile::tempdir().unwrap();
    copy_model("tiny-a", d.path());
    std::fs::write(d.path().join("config.json"), "{ this is not json").unwrap();
    let msg = err_text(load_dir(d.path()));
    assert!(msg.contains("config.json"), "{msg}");
    // Garbage tokenizer.
    let d = tempfile::tempdir().unwrap();
    copy_model("tiny-a", d.path());
    std::fs::write(d.path().join("tokenizer.json"), "[]").unwrap();
    assert!(matches!(load_dir(d.path()), Err(Error::Tokenizer(_))));
    // A shard index that points outside the folder.
    let d = tempfile::tempdir().unwrap();
    copy_model("tiny-b", d.path());
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "../../etc/passwd"}}"#,
    )
    .unwrap();
    let msg = err_text(load_dir(d.path()));
    assert!(msg.contains("leaves the model folder"), "{msg}");
}

#[test]
fn other_models_and_unsupported_variants_are_refused_by_name() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: [(&str, Edit); 4] = [
        ("\"t5\" model", Box::new(|j| j["model_type"] = "t5".into())),
        (
            "13 chroma bins",
            Box::new(|j| {
                j["model_type"] = "musicgen_melody".into();
                j["num_chroma"] = 13.into();
            }),
        ),
        (
            "stereo",
            Box::new(|j| j["decoder"]["audio_channels"] = 2.into()),
        ),
        (
            "time_group_norm",
            Box::new(|j| j["audio_encoder"]["norm_type"] = "time_group_norm".into()),
        ),
    ];
    for (needle, edit) in cases {
        let d = tempfile::tempdir().unwrap();
        copy_model("tiny-a", d.path());
        edit_config(d.path(), edit);
        match load_dir(d.path()) {
            Err(e @ Error::UnsupportedModel { .. }) => {
                assert!(e.to_string().contains(needle), "{needle}: {e}")
            }
            other => panic!("{needle}: expected UnsupportedModel, got {other:?}"),
        }
    }
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named_with_both_shapes() {
    let d = tempfile::tempdir().unwrap();
    copy_model("tiny-a", d.path());
    let w = d.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    let name = "decoder.model.decoder.layers.1.fc1.weight";
    let bad = Tensor::zeros((100, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    let expected = format!("{:?}", tensors[name].dims());
    tensors.insert(name.to_string(), bad);
    candle_core::safetensors::save(&tensors, &w).unwrap();
    let msg = err_text(load_dir(d.path()));
    assert!(msg.contains(name), "{msg}");
    assert!(
        msg.contains("[100, 64]") && msg.contains(&expected),
        "{msg}"
    );
}

#[test]
fn a_prompt_over_256_tokens_is_refused() {
    let mut model = load("tiny-a");
    let long = "dusty boom-bap drums ".repeat(200);
    match model.encode_prompt(&long) {
        Err(Error::PromptTooLong { tokens, max }) => {
            assert!(tokens > 256);
            assert_eq!(max, 256);
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
    // Just at the limit is fine.
    let mut prompt = String::new();
    while model.tokenize(&format!("{prompt} drums")).is_ok() {
        prompt.push_str(" drums");
    }
    assert_eq!(model.tokenize(&prompt).unwrap().len(), 256);
    model.encode_prompt(&prompt).unwrap();
}

#[test]
fn an_empty_prompt_is_unconditional_generation() {
    let mut model = load("tiny-a");
    assert!(model.encode_prompt("").unwrap().is_none());
    assert!(model.encode_prompt("   \n").unwrap().is_none());
    let request = GenerationRequest {
        prompt: String::new(),
        model: ModelSource::Local {
            path: model_dir("tiny-a"),
        },
        frames: 5,
        ..Default::default()
    };
    let take = model
        .generate(&request, &mut |_| {}, &AtomicBool::new(false))
        .unwrap();
    assert_eq!(take.audio.len(), 5 * 640);
    // Guidance has nothing to contrast without a prompt: scale 3 equals scale 1.
    let one = GenerationRequest {
        guidance_scale: 1.0,
        ..request.clone()
    };
    let take1 = model
        .generate(&one, &mut |_| {}, &AtomicBool::new(false))
        .unwrap();
    assert_eq!(take.codes, take1.codes);
}

#[test]
fn bad_requests_fail_before_any_work() {
    let mut model = load("tiny-a");
    let base = GenerationRequest {
        prompt: "drums".into(),
        model: ModelSource::Local {
            path: model_dir("tiny-a"),
        },
        frames: 5,
        ..Default::default()
    };
    let s = |temperature, top_k, top_p| Sampling::Sample {
        temperature,
        top_k,
        top_p,
    };
    let bad = [
        GenerationRequest {
            frames: 0,
            ..base.clone()
        },
        GenerationRequest {
            frames: 15_001,
            ..base.clone()
        },
        GenerationRequest {
            extend_stride: Some(0.5),
            ..base.clone()
        },
        GenerationRequest {
            extend_stride: Some(29.5),
            ..base.clone()
        },
        GenerationRequest {
            guidance_scale: 0.9,
            ..base.clone()
        },
        GenerationRequest {
            sampling: s(1.0, Some(0), None),
            ..base.clone()
        },
        GenerationRequest {
            sampling: s(1.0, None, Some(1.01)),
            ..base.clone()
        },
        GenerationRequest {
            sampling: s(0.0, None, None),
            ..base.clone()
        },
    ];
    for r in bad {
        let mut steps = 0;
        let e = model
            .generate(
                &r,
                &mut |p| steps += matches!(p, Progress::Step { .. }) as usize,
                &AtomicBool::new(false),
            )
            .unwrap_err();
        assert!(matches!(e, Error::InvalidRequest(_)), "{e:?}");
        assert_eq!(steps, 0, "no decoder step ran for {r:?}");
    }
}

#[test]
fn cancelling_stops_at_the_next_step_with_a_distinct_error() {
    let mut model = load("tiny-a");
    let request = GenerationRequest {
        prompt: "drums".into(),
        model: ModelSource::Local {
            path: model_dir("tiny-a"),
        },
        frames: 200,
        ..Default::default()
    };
    let cancel = AtomicBool::new(false);
    let mut last_step = 0;
    let e = model
        .generate(
            &request,
            &mut |p| {
                if let Progress::Step { step, .. } = p {
                    last_step = step;
                    if step == 10 {
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
            },
            &cancel,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e:?}");
    assert_eq!(last_step, 10, "no step ran after the cancel");
    // Cancelled before the start: nothing runs. Afterwards the model still works.
    let e = model.generate(&request, &mut |_| {}, &cancel).unwrap_err();
    assert!(matches!(e, Error::Cancelled));
    let short = GenerationRequest {
        frames: 3,
        ..request
    };
    model
        .generate(&short, &mut |_| {}, &AtomicBool::new(false))
        .unwrap();
}

#[test]
fn asking_for_a_gpu_in_a_cpu_build_says_how_to_get_one() {
    if cfg!(any(feature = "cuda", feature = "metal")) {
        return;
    }
    let e = musicgen::select_device(musicgen::DeviceChoice::Cuda).unwrap_err();
    assert!(e.to_string().contains("--features cuda"), "{e}");
    assert!(musicgen::select_device(musicgen::DeviceChoice::Auto)
        .unwrap()
        .is_cpu());
}

#[test]
fn bad_audio_prompts_are_named_errors_before_any_step() {
    let mut model = load("tiny-stereo");
    let base = GenerationRequest {
        prompt: "drums".into(),
        model: ModelSource::Local {
            path: model_dir("tiny-stereo"),
        },
        frames: 5,
        ..Default::default()
    };
    let with = |channels: Vec<Vec<f32>>, sample_rate| GenerationRequest {
        audio_prompt: Some(musicgen::request::Pcm {
            channels,
            sample_rate,
        }),
        ..base.clone()
    };
    let cases = [
        (with(vec![], 32_000), "has no samples"),
        (with(vec![vec![]], 32_000), "has no samples"),
        (
            with(vec![vec![0.1; 700], vec![0.1; 699]], 32_000),
            "different lengths",
        ),
        // 640 samples at 32 kHz is one frame; 300 at 16 kHz is under one.
        (with(vec![vec![0.1; 300]], 16_000), "at least one frame"),
        (with(vec![vec![f32::NAN; 700]], 32_000), "not finite"),
        (with(vec![vec![0.1; 700]], 0), "0 Hz"),
    ];
    for (r, needle) in cases {
        let mut steps = 0;
        let e = model
            .generate(
                &r,
                &mut |p| steps += matches!(p, Progress::Step { .. }) as usize,
                &AtomicBool::new(false),
            )
            .unwrap_err();
        assert!(e.to_string().contains(needle), "{needle}: {e}");
        assert_eq!(steps, 0, "no decoder step ran for {needle}");
    }
    // One frame's worth at another rate is enough.
    let take = model
        .generate(
            &with(vec![vec![0.1; 320]], 16_000),
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(take.prompt_frames, 1);
    assert_eq!(take.codes[0].len(), 6);
    assert_eq!(take.continuation().len(), 5 * 640 * 2);
}

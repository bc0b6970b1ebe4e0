//! Shared helpers for the engine's integration tests: the committed fixtures
//! made by `tests/fixtures/make_reference.py`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use musicgen::{compute_pool, hub, MusicGen, Precision};

/// The committed fixtures; `PROMPTLOOP_FIXTURES` points a test binary that was
/// built elsewhere (bench/gpu_check.sh carries them to a GPU machine) at them.
pub fn fixtures() -> PathBuf {
    match std::env::var_os("PROMPTLOOP_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures"),
    }
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn pool() -> Arc<rayon::ThreadPool> {
    compute_pool(2).unwrap()
}

/// The device the engine's tests run on: the CPU, or the first CUDA GPU as the
/// engine opens it with `PROMPTLOOP_TEST_DEVICE=cuda` (a `--features cuda` build).
pub fn test_device() -> Device {
    match std::env::var("PROMPTLOOP_TEST_DEVICE").as_deref() {
        Err(_) | Ok("") | Ok("cpu") => Device::Cpu,
        Ok("cuda") => musicgen::select_device(musicgen::DeviceChoice::Cuda)
            .unwrap_or_else(|e| panic!("PROMPTLOOP_TEST_DEVICE=cuda: {e}")),
        Ok(other) => panic!("PROMPTLOOP_TEST_DEVICE={other}: expected cpu or cuda"),
    }
}

pub fn load(name: &str) -> MusicGen {
    load_on(name, &test_device())
}

pub fn load_on(name: &str, device: &Device) -> MusicGen {
    let files = hub::local_files(&model_dir(name)).unwrap();
    MusicGen::load(&files, device, Precision::F32, pool()).unwrap()
}

pub struct Reference {
    pub tensors: HashMap<String, Tensor>,
    pub meta: serde_json::Value,
}

impl Reference {
    pub fn load(name: &str) -> Self {
        let dir = fixtures().join("reference");
        let tensors =
            candle_core::safetensors::load(dir.join(format!("{name}.safetensors")), &Device::Cpu)
                .unwrap();
        let meta = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        Self { tensors, meta }
    }

    pub fn get(&self, key: &str) -> &Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("reference has no {key}"))
    }

    pub fn codes(&self, key: &str) -> Vec<Vec<u32>> {
        self.get(key)
            .to_vec2::<i64>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(|c| c as u32).collect())
            .collect()
    }

    pub fn floats(&self, key: &str) -> Vec<f32> {
        self.get(key)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    /// The melody's notes the melody fixture was rendered from.
    pub fn notes(&self) -> Vec<musicgen::chroma::Note> {
        self.meta["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| musicgen::chroma::Note {
                start_s: n[0].as_f64().unwrap(),
                end_s: n[1].as_f64().unwrap(),
                pitch: n[2].as_u64().unwrap() as u8,
            })
            .collect()
    }

    pub fn prompt(&self) -> String {
        self.meta["prompt"].as_str().unwrap().to_string()
    }

    pub fn frames(&self) -> usize {
        self.meta["frames"].as_u64().unwrap() as usize
    }
}

/// max |got - want| relative to max |want|.
pub fn rel_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let peak = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    err / peak.max(f32::MIN_POSITIVE)
}

pub fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

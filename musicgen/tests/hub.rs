//! Download code against a local server on 127.0.0.1 that answers as the Hugging
//! Face hub does; never the internet.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use common::{model_dir, pool};
use musicgen::{hub::HubOptions, DeviceChoice, Error, ModelSource, MusicGen, Precision, Progress};

const REPO: &str = "promptloop/tiny-b";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves a fixture folder as `REPO` at revision `main` until dropped.
struct FakeHub {
    endpoint: String,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    file_requests: Arc<AtomicUsize>,
}

impl FakeHub {
    fn start(dir: PathBuf) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let endpoint = format!("http://{}", server.server_addr().to_ip().unwrap());
        let files: HashMap<String, Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        let file_requests = Arc::new(AtomicUsize::new(0));
        let (s, count) = (server.clone(), file_requests.clone());
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let url = req.url().to_string();
                let header = |name: &str, value: &str| {
                    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap()
                };
                if url == format!("/api/models/{REPO}/revision/main") {
                    let siblings: Vec<_> = files
                        .keys()
                        .map(|f| serde_json::json!({ "rfilename": f }))
                        .collect();
                    let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings });
                    let _ = req.respond(tiny_http::Response::from_string(body.to_string()));
                    continue;
                }
                let prefix = format!("/{REPO}/resolve/main/");
                let Some(data) = url.strip_prefix(&prefix).and_then(|f| files.get(f)) else {
                    let _ = req.respond(tiny_http::Response::empty(404));
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                // Range requests: "bytes=START-" or "bytes=START-END".
                let range = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Range"))
                    .map(|h| h.value.as_str().to_string());
                let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
                    Some(r) => {
                        let (a, b) = r.split_once('-').unwrap();
                        let a: usize = a.parse().unwrap();
                        let b = if b.is_empty() {
                            data.len() - 1
                        } else {
                            b.parse().unwrap()
                        };
                        (a, b.min(data.len() - 1))
                    }
                    None => (0, data.len() - 1),
                };
                let body = data[start..=end].to_vec();
                let etag = format!(
                    "\"{:016x}{:08x}\"",
                    data.len(),
                    data.iter().map(|&b| b as u32).sum::<u32>()
                );
                let resp = tiny_http::Response::from_data(body)
                    .with_status_code(206)
                    .with_header(header("ETag", &etag))
                    .with_header(header("X-Repo-Commit", COMMIT))
                    .with_header(header(
                        "Content-Range",
                        &format!("bytes {start}-{end}/{}", data.len()),
                    ));
                let _ = req.respond(resp);
            }
        });
        Self {
            endpoint,
            server,
            thread: Some(thread),
            file_requests,
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn load(options: &HubOptions, progress: &mut dyn FnMut(Progress)) -> Result<MusicGen, Error> {
    MusicGen::from_source(
        &ModelSource::Hub {
            id: REPO.into(),
            revision: "main".into(),
        },
        options,
        DeviceChoice::Cpu,
        Precision::F32,
        pool(),
        progress,
        &AtomicBool::new(false),
    )
}

#[test]
fn downloads_into_the_cache_with_progress_then_loads_offline() {
    let cache = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(model_dir("tiny-b"));
    let options = HubOptions {
        endpoint: Some(hub.endpoint.clone()),
        cache_dir: Some(cache.path().to_path_buf()),
        offline: false,
    };
    let mut finished: HashMap<String, u64> = HashMap::new();
    let mut updates = 0;
    let mut model = load(&options, &mut |p| {
        if let Progress::Download(d) = p {
            updates += 1;
            assert!(d.done <= d.total);
            if d.done == d.total {
                finished.insert(d.file, d.total);
            }
        }
    })
    .unwrap();
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        let size = std::fs::metadata(model_dir("tiny-b").join(f))
            .unwrap()
            .len();
        assert_eq!(
            finished.get(f),
            Some(&size),
            "progress reached the end of {f}"
        );
    }
    assert!(
        updates > finished.len(),
        "progress was reported during downloads"
    );
    assert!(hub.file_requests.load(Ordering::SeqCst) >= 6);
    // The files sit in the standard hub cache layout.
    assert!(cache
        .path()
        .join("models--promptloop--tiny-b/snapshots")
        .join(COMMIT)
        .join("config.json")
        .exists());
    let take = model
        .generate(
            &musicgen::GenerationRequest {
                prompt: "drums".into(),
                frames: 4,
                ..Default::default()
            },
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(take.audio.len(), 4 * 640);

    // The server goes away: the second load comes from the cache, downloading nothing.
    drop(hub);
    let mut downloads = 0;
    load(&options, &mut |p| {
        downloads += matches!(p, Progress::Download(_)) as usize
    })
    .unwrap();
    assert_eq!(downloads, 0);
    let offline = HubOptions {
        offline: true,
        ..options
    };
    load(&offline, &mut |_| {}).unwrap();
}

#[test]
fn unreachable_and_not_cached_says_so() {
    let cache = tempfile::tempdir().unwrap();
    // A port nobody listens on: bind, take the address, close.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let options = HubOptions {
        endpoint: Some(format!("http://{addr}")),
        cache_dir: Some(cache.path().to_path_buf()),
        offline: false,
    };
    let msg = load(&options, &mut |_| {}).unwrap_err().to_string();
    assert!(msg.contains("not in the Hugging Face cache"), "{msg}");
    assert!(msg.contains(REPO), "{msg}");
    let offline = HubOptions {
        offline: true,
        ..options
    };
    let msg = load(&offline, &mut |_| {}).unwrap_err().to_string();
    assert!(msg.contains("offline"), "{msg}");
}

#[test]
fn a_repo_without_musicgen_files_is_explained() {
    let cache = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("README.md"), "hello").unwrap();
    let hub = FakeHub::start(empty.path().to_path_buf());
    let options = HubOptions {
        endpoint: Some(hub.endpoint.clone()),
        cache_dir: Some(cache.path().to_path_buf()),
        offline: false,
    };
    let msg = load(&options, &mut |_| {}).unwrap_err().to_string();
    assert!(msg.contains("has no config.json"), "{msg}");
}

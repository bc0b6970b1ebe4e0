//! The built `Promptloop.clap` in a CLAP host: parameters, rates and block
//! sizes, generation through the MIDI trigger, playback at the host rate checked
//! against an independent resampling, loop alignment, MIDI, state, garbage
//! state, a sample-rate change mid-generation, and a real-time check against
//! locks.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use host_tests::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(300);

fn generate_note() -> Note {
    Note {
        frame: 3,
        key: GENERATE_NOTE,
        on: true,
    }
}

fn note(key: u16, on: bool) -> Note {
    Note { frame: 0, key, on }
}

fn take_file(take: &Value) -> PathBuf {
    PathBuf::from(take["file"].as_str().expect("a take names its file"))
}

/// Index of the last non-zero sample, plus one.
fn sounding_len(out: &[f32]) -> usize {
    out.iter().rposition(|s| *s != 0.0).map_or(0, |i| i + 1)
}

/// Plays the selected take with a MIDI note and returns the output.
fn play_note(p: &mut PluginUnderTest, frames: usize, block: u32) -> Vec<f32> {
    let out = p.render(frames, block, &[note(60, true)], None);
    // Let go of the note so the next call starts afresh.
    p.process(1, &[note(60, false)], None);
    p.render(4096, 512, &[], None);
    out
}

/// Waits until a MIDI note plays a clip of `expected` samples (the take at the
/// current host rate), then returns that output.
fn wait_for_clip(p: &mut PluginUnderTest, expected: usize) -> Vec<f32> {
    let start = Instant::now();
    loop {
        let out = play_note(p, expected + 4000, 512);
        if sounding_len(&out) == expected {
            return out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the clip never reached {expected} samples (last {})",
            sounding_len(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that `out` (starting at the take's start) is the take's model-rate
/// WAV resampled to `rate`, against an independent resampling.
fn assert_is_take(out: &[f32], wav: &[f32], rate: f64, context: &str) {
    let expected = (wav.len() as f64 * rate / 32_000.0).round() as usize;
    assert_eq!(sounding_len(out), expected, "{context}: length");
    let reference = resample_periodic(wav, expected);
    // Skip the 5 ms fades at both ends.
    let fade = (0.006 * rate) as usize;
    let (a, b) = (
        &out[fade..expected - fade],
        &reference[fade..expected - fade],
    );
    let corr = correlation(a, b);
    let spec = spectral_error(a, b, rate, 12_000.0);
    eprintln!("{context}: correlation {corr:.6}, spectral error {spec:.4}");
    assert!(corr > 0.9995, "{context}: correlation {corr}");
    assert!(spec < 0.01, "{context}: spectral error {spec}");
}

fn generate_one(p: &mut PluginUnderTest, transport: Option<Transport>) -> (Value, Vec<f32>) {
    let before = p.takes().len();
    p.process(64, &[generate_note()], transport);
    let takes = p.wait_for_takes(before + 1, WAIT, transport);
    let take = takes.last().unwrap().clone();
    let (wav, rate) = read_wav(&take_file(&take));
    assert_eq!(rate, 32_000);
    (take, wav)
}

#[test]
fn loads_without_work_and_lists_its_parameters() {
    let entry = load_entry();
    let t0 = Instant::now();
    let mut p = PluginUnderTest::new(&entry);
    eprintln!("instantiation took {:?}", t0.elapsed());
    let params = p.params();
    let names: Vec<&str> = params.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(names, ["Gain", "Play mode"], "{params:?}");
    // No take, no model: an empty document with the default settings.
    let doc = p.document();
    assert_eq!(doc["version"], 2);
    assert_eq!(doc["takes"], json!([]));
    assert_eq!(doc["settings"]["length"], json!({"bars": 4.0}));
}

#[test]
fn silent_and_finite_at_every_rate_and_block_size() {
    let entry = load_entry();
    let mut p = PluginUnderTest::new(&entry);
    for rate in [44_100.0, 48_000.0, 96_000.0] {
        for block in [1u32, 7, 64, 512, 4096] {
            p.activate(rate, block);
            let t = Transport {
                playing: true,
                ..Transport::stopped(120.0)
            };
            let out = p.render(block as usize * 3 + 5, block, &[note(60, true)], Some(t));
            assert!(out.iter().all(|s| *s == 0.0), "no take: silence");
        }
    }
}

#[test]
fn a_take_plays_at_the_host_rate_at_every_rate() {
    let entry = load_entry();
    let data = tempfile::tempdir().unwrap();
    let mut p = PluginUnderTest::new(&entry);
    p.activate(44_100.0, 512);
    p.configure(
        &tiny_model(),
        data.path(),
        "dusty boom-bap drums",
        json!({"seconds": 2.0}),
        7,
    );
    let t0 = Instant::now();
    let (take, wav) = generate_one(&mut p, None);
    eprintln!("2 s take through the plugin in {:?}", t0.elapsed());
    assert_eq!(take["samples"], 64_000);
    assert_eq!(take["sample_rate"], 32_000);
    assert_eq!(take["request"]["seed"], 7);
    assert_eq!(take["request"]["prompt"], "dusty boom-bap drums");
    assert_eq!(take["engine_version"], "0.1.0");
    assert!(take_file(&take).starts_with(data.path()));
    assert_eq!(wav.len(), 64_000);
    assert_eq!(
        p.document()["selected"],
        take["id"],
        "the new take is selected"
    );

    for (rate, block) in [(44_100.0, 512u32), (48_000.0, 1), (96_000.0, 4096)] {
        p.activate(rate, block.max(512));
        let expected = (2.0 * rate) as usize;
        wait_for_clip(&mut p, expected);
        p.activate(rate, block);
        let out = play_note(&mut p, expected + 2000, block);
        assert_is_take(&out, &wav, rate, &format!("{rate} Hz, blocks of {block}"));
    }
}

#[test]
fn midi_note_off_fades_the_take_out() {
    let entry = load_entry();
    let data = tempfile::tempdir().unwrap();
    let mut p = PluginUnderTest::new(&entry);
    p.activate(48_000.0, 256);
    p.configure(
        &tiny_model(),
        data.path(),
        "pads",
        json!({"seconds": 2.0}),
        1,
    );
    generate_one(&mut p, None);
    wait_for_clip(&mut p, 96_000);
    let on = p.render(24_000, 256, &[note(64, true)], None);
    assert!(on[12_000..].iter().any(|s| *s != 0.0));
    let off = p.render(24_000, 256, &[note(64, false)], None);
    // 30 ms release, then silence.
    assert!(off[..100].iter().any(|s| *s != 0.0));
    assert!(off[(0.031 * 48_000.0) as usize..].iter().all(|s| *s == 0.0));
}

#[test]
fn a_stereo_take_plays_different_sides_and_a_mono_take_the_same() {
    let entry = load_entry();
    let data = tempfile::tempdir().unwrap();
    let mut p = PluginUnderTest::new(&entry);
    p.activate(44_100.0, 512);
    p.configure(
        &fixture_model("tiny-stereo"),
        data.path(),
        "pads",
        json!({"seconds": 1.0}),
        3,
    );
    p.process(64, &[generate_note()], None);
    let takes = p.wait_for_takes(1, WAIT, None);
    assert_eq!(takes[0]["channels"], 2, "{}", takes[0]);
    // Play it until the clip at the host rate arrives: 44 100 frames a side.
    let start = Instant::now();
    let [l, r] = loop {
        let [l, r] = p.render_stereo(50_000, 512, &[note(60, true)]);
        p.process(1, &[note(60, false)], None);
        p.render_stereo(4096, 512, &[]);
        if sounding_len(&l) == 44_100 {
            break [l, r];
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no stereo clip");
        std::thread::sleep(Duration::from_millis(50));
    };
    let differ = l
        .iter()
        .zip(&r)
        .filter(|(a, b)| (*a - *b).abs() > 1e-4)
        .count();
    assert!(
        differ > 40_000,
        "the sides differ in {differ} of 44100 frames"
    );
    assert!(r.iter().any(|s| *s != 0.0));
    // A mono model's take: the same on both sides.
    p.edit_document(|doc| {
        doc["settings"]["model"] = json!({"kind": "local", "path": tiny_model()});
    });
    p.process(64, &[generate_note()], None);
    p.wait_for_takes(2, WAIT, None);
    let start = Instant::now();
    loop {
        let [l, r] = p.render_stereo(50_000, 512, &[note(60, true)]);
        p.process(1, &[note(60, false)], None);
        p.render_stereo(4096, 512, &[]);
        if sounding_len(&l) == 44_100 {
            assert_eq!(l, r, "a mono take sounds the same on both sides");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no mono clip");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn loop_mode_stays_aligned_to_the_song_position() {
    let entry = load_entry();
    let data = tempfile::tempdir().unwrap();
    let mut p = PluginUnderTest::new(&entry);
    let rate = 48_000.0;
    p.activate(rate, 256);
    p.configure(
        &tiny_model(),
        data.path(),
        "techno loop",
        json!({"bars": 1.0}),
        3,
    );
    let stopped = Transport::stopped(120.0);
    let (take, wav) = generate_one(&mut p, Some(stopped));
    // 1 bar of 4/4 at 120 bpm: 2 s.
    assert_eq!(take["bars"], 1.0);
    assert_eq!(take["tempo"], 120.0);
    assert_eq!(take["samples"], 64_000);
    let len = 96_000;
    let reference = resample_periodic(&wav, len);
    p.set_param_in_state("mode", json!({"string": "loop"}));

    let playing_at = |beats: f64| Transport {
        playing: true,
        beats,
        ..Transport::stopped(120.0)
    };
    // Wait for the clip (the state load reloads the takes).
    let start = Instant::now();
    while p
        .render(2048, 256, &[], Some(stopped))
        .iter()
        .all(|s| *s == 0.0)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "loop never sounded"
        );
    }
    let check = |out: &[f32], from: usize, what: &str| {
        let skip = 480; // the 5 ms crossfade
        let expect: Vec<f32> = (skip..out.len())
            .map(|i| reference[(from + i) % len])
            .collect();
        let corr = correlation(&out[skip..], &expect);
        eprintln!("{what}: correlation {corr:.6}");
        assert!(corr > 0.9995, "{what}: correlation {corr}");
    };
    // Playing from beat 1.5: 1.5 of 4 beats into the loop.
    let out = p.render(24_000, 256, &[], Some(playing_at(1.5)));
    check(&out, 36_000, "from beat 1.5");
    // Seek to beat 6 (half-way through the second bar).
    let out = p.render(24_000, 256, &[], Some(playing_at(6.0)));
    check(&out, 48_000, "after a seek to beat 6");
    // A host loop back to beat 0, across the take's own seam.
    let out = p.render(len + 24_000, 512, &[], Some(playing_at(0.0)));
    check(&out, 0, "after a jump to beat 0, over the seam");
    // Another tempo: the take plays at its own length, placed by seconds.
    let slower = Transport {
        tempo: 100.0,
        ..playing_at(2.0)
    };
    let out = p.render(24_000, 256, &[], Some(slower));
    check(&out, 57_600, "at 100 bpm, beat 2 = 1.2 s");
    // Stopped: the loop starts from its start.
    let out = p.render(24_000, 256, &[], Some(stopped));
    check(&out, 0, "stopped");
}

#[test]
fn state_restores_takes_and_a_missing_wav_costs_only_that_take() {
    let entry = load_entry();
    let data = tempfile::tempdir().unwrap();
    let mut a = PluginUnderTest::new(&entry);
    a.activate(48_000.0, 512);
    a.configure(
        &tiny_model(),
        data.path(),
        "bells",
        json!({"seconds": 1.0}),
        11,
    );
    let (first, _) = generate_one(&mut a, None);
    let (second, second_wav) = generate_one(&mut a, None);
    assert_ne!(first["id"], second["id"]);
    let saved = a.save_state();
    drop(a);
    std::fs::remove_file(take_file(&first)).unwrap();

    let mut b = PluginUnderTest::new(&entry);
    b.activate(44_100.0, 512);
    assert!(b.load_state(&saved));
    let doc = b.document();
    assert_eq!(doc["takes"].as_array().unwrap().len(), 2, "metadata kept");
    assert_eq!(doc["selected"], second["id"]);
    assert_eq!(doc["settings"]["prompt"], "bells");
    let out = wait_for_clip(&mut b, 44_100);
    assert_is_take(&out, &second_wav, 44_100.0, "restored take");

    // Selecting the take whose WAV is gone plays nothing and breaks nothing.
    let first_id = first["id"].clone();
    b.edit_document(|doc| doc["selected"] = first_id);
    std::thread::sleep(Duration::from_millis(300));
    let out = play_note(&mut b, 44_100, 512);
    assert!(out.iter().all(|s| *s == 0.0));
    assert_eq!(b.takes().len(), 2);
}

#[test]
fn garbage_state_never_crashes_and_keeps_what_is_valid() {
    let entry = load_entry();
    let data = tempfile::tempdir().unwrap();
    let mut p = PluginUnderTest::new(&entry);
    p.activate(48_000.0, 512);
    p.configure(
        &tiny_model(),
        data.path(),
        "noise",
        json!({"seconds": 0.5}),
        5,
    );
    let (take, _) = generate_one(&mut p, None);
    let good = p.state_json();

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let with_field = |field: Value| {
        let mut s = good.clone();
        s["fields"]["promptloop"] = field;
        state_bytes(&s)
    };
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        random(1),
        random(5000),
        state_bytes(&json!("{")),
        state_bytes(&json!({"params": 5})),
        b"\x05\0\0\0\0\0\0\0{\"par".to_vec(),
        b"\xff\xff\xff\xff\xff\xff\xff\xff{}".to_vec(),
        with_field(json!("{not json")),
        with_field(json!("[1, 2, 3]")),
        with_field(json!(42)),
        with_field(json!("{\"takes\": [{\"id\": 1}], \"settings\": []}")),
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let _ = p.load_state(bytes);
        let out = p.render(2048, 512, &[note(60, true)], None);
        assert!(out.iter().all(|s| s.is_finite()), "case {i}");
        let _ = p.document();
    }
    // One valid take among broken ones: the valid one loads.
    let mut doc: Value =
        serde_json::from_str(good["fields"]["promptloop"].as_str().unwrap()).unwrap();
    let valid = doc["takes"][0].clone();
    doc["takes"] = json!([{"id": "broken", "samples": "many"}, valid, null]);
    let bytes = with_field(Value::String(doc.to_string()));
    assert!(p.load_state(&bytes));
    let takes = p.takes();
    assert_eq!(takes.len(), 1);
    assert_eq!(takes[0]["id"], take["id"]);
}

#[test]
fn a_sample_rate_change_mid_generation_yields_a_clip_at_the_new_rate() {
    let entry = load_entry();
    let data = tempfile::tempdir().unwrap();
    let mut p = PluginUnderTest::new(&entry);
    p.activate(44_100.0, 512);
    p.configure(
        &tiny_model(),
        data.path(),
        "strings",
        json!({"seconds": 8.0}),
        9,
    );
    p.process(64, &[generate_note()], None);
    // The generation has started (or is queued) when the host switches rate.
    std::thread::sleep(Duration::from_millis(50));
    p.activate(96_000.0, 1024);
    let takes = p.wait_for_takes(1, WAIT, None);
    let (wav, _) = read_wav(&take_file(&takes[0]));
    let out = wait_for_clip(&mut p, 8 * 96_000);
    assert_is_take(&out, &wav, 96_000.0, "after the rate change");
}

#[test]
fn process_never_waits_for_the_locks_of_the_gui_and_workers() {
    let entry = load_entry();
    let data = tempfile::tempdir().unwrap();
    let mut p = PluginUnderTest::new(&entry);
    p.activate(48_000.0, 512);
    p.configure(
        &tiny_model(),
        data.path(),
        "drone",
        json!({"seconds": 1.0}),
        2,
    );
    generate_one(&mut p, None);
    wait_for_clip(&mut p, 48_000);
    p.set_param_in_state("mode", json!({"string": "loop"}));
    let hold = Duration::from_millis(1500);
    let holder = std::thread::spawn(move || hold_locks(hold));
    std::thread::sleep(Duration::from_millis(100));
    // Blocks of 512 frames (10.7 ms) while every lock is held, notes included.
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut blocks = 0;
    while start.elapsed() < Duration::from_millis(1000) {
        let t0 = Instant::now();
        p.process(512, &[generate_note(), note(61, true)], None);
        worst = worst.max(t0.elapsed());
        blocks += 1;
    }
    holder.join().unwrap();
    eprintln!("{blocks} blocks while locks were held; slowest {worst:?}");
    // A block that waited for a lock would take the rest of the 1.5 s hold.
    assert!(
        worst < Duration::from_millis(300),
        "slowest block {worst:?}"
    );
    assert!(blocks > 20);
}

/// Calls the plugin's `promptloop_hold_locks` test hook.
fn hold_locks(d: Duration) {
    let path: &Path = &bundle("Promptloop.clap");
    // SAFETY: our own library, already loaded; a plain C function.
    unsafe {
        let lib = libloading::Library::new(path).unwrap();
        let f: libloading::Symbol<unsafe extern "C" fn(u32)> =
            lib.get(b"promptloop_hold_locks").unwrap();
        f(d.as_millis() as u32);
    }
}

#[test]
fn a_take_is_heard_while_it_is_made() {
    let entry = load_entry();
    let data = tempfile::tempdir().unwrap();
    let mut p = PluginUnderTest::new(&entry);
    p.activate(48_000.0, 512);
    p.configure(
        &tiny_model(),
        data.path(),
        "pads",
        json!({"seconds": 20.0}),
        9,
    );
    p.edit_document(|doc| doc["settings"]["hear_while_made"] = true.into());
    p.process(64, &[generate_note()], None);
    // Sound comes before the take is done, and the whole take plays through.
    let start = Instant::now();
    let mut heard_before_done = 0usize;
    let mut heard = 0usize;
    loop {
        let [l, r] = p.process(512, &[], None);
        assert!(l.iter().chain(r).all(|s| s.is_finite()));
        let n = l.iter().filter(|s| **s != 0.0).count();
        if heard == 0 && n > 0 {
            eprintln!(
                "first sound {:?} after the generate note (tiny model, f32)",
                start.elapsed()
            );
        }
        heard += n;
        p.pump();
        let done = !p.takes().is_empty();
        if !done {
            heard_before_done += n;
        } else if n == 0 && heard > 0 {
            break;
        }
        assert!(start.elapsed() < WAIT, "no end");
    }
    eprintln!("{heard_before_done} of {heard} samples heard before the take was done");
    assert!(
        heard_before_done > 0,
        "the take was heard while it was made"
    );
    // 20 s at 48 kHz, less a fade, played through.
    assert!(heard > 900_000, "{heard} samples heard");
}

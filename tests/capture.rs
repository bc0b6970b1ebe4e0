//! Recording in the built `Promptloop.clap`: N bars of the main input from the
//! next bar line (at several rates and block sizes, started mid-bar, armed
//! while stopped, through a tempo change, with the input disconnected, across
//! a sample-rate change), and a melody recorded from MIDI notes.

use std::time::{Duration, Instant};

use host_tests::*;
use serde_json::{json, Value};

const CAPTURE_NOTE: u16 = 1;
const MELODY_NOTE: u16 = 2;

/// The input the host plays in: a value no other frame has, left, and its
/// negative, right.
fn input_at(frame: u64) -> (f32, f32) {
    let v = ((frame % 4_000_000) as f32 + 1.0) * 2.5e-7;
    (v, -v)
}

fn frame_of(left: f32) -> u64 {
    (left / 2.5e-7 - 1.0).round() as u64
}

/// Drives the plugin block by block with the input connected (or not), the
/// transport advancing while it plays.
struct Drive {
    p: PluginUnderTest,
    t: Transport,
    block: u32,
    frame: u64,
    connected: bool,
    /// (frame, beat) where the transport last started or changed tempo.
    anchor: (u64, f64),
}

impl Drive {
    fn new(
        rate: f64,
        block: u32,
        tempo: f64,
        data: &std::path::Path,
        model: &std::path::Path,
    ) -> Self {
        let entry = load_entry();
        let mut p = PluginUnderTest::new(&entry);
        p.activate(rate, block);
        p.configure(model, data, "", json!({"bars": 1.0}), 1);
        Self {
            p,
            t: Transport::stopped(tempo),
            block,
            frame: 0,
            connected: true,
            anchor: (0, 0.0),
        }
    }

    fn step(&mut self, notes: &[Note]) {
        let n = self.block as usize;
        let (l, r): (Vec<f32>, Vec<f32>) = (0..n as u64).map(|i| input_at(self.frame + i)).unzip();
        let input = self.connected.then_some([&l[..], &r[..]]);
        self.p
            .process_with_input(self.block, notes, Some(self.t), input);
        if self.t.playing {
            self.t.beats += n as f64 * self.t.tempo / 60.0 / self.p.sample_rate;
        }
        self.frame += n as u64;
    }

    fn play_from(&mut self, beats: f64) {
        self.t.playing = true;
        self.t.beats = beats;
        self.anchor = (self.frame, beats);
    }

    fn set_tempo(&mut self, tempo: f64) {
        self.anchor = (self.frame, self.t.beats);
        self.t.tempo = tempo;
    }

    /// The song position at a frame, at the tempo since the anchor.
    fn beat_at(&self, frame: u64) -> f64 {
        let (f0, b0) = self.anchor;
        b0 + (frame as f64 - f0 as f64) * self.t.tempo / 60.0 / self.p.sample_rate
    }

    /// Arms a recording with its MIDI note, then lets the I/O worker take it
    /// (it arms in the background) while the host stays where it is.
    fn arm(&mut self, note: u16) {
        self.step(&[Note {
            frame: 0,
            key: note,
            on: true,
        }]);
        self.step(&[Note {
            frame: 0,
            key: note,
            on: false,
        }]);
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            self.step(&[]);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Processes until the document holds `count` takes.
    fn until_takes(&mut self, count: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            for _ in 0..16 {
                self.step(&[]);
            }
            self.p.pump();
            let takes = self.p.takes();
            if takes.len() >= count {
                return takes;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no take; document: {}",
                self.p.document()
            );
        }
    }
}

/// The take's stereo WAV: (left, right, rate).
fn read_stereo(take: &Value) -> (Vec<f32>, Vec<f32>, u32) {
    let path = take["file"].as_str().unwrap();
    let mut r = hound::WavReader::open(path).unwrap();
    assert_eq!(r.spec().channels, 2, "a capture is stereo");
    let rate = r.spec().sample_rate;
    let s: Vec<f32> = r.samples::<f32>().map(Result::unwrap).collect();
    let (l, rr) = s.chunks(2).map(|f| (f[0], f[1])).unzip();
    (l, rr, rate)
}

/// Checks a captured take is exactly `seconds` of the input from a bar line.
fn assert_bars_of_input(d: &Drive, take: &Value, seconds: f64, context: &str) {
    assert_eq!(take["source"]["kind"], "captured", "{context}");
    let (l, r, rate) = read_stereo(take);
    assert_eq!(
        rate as f64, d.p.sample_rate,
        "{context}: at the host's rate"
    );
    let expected = (seconds * rate as f64).round() as usize;
    assert_eq!(l.len(), expected, "{context}: length");
    let start = frame_of(l[0]);
    for (i, (a, b)) in l.iter().zip(&r).enumerate() {
        let want = input_at(start + i as u64);
        assert_eq!((*a, *b), want, "{context}: frame {i} of the take");
    }
    let beat = d.beat_at(start);
    let off_bar = (beat / 4.0 - (beat / 4.0).round()).abs() * 4.0;
    let frames_off = off_bar * 60.0 / 120.0 * rate as f64;
    assert!(
        frames_off < 1.0,
        "{context}: starts {frames_off:.2} frames from a bar line (beat {beat})"
    );
}

#[test]
fn a_capture_is_exactly_n_bars_of_the_input_from_the_bar_line() {
    for (rate, block) in [(44_100.0, 64), (48_000.0, 333), (96_000.0, 1024)] {
        let data = tempfile::tempdir().unwrap();
        let mut d = Drive::new(rate, block, 120.0, data.path(), &tiny_model());
        // Playing, mid-bar (beat 2.3 of bar 1), when it is armed.
        d.play_from(2.3);
        d.arm(CAPTURE_NOTE);
        let takes = d.until_takes(1);
        let context = format!("{rate} Hz, blocks of {block}");
        // 1 bar of 4/4 at 120 bpm: 2 s.
        assert_bars_of_input(&d, &takes[0], 2.0, &context);
        assert_eq!(takes[0]["bars"], 1.0, "{context}");
        assert_eq!(takes[0]["tempo"], 120.0, "{context}");
    }
}

#[test]
fn armed_while_stopped_it_starts_with_the_host_and_a_tempo_change_keeps_the_length() {
    let data = tempfile::tempdir().unwrap();
    let mut d = Drive::new(48_000.0, 256, 120.0, data.path(), &tiny_model());
    d.arm(CAPTURE_NOTE);
    assert!(d.p.takes().is_empty(), "nothing while the host is stopped");
    // Play from beat 3: the bar line at beat 4 is half a second on.
    d.play_from(3.0);
    let bar_line = d.frame + 24_000;
    while d.frame < bar_line + 48_000 {
        d.step(&[]);
    }
    // A second into the recording the tempo drops to 90: the length was fixed
    // at the bar line, from 120 bpm.
    d.set_tempo(90.0);
    let takes = d.until_takes(1);
    let (l, _, _) = read_stereo(&takes[0]);
    assert_eq!(l.len(), 96_000, "1 bar at the starting 120 bpm");
    assert_eq!(frame_of(l[0]), bar_line, "starts at the bar line");
    assert_eq!(takes[0]["tempo"], 120.0);
}

#[test]
fn a_disconnected_input_is_captured_as_silence() {
    let data = tempfile::tempdir().unwrap();
    let mut d = Drive::new(44_100.0, 512, 120.0, data.path(), &tiny_model());
    d.connected = false;
    d.play_from(0.5);
    d.arm(CAPTURE_NOTE);
    let takes = d.until_takes(1);
    let (l, r, _) = read_stereo(&takes[0]);
    assert_eq!(l.len(), 88_200);
    assert!(
        l.iter().chain(&r).all(|s| *s == 0.0),
        "silence, not an error"
    );
}

#[test]
fn a_sample_rate_change_during_a_capture_ends_it_and_the_next_one_works() {
    let data = tempfile::tempdir().unwrap();
    let mut d = Drive::new(48_000.0, 512, 120.0, data.path(), &tiny_model());
    d.play_from(3.9);
    d.arm(CAPTURE_NOTE);
    // Recording now; the host switches to 44.1 kHz half-way.
    d.p.activate(44_100.0, 512);
    let until = d.frame + 200_000;
    while d.frame < until {
        d.step(&[]);
    }
    d.p.pump();
    assert!(
        d.p.takes().is_empty(),
        "the interrupted capture makes no take"
    );
    d.anchor = (d.frame, d.t.beats);
    d.arm(CAPTURE_NOTE);
    let takes = d.until_takes(1);
    assert_bars_of_input(&d, &takes[0], 2.0, "after the rate change");
}

#[test]
fn a_melody_played_in_over_midi_conditions_a_melody_models_take() {
    let data = tempfile::tempdir().unwrap();
    let model = test_support::fixture_model("tiny-melody");
    let mut d = Drive::new(48_000.0, 480, 120.0, data.path(), &model);
    d.connected = false;
    d.arm(MELODY_NOTE);
    d.play_from(3.0);
    // The bar line is at beat 4, 0.5 s on; notes in seconds after it.
    let bar_line = d.frame + 24_000;
    let sent = [(0.1, 0.5, 60u16), (0.5, 1.0, 64), (1.2, 2.5, 67)];
    let mut events: Vec<(u64, u16, bool)> = sent
        .iter()
        .flat_map(|&(on, off, key)| {
            let at = |s: f64| bar_line + (s * 48_000.0) as u64;
            [(at(on), key, true), (at(off), key, false)]
        })
        .collect();
    events.sort();
    let start = Instant::now();
    loop {
        let (from, to) = (d.frame, d.frame + d.block as u64);
        let notes: Vec<Note> = events
            .iter()
            .filter(|(f, _, _)| (from..to).contains(f))
            .map(|&(f, key, on)| Note {
                frame: (f - from) as u32,
                key,
                on,
            })
            .collect();
        d.step(&notes);
        d.p.pump();
        if d.frame % 48_000 < d.block as u64 && !d.p.takes().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no take: {}",
            d.p.document()
        );
    }
    let doc = d.p.document();
    let melody = &doc["settings"]["melody"];
    assert_eq!(melody["kind"], "notes", "{doc}");
    assert_eq!(melody["seconds"], 2.0, "one bar at 120 bpm");
    let got: Vec<(f64, f64, u64)> = melody["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["start_s"].as_f64().unwrap(),
                n["end_s"].as_f64().unwrap(),
                n["pitch"].as_u64().unwrap(),
            )
        })
        .collect();
    // The last note was still held at the end: it ends with the recording.
    let want = [(0.1, 0.5, 60), (0.5, 1.0, 64), (1.2, 2.0, 67)];
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g.0 - w.0).abs() < 1.0 / 48_000.0 && (g.1 - w.1).abs() < 1.0 / 48_000.0,
            "{got:?}"
        );
        assert_eq!(g.2, w.2);
    }
    // The same chroma as the engine's notes API gives for the notes sent.
    let config = musicgen::chroma::ChromaConfig::default();
    let notes = |v: &[(f64, f64, u64)]| -> Vec<musicgen::chroma::Note> {
        v.iter()
            .map(|&(s, e, p)| musicgen::chroma::Note {
                start_s: s,
                end_s: e,
                pitch: p as u8,
            })
            .collect()
    };
    let frames = config.frames_for(2 * 32_000);
    assert_eq!(
        musicgen::chroma::chroma_from_notes(&config, &notes(&got), frames).unwrap(),
        musicgen::chroma::chroma_from_notes(&config, &notes(&want), frames).unwrap()
    );
    let takes = d.p.takes();
    assert_eq!(
        takes[0]["melody"]["kind"], "notes",
        "the take follows the melody"
    );
}

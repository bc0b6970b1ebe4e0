//! A small CLAP host, written with clack-host, that loads the built
//! `Promptloop.clap` the way a DAW does: instantiate, activate at a sample rate
//! and block size, send notes and transport, process blocks, save and load
//! state. The host-level tests in `tests/` drive the plugin through it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clack_extensions::gui::{GuiApiType, GuiConfiguration, PluginGui};
use clack_extensions::params::{ParamInfoBuffer, PluginParams};
use clack_extensions::state::PluginState;
use clack_host::events::event_types::{NoteOffEvent, NoteOnEvent, TransportEvent};
use clack_host::events::{EventFlags, EventHeader, Match, Pckn};
use clack_host::prelude::*;
use clack_host::utils::FixedPoint;
use serde_json::Value;

/// The plugin's CLAP id.
pub const PLUGIN_ID: &str = "com.promptloop.promptloop";
/// The note that starts a generation.
pub const GENERATE_NOTE: u16 = 0;

pub use test_support::{fixture_model, tiny_model, wait_for, workspace, Xvfb};

/// A built bundle (`Promptloop.clap`, `Promptloop.vst3`). Panics with the
/// command that builds it when it is missing.
pub fn bundle(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let path = target.join("bundled").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask test`, which builds the bundles before the tests",
        path.display()
    );
    path
}

/// Loads the plugin library, once per test process, and keeps it loaded as a
/// DAW does: a test thread that ends after the last test let go of the library
/// would otherwise run the thread-local destructors the plugin's code left on
/// it (its locks park threads) from an unloaded library.
pub fn load_entry() -> PluginEntry {
    static ENTRY: std::sync::OnceLock<PluginEntry> = std::sync::OnceLock::new();
    ENTRY
        .get_or_init(|| {
            let path = bundle("Promptloop.clap");
            // SAFETY: the bundle is our own plugin, built by `cargo xtask test`.
            unsafe { PluginEntry::load(&path) }.expect("the .clap loads")
        })
        .clone()
}

/// Flags the plugin raises through the host callbacks.
#[derive(Default)]
pub struct HostFlags {
    pub callback_requested: AtomicBool,
    pub restart_requested: AtomicBool,
}

pub struct TestShared<'a> {
    flags: &'a HostFlags,
}

impl<'a> SharedHandler<'a> for TestShared<'a> {
    fn request_restart(&self) {
        self.flags.restart_requested.store(true, Ordering::SeqCst);
    }
    fn request_process(&self) {}
    fn request_callback(&self) {
        self.flags.callback_requested.store(true, Ordering::SeqCst);
    }
}

impl clack_extensions::gui::HostGuiImpl for TestShared<'_> {
    fn resize_hints_changed(&self) {}
    fn request_resize(
        &self,
        _new_size: clack_extensions::gui::GuiSize,
    ) -> Result<(), clack_host::prelude::HostError> {
        Ok(())
    }
    fn request_show(&self) -> Result<(), clack_host::prelude::HostError> {
        Ok(())
    }
    fn request_hide(&self) -> Result<(), clack_host::prelude::HostError> {
        Ok(())
    }
    fn closed(&self, _was_destroyed: bool) {}
}

pub struct TestHost;

impl HostHandlers for TestHost {
    type Shared<'a> = TestShared<'a>;
    type MainThread<'a> = ();
    type AudioProcessor<'a> = ();

    fn declare_extensions(builder: &mut HostExtensions<Self>, _shared: &Self::Shared<'_>) {
        builder.register::<clack_extensions::gui::HostGui>();
    }
}

/// What the host's transport says during a block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transport {
    pub playing: bool,
    pub tempo: f64,
    pub beats: f64,
    pub numerator: u16,
    pub denominator: u16,
}

impl Transport {
    pub fn stopped(tempo: f64) -> Self {
        Self {
            playing: false,
            tempo,
            beats: 0.0,
            numerator: 4,
            denominator: 4,
        }
    }

    fn event(&self) -> TransportEvent {
        use clack_host::events::event_types::TransportFlags;
        let mut flags = TransportFlags::HAS_TEMPO
            | TransportFlags::HAS_BEATS_TIMELINE
            | TransportFlags::HAS_SECONDS_TIMELINE
            | TransportFlags::HAS_TIME_SIGNATURE;
        if self.playing {
            flags |= TransportFlags::IS_PLAYING;
        }
        let beats_per_bar = self.numerator as f64 * 4.0 / self.denominator as f64;
        let bar = (self.beats / beats_per_bar).floor();
        TransportEvent {
            header: EventHeader::new_core(0, EventFlags::empty()),
            flags,
            song_pos_beats: FixedPoint::from_float(self.beats),
            song_pos_seconds: FixedPoint::from_float(self.beats * 60.0 / self.tempo),
            tempo: self.tempo,
            tempo_inc: 0.0,
            loop_start_beats: FixedPoint::from_int(0),
            loop_end_beats: FixedPoint::from_int(0),
            loop_start_seconds: FixedPoint::from_int(0),
            loop_end_seconds: FixedPoint::from_int(0),
            bar_start: FixedPoint::from_float(bar * beats_per_bar),
            bar_number: bar as i32,
            time_signature_numerator: self.numerator,
            time_signature_denominator: self.denominator,
        }
    }
}

/// A note for a block: `(frame, key, on)`.
#[derive(Debug, Clone, Copy)]
pub struct Note {
    pub frame: u32,
    pub key: u16,
    pub on: bool,
}

/// One instance of the plugin, loaded and driven as a DAW would.
pub struct PluginUnderTest {
    // Dropped in field order: the instance before the flags it borrows.
    instance: PluginInstance<TestHost>,
    processor: Option<StartedPluginAudioProcessor<TestHost>>,
    pub sample_rate: f64,
    pub max_block: u32,
    out: [Vec<f32>; 2],
    inp: [Vec<f32>; 2],
    _flags: Box<HostFlags>,
}

impl PluginUnderTest {
    pub fn new(entry: &PluginEntry) -> Self {
        let flags = Box::<HostFlags>::default();
        // SAFETY: the flags are boxed and outlive the instance (dropped after it).
        let flags_ref: &'static HostFlags = unsafe { &*(flags.as_ref() as *const HostFlags) };
        let info = HostInfo::new(
            "Promptloop test host",
            "Promptloop",
            "https://invalid",
            "1.0",
        )
        .expect("host info");
        let id = std::ffi::CString::new(PLUGIN_ID).unwrap();
        let instance = PluginInstance::<TestHost>::new(
            move |_| TestShared { flags: flags_ref },
            |_| (),
            entry,
            &id,
            &info,
        )
        .expect("the plugin instantiates");
        Self {
            instance,
            processor: None,
            sample_rate: 0.0,
            max_block: 0,
            out: [Vec::new(), Vec::new()],
            inp: [Vec::new(), Vec::new()],
            _flags: flags,
        }
    }

    /// Activates (deactivating first if needed) and starts processing.
    pub fn activate(&mut self, sample_rate: f64, max_block: u32) {
        self.deactivate();
        let config = PluginAudioConfiguration {
            sample_rate,
            min_frames_count: 1,
            max_frames_count: max_block,
        };
        let stopped = self
            .instance
            .activate(|_, _| (), config)
            .expect("the plugin activates");
        self.processor = Some(stopped.start_processing().expect("processing starts"));
        self.sample_rate = sample_rate;
        self.max_block = max_block;
        self.out = [vec![0.0; max_block as usize], vec![0.0; max_block as usize]];
        self.inp = [vec![0.0; max_block as usize], vec![0.0; max_block as usize]];
    }

    pub fn deactivate(&mut self) {
        if let Some(p) = self.processor.take() {
            self.instance.deactivate(p.stop_processing());
        }
    }

    /// Runs the plugin's main-thread callback if it asked for one.
    pub fn pump(&mut self) {
        if self._flags.callback_requested.swap(false, Ordering::SeqCst) {
            self.instance.call_on_main_thread_callback();
        }
    }

    /// Processes one block of `frames` and returns the two output channels.
    /// The main input is left unconnected, as a DAW with nothing routed in.
    pub fn process(
        &mut self,
        frames: u32,
        notes: &[Note],
        transport: Option<Transport>,
    ) -> [&[f32]; 2] {
        self.process_with_input(frames, notes, transport, None)
    }

    /// [`PluginUnderTest::process`] with `input` on the main input port (both
    /// sides, `frames` samples each).
    pub fn process_with_input(
        &mut self,
        frames: u32,
        notes: &[Note],
        transport: Option<Transport>,
        input: Option<[&[f32]; 2]>,
    ) -> [&[f32]; 2] {
        assert!(frames <= self.max_block && frames > 0);
        let processor = self.processor.as_mut().expect("activate first");
        let mut events = EventBuffer::new();
        for n in notes {
            let pckn = Pckn::new(0u16, 0u16, n.key, Match::<u32>::All);
            if n.on {
                events.push(&NoteOnEvent::new(n.frame, pckn, 1.0));
            } else {
                events.push(&NoteOffEvent::new(n.frame, pckn, 0.0));
            }
        }
        events.sort();
        let input_events = InputEvents::from_buffer(&events);
        let mut out_events = EventBuffer::new();
        let mut output_events = OutputEvents::from_buffer(&mut out_events);
        let mut in_ports = AudioPorts::with_capacity(2, 1);
        let inputs = match input {
            Some([a, b]) => {
                let [il, ir] = &mut self.inp;
                il[..frames as usize].copy_from_slice(&a[..frames as usize]);
                ir[..frames as usize].copy_from_slice(&b[..frames as usize]);
                in_ports.with_input_buffers([AudioPortBuffer {
                    latency: 0,
                    channels: AudioPortBufferType::f32_input_only(
                        [
                            InputChannel::variable(&mut il[..frames as usize]),
                            InputChannel::variable(&mut ir[..frames as usize]),
                        ]
                        .into_iter(),
                    ),
                }])
            }
            None => InputAudioBuffers::empty(),
        };
        let mut ports = AudioPorts::with_capacity(2, 1);
        let [l, r] = &mut self.out;
        let (l, r) = (&mut l[..frames as usize], &mut r[..frames as usize]);
        l.fill(f32::NAN);
        r.fill(f32::NAN);
        let mut outputs = ports.with_output_buffers([AudioPortBuffer {
            latency: 0,
            channels: AudioPortBufferType::f32_output_only([l, r].into_iter()),
        }]);
        let transport_event = transport.map(|t| t.event());
        processor
            .process(
                &inputs,
                &mut outputs,
                &input_events,
                &mut output_events,
                None,
                transport_event.as_ref(),
            )
            .expect("process succeeds");
        let n = frames as usize;
        [&self.out[0][..n], &self.out[1][..n]]
    }

    /// Processes `total` frames in blocks of `block` with no transport and
    /// returns both channels (a stereo take's differ).
    pub fn render_stereo(
        &mut self,
        total: usize,
        block: u32,
        notes_at_start: &[Note],
    ) -> [Vec<f32>; 2] {
        let mut out = [Vec::with_capacity(total), Vec::with_capacity(total)];
        let block = block.min(self.max_block);
        let mut first = true;
        while out[0].len() < total {
            let n = (total - out[0].len()).min(block as usize) as u32;
            let notes = if first { notes_at_start } else { &[] };
            first = false;
            let [l, r] = self.process(n, notes, None);
            assert!(l.iter().chain(r).all(|s| s.is_finite()), "finite output");
            out[0].extend_from_slice(l);
            out[1].extend_from_slice(r);
        }
        out
    }

    /// Processes `total` frames in blocks of `block` (the last may be shorter),
    /// with the transport advancing when playing; returns the left channel.
    pub fn render(
        &mut self,
        total: usize,
        block: u32,
        notes_at_start: &[Note],
        mut transport: Option<Transport>,
    ) -> Vec<f32> {
        let mut out = Vec::with_capacity(total);
        let block = block.min(self.max_block);
        let mut first = true;
        while out.len() < total {
            let n = (total - out.len()).min(block as usize) as u32;
            let notes = if first { notes_at_start } else { &[] };
            first = false;
            let [l, r] = self.process(n, notes, transport);
            assert_eq!(l, r, "both channels carry the take");
            assert!(l.iter().all(|s| s.is_finite()), "finite output");
            out.extend_from_slice(l);
            if let Some(t) = transport.as_mut() {
                if t.playing {
                    t.beats += n as f64 * t.tempo / 60.0 / self.sample_rate;
                }
            }
        }
        out
    }

    pub fn save_state(&mut self) -> Vec<u8> {
        let state: PluginState = self.extension("state");
        let mut buf = Vec::new();
        state
            .save(&self.instance.plugin_handle(), &mut buf)
            .expect("state saves");
        buf
    }

    pub fn load_state(&mut self, bytes: &[u8]) -> bool {
        let state: PluginState = self.extension("state");
        let mut reader = bytes;
        let ok = state
            .load(&self.instance.plugin_handle(), &mut reader)
            .is_ok();
        self.pump();
        ok
    }

    /// The saved state as JSON (nice-plug's CLAP state: a little-endian u64
    /// length, then the JSON).
    pub fn state_json(&mut self) -> Value {
        let bytes = self.save_state();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 8, "length prefix");
        serde_json::from_slice(&bytes[8..]).expect("JSON state")
    }

    /// Loads a JSON state (adding the length prefix).
    pub fn load_state_json(&mut self, state: &Value) -> bool {
        self.load_state(&state_bytes(state))
    }

    /// The session document under the state's `fields.promptloop` key.
    pub fn document(&mut self) -> Value {
        let state = self.state_json();
        let raw = state["fields"]["promptloop"]
            .as_str()
            .expect("the promptloop field");
        serde_json::from_str(raw).expect("the document is JSON")
    }

    /// Changes the session document through a state save/edit/load round trip,
    /// as a host restoring a project (or a preset) does.
    pub fn edit_document(&mut self, edit: impl FnOnce(&mut Value)) {
        let mut state = self.state_json();
        let mut doc: Value =
            serde_json::from_str(state["fields"]["promptloop"].as_str().unwrap()).unwrap();
        edit(&mut doc);
        state["fields"]["promptloop"] = Value::String(doc.to_string());
        assert!(self.load_state_json(&state));
    }

    /// Points the instance at a model folder and sets the generation settings
    /// the tests use (seconds, f32 for exactness, a fixed seed).
    pub fn configure(&mut self, model: &Path, data: &Path, prompt: &str, length: Value, seed: u64) {
        let model = model.to_path_buf();
        let data = data.to_path_buf();
        self.edit_document(|doc| {
            doc["settings"]["data_folder"] = serde_json::json!(data);
            let s = &mut doc["settings"];
            s["prompt"] = prompt.into();
            s["model"] = serde_json::json!({"kind": "local", "path": model});
            s["precision"] = "f32".into();
            s["device"] = "cpu".into();
            s["length"] = length;
            s["seed"] = seed.into();
            // Tests that want a take heard while it is made turn it on.
            s["hear_while_made"] = false.into();
        });
    }

    /// Sets a parameter through the state, as a host restoring a project does.
    pub fn set_param_in_state(&mut self, id: &str, value: Value) {
        let mut state = self.state_json();
        state["params"][id] = value;
        assert!(self.load_state_json(&state));
    }

    /// The takes in the document.
    pub fn takes(&mut self) -> Vec<Value> {
        self.document()["takes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Processes blocks (as a running host does) until the document holds
    /// `count` takes and the selected one is playable, or panics after `timeout`.
    pub fn wait_for_takes(
        &mut self,
        count: usize,
        timeout: Duration,
        transport: Option<Transport>,
    ) -> Vec<Value> {
        let start = Instant::now();
        let block = self.max_block.min(512);
        loop {
            for _ in 0..8 {
                self.process(block, &[], transport);
            }
            self.pump();
            let takes = self.takes();
            if takes.len() >= count {
                // The clip reaches the audio thread right after the take is saved.
                std::thread::sleep(Duration::from_millis(100));
                self.process(block, &[], transport);
                return takes;
            }
            assert!(
                start.elapsed() < timeout,
                "no take after {timeout:?}; document: {}",
                self.document()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One of the plugin's extensions, which the test needs it to have.
    fn extension<
        E: clack_host::extensions::Extension<
            ExtensionSide = clack_host::extensions::PluginExtensionSide,
        >,
    >(
        &self,
        what: &str,
    ) -> E {
        self.instance
            .plugin_shared_handle()
            .get_extension()
            .unwrap_or_else(|| panic!("the plugin has no {what} extension"))
    }

    /// Opens the editor embedded in the X11 window `parent` (CLAP's gui
    /// extension), as a Linux DAW does; returns the size the plugin asked for.
    pub fn open_editor_x11(&mut self, parent: u32) -> (u32, u32) {
        let gui: PluginGui = self.extension("gui");
        let handle = self.instance.plugin_handle();
        let config = GuiConfiguration {
            api_type: GuiApiType::X11,
            is_floating: false,
        };
        assert!(gui.is_api_supported(&handle, config), "X11 embedding");
        gui.create(&handle, config).expect("the editor is created");
        let size = gui.get_size(&handle).expect("a size");
        // SAFETY: `parent` is a live window of the test's X connection.
        unsafe {
            gui.set_parent(
                &handle,
                clack_extensions::gui::Window::from_x11_handle(parent as _),
            )
        }
        .expect("the editor embeds");
        gui.show(&handle).expect("the editor shows");
        (size.width, size.height)
    }

    /// Closes the editor opened by `open_editor_x11`.
    pub fn close_editor(&mut self) {
        let gui: PluginGui = self.extension("gui");
        let handle = self.instance.plugin_handle();
        gui.destroy(&handle);
    }

    /// The plugin's parameters: `(id, name, min, max, default)`.
    pub fn params(&mut self) -> Vec<(u32, String, f64, f64, f64)> {
        let params: PluginParams = self.extension("params");
        let handle = self.instance.plugin_handle();
        let mut buffer = ParamInfoBuffer::new();
        (0..params.count(&handle))
            .filter_map(|i| {
                let info = params.get_info(&handle, i, &mut buffer)?;
                Some((
                    info.id.get(),
                    String::from_utf8_lossy(info.name).into_owned(),
                    info.min_value,
                    info.max_value,
                    info.default_value,
                ))
            })
            .collect()
    }
}

impl Drop for PluginUnderTest {
    fn drop(&mut self) {
        self.deactivate();
    }
}

/// A JSON state as nice-plug's CLAP state bytes.
pub fn state_bytes(state: &Value) -> Vec<u8> {
    let json = serde_json::to_vec(state).unwrap();
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes
}

/// The plugin library's process-wide counters: model loads, models resident,
/// jobs done, cancelled, failed (see `promptloop_counters`).
pub fn counters() -> [u64; 5] {
    let path = bundle("Promptloop.clap");
    // SAFETY: the library is already loaded by the entry; this takes another
    // reference to it and calls a plain C function of ours.
    unsafe {
        let lib = libloading::Library::new(&path).expect("the library");
        let f: libloading::Symbol<unsafe extern "C" fn(*mut u64, usize) -> usize> = lib
            .get(b"promptloop_counters")
            .expect("the counters symbol");
        let mut out = [0u64; 5];
        assert_eq!(f(out.as_mut_ptr(), out.len()), 5);
        out
    }
}

/// Resident memory of this process, in bytes (Linux).
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Band-limited resampling of one period of a periodic signal, by the DFT:
/// the ideal interpolation for a loop, and independent of the plugin's code path
/// (rubato's FFT resampler on circularly padded input).
pub fn resample_periodic(input: &[f32], out_len: usize) -> Vec<f32> {
    use rustfft::num_complex::Complex;
    let n = input.len();
    let mut planner = rustfft::FftPlanner::<f64>::new();
    let mut spec: Vec<Complex<f64>> = input.iter().map(|&x| Complex::new(x as f64, 0.0)).collect();
    planner.plan_fft_forward(n).process(&mut spec);
    let mut out = vec![Complex::new(0.0, 0.0); out_len];
    // Keep the bins both lengths can represent; split the Nyquist bin.
    let half = n.min(out_len) / 2;
    for k in 0..half {
        out[k] = spec[k];
        if k > 0 {
            out[out_len - k] = spec[n - k];
        }
    }
    planner.plan_fft_inverse(out_len).process(&mut out);
    out.iter().map(|c| (c.re / n as f64) as f32).collect()
}

/// Normalised cross-correlation of two signals at lag 0.
pub fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for i in 0..n {
        let (x, y) = (a[i] as f64, b[i] as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-30)
}

/// Relative spectral error below `max_hz`: ‖|A| − |B|‖ / ‖|B|‖ over magnitude spectra.
pub fn spectral_error(a: &[f32], b: &[f32], rate: f64, max_hz: f64) -> f64 {
    use rustfft::num_complex::Complex;
    let n = a.len().min(b.len());
    let mut planner = rustfft::FftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(n);
    let spectrum = |x: &[f32]| {
        let mut s: Vec<Complex<f64>> = x[..n]
            .iter()
            .map(|&v| Complex::new(v as f64, 0.0))
            .collect();
        fft.process(&mut s);
        s
    };
    let (sa, sb) = (spectrum(a), spectrum(b));
    let bins = ((max_hz / rate) * n as f64) as usize;
    let (mut num, mut den) = (0.0, 0.0);
    for k in 1..bins.min(n / 2) {
        let d = sa[k].norm() - sb[k].norm();
        num += d * d;
        den += sb[k].norm_sqr();
    }
    (num / den.max(1e-30)).sqrt()
}

/// Reads a mono float WAV.
pub fn read_wav(path: &Path) -> (Vec<f32>, u32) {
    let mut r = hound::WavReader::open(path).expect("the take's WAV opens");
    let rate = r.spec().sample_rate;
    let samples = r.samples::<f32>().map(|s| s.unwrap()).collect();
    (samples, rate)
}

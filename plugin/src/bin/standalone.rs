//! Promptloop as a standalone application (nice-plug's standalone wrapper: JACK,
//! ALSA/CoreAudio/WASAPI through cpal, or the dummy backend), with its editor.
//!
//! `PROMPTLOOP_SESSION=FILE` starts it with a saved session document (the JSON
//! under the plugin state's `fields.promptloop`).

use promptloop::Promptloop;

fn main() {
    if let Some(path) = std::env::var_os("PROMPTLOOP_SESSION") {
        match std::fs::read(&path).map(|b| serde_json::from_slice(&b)) {
            Ok(Ok(doc)) => {
                let _ = promptloop::STANDALONE_SESSION.set(doc);
            }
            Ok(Err(e)) => eprintln!("{}: not a session document: {e}", path.to_string_lossy()),
            Err(e) => eprintln!("cannot read {}: {e}", path.to_string_lossy()),
        }
    }
    // nice-plug's standalone acts on SIGINT only while no editor is open: close
    // the editor too, which ends the app. (nice-plug then reports that it could
    // not install its own handler; ours covers both cases.)
    let _ = ctrlc::set_handler(promptloop::request_quit);
    nice_plug::prelude::nice_export_standalone::<Promptloop>();
}

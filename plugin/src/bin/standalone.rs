//! Promptloop as a standalone application (nice-plug's standalone wrapper: JACK,
//! ALSA/CoreAudio/WASAPI through cpal, or the dummy backend), with its editor.

use promptloop::Promptloop;

fn main() {
    // nice-plug's standalone acts on SIGINT only while no editor is open: close
    // the editor too, which ends the app. (nice-plug then reports that it could
    // not install its own handler; ours covers both cases.)
    let _ = ctrlc::set_handler(promptloop::editor::request_quit);
    nice_plug::prelude::nice_export_standalone::<Promptloop>();
}

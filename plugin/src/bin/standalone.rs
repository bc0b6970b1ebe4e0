//! Promptloop as a standalone application (nice-plug's standalone wrapper: JACK,
//! ALSA/CoreAudio/WASAPI through cpal, or the dummy backend).

use promptloop::Promptloop;

fn main() {
    nice_plug::prelude::nice_export_standalone::<Promptloop>();
}

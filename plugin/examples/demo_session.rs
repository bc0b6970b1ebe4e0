//! Makes a session with a few takes from a model folder and prints its
//! document: the state the README's screenshot shows.
//!
//! cargo run -p promptloop --features test-hooks --example demo_session -- MODEL_DIR DATA_DIR > session.json

use std::time::Duration;

use musicgen::{DeviceChoice, ModelSource, Precision};
use promptloop::testing::{Instance, JobStage, Length};

fn main() {
    let mut args = std::env::args().skip(1);
    let (model, data) = match (args.next(), args.next()) {
        (Some(m), Some(d)) => (m, d),
        _ => {
            eprintln!("usage: demo_session MODEL_DIR DATA_DIR > session.json");
            std::process::exit(2);
        }
    };
    let (instance, _audio) = Instance::new();
    instance.activate(48_000);
    let takes = [
        (
            "dusty boom-bap drums, 90 bpm",
            Length::Bars(2.0),
            90.0,
            1234,
        ),
        ("warm rhodes chords, lofi", Length::Seconds(6.0), 90.0, 77),
        (
            "minimal techno groove with rolling bass",
            Length::Bars(4.0),
            124.0,
            5,
        ),
    ];
    for (prompt, length, tempo, seed) in takes {
        instance.host.publish(Some(tempo), Some(4), Some(4));
        instance.update_settings(|s| {
            s.prompt = prompt.into();
            s.model = ModelSource::Local {
                path: model.clone().into(),
            };
            s.precision = Precision::F32;
            s.device = DeviceChoice::Cpu;
            s.length = length;
            s.seed = Some(seed);
            s.data_folder = Some(data.clone().into());
        });
        let id = instance.generate().expect("queued");
        loop {
            let job = instance
                .jobs()
                .into_iter()
                .find(|j| j.take_id == id)
                .unwrap();
            match job.stage() {
                JobStage::Done => break,
                s if s.finished() => panic!("{s:?}"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    // A continuation of the first take, and an imported file.
    let first = instance
        .session()
        .visible_takes()
        .next()
        .unwrap()
        .meta
        .id
        .clone();
    instance.update_settings(|s| {
        s.prompt = "dusty boom-bap drums, 90 bpm, fill".into();
        s.length = Length::Bars(2.0);
    });
    let id = instance.continue_take(&first).expect("queued");
    wait(&instance, &id);
    let flac = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stereo-220-330hz.flac");
    let imported = instance.import(&flac).expect("importing");
    while instance.session().take(&imported).is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    instance.update_settings(|s| {
        s.prompt = "dusty boom-bap drums, 90 bpm".into();
        s.length = Length::Bars(4.0);
        s.seed = None;
    });
    println!("{}", instance.session().to_document());
}

fn wait(instance: &Instance, id: &promptloop::testing::TakeId) {
    loop {
        let job = instance
            .jobs()
            .into_iter()
            .find(|j| &j.take_id == id)
            .unwrap();
        match job.stage() {
            JobStage::Done => break,
            s if s.finished() => panic!("{s:?}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

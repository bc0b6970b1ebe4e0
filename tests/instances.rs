//! Several Promptloop instances in one host process: one model copy serves
//! them all, each gets its own take, and destroying an instance mid-job cancels
//! that job alone. Its own test binary, so the process-wide counters are its own.

use std::time::{Duration, Instant};

use host_tests::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(300);

fn generate(p: &mut PluginUnderTest) {
    let note = Note {
        frame: 0,
        key: GENERATE_NOTE,
        on: true,
    };
    p.process(64, &[note], None);
}

#[test]
fn instances_share_one_model_and_cancel_only_their_own_jobs() {
    // Unload a model unused for 1 s (the default is 10 minutes).
    std::env::set_var("PROMPTLOOP_UNLOAD_AFTER_S", "1");
    let entry = load_entry();
    let data = tempfile::tempdir().unwrap();
    let [loads0, _, done0, cancelled0, failed0] = counters();
    let rss0 = resident_bytes();

    let mut a = PluginUnderTest::new(&entry);
    let mut b = PluginUnderTest::new(&entry);
    let mut c = PluginUnderTest::new(&entry);
    for (p, prompt, seconds) in [
        (&mut a, "kick", 2.0),
        (&mut b, "hats", 2.0),
        (&mut c, "long drone", 30.0),
    ] {
        p.activate(48_000.0, 512);
        p.configure(
            &tiny_model(),
            data.path(),
            prompt,
            json!({"seconds": seconds}),
            4,
        );
    }
    // C's long job first; A's and B's queue behind it.
    generate(&mut c);
    std::thread::sleep(Duration::from_millis(200));
    generate(&mut a);
    generate(&mut b);
    let t0 = Instant::now();
    drop(c);
    let ta = a.wait_for_takes(1, WAIT, None);
    let tb = b.wait_for_takes(1, WAIT, None);
    eprintln!("A and B done {:?} after C was destroyed", t0.elapsed());
    assert_eq!(ta.len(), 1);
    assert_eq!(tb.len(), 1);
    assert_ne!(ta[0]["id"], tb[0]["id"]);
    assert_ne!(ta[0]["file"], tb[0]["file"]);
    assert_eq!(ta[0]["request"]["prompt"], "kick");
    assert_eq!(tb[0]["request"]["prompt"], "hats");

    let [loads, resident, done, cancelled, failed] = counters();
    assert_eq!(loads - loads0, 1, "one model load serves every instance");
    assert_eq!(resident, 1, "one copy resident");
    assert_eq!(done - done0, 2);
    assert_eq!(cancelled - cancelled0, 1, "C's job was cancelled");
    assert_eq!(failed - failed0, 0);
    eprintln!(
        "resident memory grew by {:.1} MB for one tiny model and three instances",
        (resident_bytes().saturating_sub(rss0)) as f64 / 1e6
    );

    // Unused for a while, the model is unloaded; the next job loads it again.
    let start = Instant::now();
    while counters()[1] != 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "never unloaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    generate(&mut a);
    a.wait_for_takes(2, WAIT, None);
    assert_eq!(counters()[0] - loads0, 2);
}

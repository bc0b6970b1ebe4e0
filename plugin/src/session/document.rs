//! The session as the project saves it: one versioned JSON document under
//! the state key [`STATE_KEY`] (nice-plug keeps each persisted field as a JSON
//! string in `fields`). It is decoded leniently: each setting and each take on
//! its own, so one bad entry costs that entry and is reported, and garbage
//! loads the defaults. Audio is not in the document: it lives in WAV files
//! named by each take.

use serde_json::{Map, Value};

use super::{Session, Settings, RECENT_PROMPTS};
use crate::take::{Take, TakeId, TakeMeta};

/// The key of the document in the plugin state's `fields`.
pub const STATE_KEY: &str = "promptloop";
/// The document's schema version; [`migrate`] brings older documents to it.
/// Version 2 added each take's `source` and `melody` (and `channels`); version 1
/// takes read as text takes, mono.
pub const STATE_VERSION: u64 = 2;

impl Session {
    /// The document saved with the project.
    pub fn to_document(&self) -> Value {
        serde_json::json!({
            "version": STATE_VERSION,
            "settings": self.settings,
            "takes": self.takes.iter().map(|t| &t.meta).collect::<Vec<_>>(),
            "selected": self.selected,
            "recent_prompts": self.recent_prompts,
        })
    }

    /// Replaces the session with a saved document, decoding what is valid.
    pub fn load_document(&mut self, doc: &Value) {
        let decoded = decode(doc);
        self.settings = decoded.settings;
        self.takes = decoded.takes.into_iter().map(Take::unloaded).collect();
        self.selected = decoded
            .selected
            .filter(|id| self.takes.iter().any(|t| &t.meta.id == id));
        self.recent_prompts = decoded.recent_prompts;
        self.load_report = decoded.report;
        self.last_error = None;
    }
}

/// A decoded document and what could not be decoded.
#[derive(Debug, Default)]
pub struct Decoded {
    pub settings: Settings,
    pub takes: Vec<TakeMeta>,
    pub selected: Option<TakeId>,
    pub recent_prompts: Vec<String>,
    pub report: Vec<String>,
}

/// Brings a document of any earlier version to [`STATE_VERSION`]. Runs from
/// `filter_state`, before the document is decoded.
pub fn migrate(doc: &mut Value) {
    let Some(obj) = doc.as_object_mut() else {
        return;
    };
    let version = obj.get("version").and_then(Value::as_u64).unwrap_or(0);
    if version == 0 {
        // Version 0 (never released) kept the settings at the top level.
        let mut settings = Map::new();
        for key in SETTING_KEYS {
            if let Some(v) = obj.remove(*key) {
                settings.insert((*key).to_string(), v);
            }
        }
        if !settings.is_empty() && !obj.contains_key("settings") {
            obj.insert("settings".into(), Value::Object(settings));
        }
        obj.insert("version".into(), Value::from(1));
    }
    if version <= 1 {
        // Version 1 takes have no `source`: they decode as text takes.
        obj.insert("version".into(), Value::from(STATE_VERSION));
    }
}

const SETTING_KEYS: &[&str] = &[
    "prompt",
    "model",
    "precision",
    "device",
    "length",
    "guidance_scale",
    "top_k",
    "top_p",
    "temperature",
    "seed",
    "data_folder",
];

/// Decodes a document entry by entry.
pub fn decode(doc: &Value) -> Decoded {
    let mut out = Decoded::default();
    let Some(obj) = doc.as_object() else {
        out.report
            .push("the saved state is not a Promptloop document; defaults loaded".into());
        return out;
    };
    if let Some(v) = obj.get("version").and_then(Value::as_u64) {
        if v > STATE_VERSION {
            out.report.push(format!(
                "saved by a newer Promptloop (state version {v}, this one reads {STATE_VERSION}); \
                 loaded what this version understands"
            ));
        }
    }
    if let Some(settings) = obj.get("settings") {
        match settings.as_object() {
            Some(s) => decode_settings(s, &mut out.settings, &mut out.report),
            None => out.report.push("settings: not an object".into()),
        }
    }
    out.settings.sanitize();
    if let Some(takes) = obj.get("takes") {
        match takes.as_array() {
            Some(list) => {
                for (i, t) in list.iter().enumerate() {
                    match serde_json::from_value::<TakeMeta>(t.clone()) {
                        Ok(meta) if out.takes.iter().any(|m| m.id == meta.id) => out
                            .report
                            .push(format!("take {i} ({}): duplicate id, skipped", meta.id)),
                        Ok(meta) => out.takes.push(meta),
                        Err(e) => {
                            let id = t.get("id").and_then(Value::as_str).unwrap_or("?");
                            out.report.push(format!("take {i} ({id}): {e}"));
                        }
                    }
                }
            }
            None => out.report.push("takes: not a list".into()),
        }
    }
    out.selected = obj
        .get("selected")
        .and_then(Value::as_str)
        .map(TakeId::from);
    if let Some(list) = obj.get("recent_prompts").and_then(Value::as_array) {
        out.recent_prompts = list
            .iter()
            .filter_map(Value::as_str)
            .take(RECENT_PROMPTS)
            .map(str::to_string)
            .collect();
    }
    out
}

fn decode_settings(obj: &Map<String, Value>, s: &mut Settings, report: &mut Vec<String>) {
    fn field<T: serde::de::DeserializeOwned>(
        obj: &Map<String, Value>,
        key: &str,
        slot: &mut T,
        report: &mut Vec<String>,
    ) {
        if let Some(v) = obj.get(key) {
            match serde_json::from_value(v.clone()) {
                Ok(value) => *slot = value,
                Err(e) => report.push(format!("setting {key}: {e}; default kept")),
            }
        }
    }
    field(obj, "prompt", &mut s.prompt, report);
    field(obj, "model", &mut s.model, report);
    field(obj, "precision", &mut s.precision, report);
    field(obj, "device", &mut s.device, report);
    field(obj, "length", &mut s.length, report);
    field(obj, "guidance_scale", &mut s.guidance_scale, report);
    field(obj, "top_k", &mut s.top_k, report);
    field(obj, "top_p", &mut s.top_p, report);
    field(obj, "temperature", &mut s.temperature, report);
    field(obj, "seed", &mut s.seed, report);
    field(obj, "data_folder", &mut s.data_folder, report);
    field(obj, "melody", &mut s.melody, report);
    field(obj, "hear_while_made", &mut s.hear_while_made, report);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Length;
    use crate::take::TakeStatus;
    use musicgen::GenerationRequest;
    use std::path::PathBuf;

    fn meta(id: &str) -> TakeMeta {
        TakeMeta {
            id: id.into(),
            request: GenerationRequest::default(),
            engine_version: musicgen::ENGINE_VERSION.into(),
            seconds: 2.0,
            samples: 64_000,
            sample_rate: 32_000,
            channels: 1,
            tempo: Some(120.0),
            bars: Some(1.0),
            time_signature: Some((4, 4)),
            created: 1,
            file: PathBuf::from(format!("/tmp/{id}.wav")),
            hidden: false,
            source: Default::default(),
            melody: None,
        }
    }

    #[test]
    fn document_round_trips() {
        let mut s = Session::default();
        s.update_settings(|s| {
            s.prompt = "dusty boom-bap drums, 90 bpm".into();
            s.length = Length::Seconds(8.0);
        });
        for id in ["a", "b"] {
            s.add_take(Take {
                meta: meta(id),
                status: TakeStatus::Ready,
                pcm: None,
                clip: None,
            });
        }
        let doc = s.to_document();
        let mut back = Session::default();
        back.load_document(&doc);
        assert!(back.load_report.is_empty(), "{:?}", back.load_report);
        assert_eq!(back.settings, s.settings);
        assert_eq!(back.takes.len(), 2);
        assert_eq!(back.takes[1].meta, s.takes[1].meta);
        assert_eq!(back.selected.as_ref().map(TakeId::as_str), Some("b"));
        assert_eq!(back.takes[0].status, TakeStatus::Loading);
    }

    #[test]
    fn one_bad_take_costs_only_that_take() {
        let mut doc = serde_json::json!({
            "version": 1,
            "settings": {"prompt": "pads", "top_k": "many", "length": {"bars": 2.0}},
            "takes": [meta("a"), {"id": "broken", "seconds": "long"}, 7, meta("c")],
            "selected": "broken",
        });
        migrate(&mut doc);
        let mut s = Session::default();
        s.load_document(&doc);
        let ids: Vec<_> = s.takes.iter().map(|t| t.meta.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(s.settings.prompt, "pads");
        assert_eq!(s.settings.length, Length::Bars(2.0));
        assert_eq!(s.settings.top_k, 250, "bad field keeps its default");
        assert_eq!(s.selected, None, "selection of a take that did not load");
        assert_eq!(s.load_report.len(), 3, "{:?}", s.load_report);
        assert!(s.load_report.iter().any(|r| r.contains("broken")));
    }

    #[test]
    fn garbage_loads_defaults_and_says_so() {
        for garbage in [
            Value::Null,
            serde_json::json!("text"),
            serde_json::json!([1, 2]),
            serde_json::json!({"settings": 5, "takes": {"a": 1}}),
            serde_json::json!({"settings": {"guidance_scale": -4, "temperature": 0,
                               "length": {"seconds": -1}}}),
        ] {
            let mut doc = garbage.clone();
            migrate(&mut doc);
            let mut s = Session::default();
            s.load_document(&doc);
            assert!(s.takes.is_empty());
            assert_eq!(s.settings.guidance_scale, 3.0, "{garbage}");
            assert_eq!(s.settings.length, Length::Bars(4.0), "{garbage}");
        }
    }

    #[test]
    fn version_1_documents_written_by_the_last_release_load_unchanged() {
        let text = include_str!("../../tests/fixtures/state-v1.json");
        let original: Value = serde_json::from_str(text).unwrap();
        let mut doc = original.clone();
        migrate(&mut doc);
        assert_eq!(doc["version"], STATE_VERSION);
        let mut s = Session::default();
        s.load_document(&doc);
        assert!(s.load_report.is_empty(), "{:?}", s.load_report);
        assert_eq!(s.takes.len(), 2);
        assert_eq!(s.settings.prompt, "dusty boom-bap drums, 90 bpm");
        assert_eq!(s.settings.seed, Some(42));
        assert_eq!(s.selected.as_ref().unwrap(), "take-1733370000000-0000abcd");
        assert_eq!(s.recent_prompts.len(), 2);
        for (t, saved) in s.takes.iter().zip(original["takes"].as_array().unwrap()) {
            let m = &t.meta;
            assert_eq!(m.source, crate::take::TakeSource::Text);
            assert_eq!((m.channels, m.melody.clone()), (1, None));
            assert_eq!(m.request.seed, 42);
            // Every v1 field comes back as it was saved.
            let back = serde_json::to_value(m).unwrap();
            for (key, value) in saved.as_object().unwrap() {
                assert_eq!(&back[key], value, "{key}");
            }
        }
        assert!(s.takes[1].meta.hidden);
    }

    #[test]
    fn every_source_kind_round_trips() {
        use crate::take::{MelodySource, NoteRecord, TakeSource};
        let mut s = Session::default();
        let kinds = [
            (TakeSource::Text, None),
            (
                TakeSource::Continuation {
                    of: "a".into(),
                    prompt_seconds: 12.0,
                },
                None,
            ),
            (TakeSource::Captured, None),
            (
                TakeSource::Imported {
                    path: PathBuf::from("/music/loop.flac"),
                },
                None,
            ),
            (
                TakeSource::Text,
                Some(MelodySource::Take { of: "c".into() }),
            ),
            (
                TakeSource::Text,
                Some(MelodySource::Notes {
                    notes: vec![NoteRecord {
                        start_s: 0.0,
                        end_s: 0.5,
                        pitch: 60,
                    }],
                    seconds: 2.0,
                }),
            ),
        ];
        for (n, (source, melody)) in kinds.iter().enumerate() {
            let mut m = meta(&format!("t{n}"));
            m.source = source.clone();
            m.melody = melody.clone();
            m.channels = 1 + n % 2;
            s.add_take(Take {
                meta: m,
                status: TakeStatus::Ready,
                pcm: None,
                clip: None,
            });
        }
        let doc = s.to_document();
        assert_eq!(doc["version"], 2);
        let mut back = Session::default();
        back.load_document(&doc);
        assert!(back.load_report.is_empty(), "{:?}", back.load_report);
        for (a, b) in back.takes.iter().zip(&s.takes) {
            assert_eq!(a.meta, b.meta);
        }
    }

    #[test]
    fn version_0_documents_migrate() {
        let mut doc = serde_json::json!({"prompt": "old", "seed": 5, "takes": []});
        migrate(&mut doc);
        assert_eq!(doc["version"], STATE_VERSION);
        let d = decode(&doc);
        assert_eq!(d.settings.prompt, "old");
        assert_eq!(d.settings.seed, Some(5));
        assert!(d.report.is_empty(), "{:?}", d.report);
    }

    #[test]
    fn newer_documents_load_with_a_warning() {
        let doc = serde_json::json!({"version": 99, "settings": {"prompt": "x"}});
        let d = decode(&doc);
        assert_eq!(d.settings.prompt, "x");
        assert!(d.report[0].contains("newer"));
    }
}

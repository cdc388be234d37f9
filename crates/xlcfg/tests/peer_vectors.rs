//! Xen's own parser test vectors (tools/xl/check-xl-disk-parse, check-xl-vif-parse):
//! every case must get Xen's verdict and Xen's parsed fields.

use serde_json::Value;
use std::path::PathBuf;
use xlcfg::{parse_disk_spec, parse_vif_spec, DiskAccess};

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/xl-parse-vectors.json")
}

fn load() -> Value {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the peer test vectors are missing: cannot read {}: {e} (they are part of the repository, under crates/xlcfg/tests/data/)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("xl-parse-vectors.json is valid JSON")
}

/// libxl's defaults for fields a case does not list.
fn expected(expect: &Value, field: &str) -> Value {
    if let Some(v) = expect.get(field) {
        return v.clone();
    }
    match field {
        "readwrite" | "is_cdrom" | "removable" => Value::from(0),
        _ => Value::Null,
    }
}

fn disk_fields(spec: &str) -> Result<serde_json::Map<String, Value>, String> {
    let d = parse_disk_spec(spec).map_err(|e| e.to_string())?;
    let mut m = serde_json::Map::new();
    m.insert(
        "pdev_path".into(),
        d.target.clone().map_or(Value::Null, Value::from),
    );
    m.insert("vdev".into(), Value::from(d.vdev.clone()));
    m.insert("format".into(), Value::from(d.format.as_str()));
    m.insert(
        "readwrite".into(),
        Value::from(u8::from(d.access != DiskAccess::ReadOnly)),
    );
    m.insert("is_cdrom".into(), Value::from(u8::from(d.is_cdrom)));
    m.insert("removable".into(), Value::from(u8::from(d.removable())));
    m.insert(
        "backend".into(),
        d.backend_type
            .map_or(Value::Null, |b| Value::from(b.as_str())),
    );
    m.insert(
        "script".into(),
        d.script.clone().map_or(Value::Null, Value::from),
    );
    m.insert(
        "discard_enable".into(),
        d.discard.map_or(Value::Null, Value::from),
    );
    m.insert("trusted".into(), d.trusted.map_or(Value::Null, Value::from));
    Ok(m)
}

fn vif_fields(spec: &str) -> Result<serde_json::Map<String, Value>, String> {
    let v = parse_vif_spec(spec).map_err(|e| e.to_string())?;
    let mut m = serde_json::Map::new();
    m.insert(
        "rate_bytes_per_interval".into(),
        v.rate
            .map_or(Value::Null, |r| Value::from(r.bytes_per_interval)),
    );
    m.insert(
        "rate_interval_usecs".into(),
        v.rate.map_or(Value::Null, |r| Value::from(r.interval_us)),
    );
    m.insert("trusted".into(), v.trusted.map_or(Value::Null, Value::from));
    Ok(m)
}

const DISK_FIELDS: &[&str] = &[
    "pdev_path",
    "vdev",
    "format",
    "readwrite",
    "is_cdrom",
    "removable",
    "backend",
    "script",
    "discard_enable",
    "trusted",
];
const VIF_FIELDS: &[&str] = &["rate_bytes_per_interval", "rate_interval_usecs", "trusted"];

#[test]
fn every_xen_vector_agrees() {
    let doc = load();
    let cases = doc["cases"].as_array().expect("cases is an array");
    assert_eq!(cases.len(), 70, "the vector file should hold 70 cases");
    let (mut disks, mut vifs, mut failures) = (0, 0, Vec::new());
    for (i, case) in cases.iter().enumerate() {
        let kind = case["kind"].as_str().expect("kind");
        let args: Vec<&str> = case["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("arg is a string"))
            .collect();
        let spec = args.join(",");
        let ok = case["ok"].as_bool().expect("ok");
        let (got, fields) = match kind {
            "disk" => {
                disks += 1;
                (disk_fields(&spec), DISK_FIELDS)
            }
            "vif" => {
                vifs += 1;
                (vif_fields(&spec), VIF_FIELDS)
            }
            other => panic!("case {i}: unknown kind {other}"),
        };
        match (&got, ok) {
            (Err(e), true) => failures.push(format!(
                "case {i} {kind} {spec:?}: Xen accepts it, we refuse: {e}"
            )),
            (Ok(_), false) => failures.push(format!(
                "case {i} {kind} {spec:?}: Xen refuses it, we accept it"
            )),
            (Err(_), false) => {}
            (Ok(m), true) => {
                let expect = &case["expect"];
                if let Some(obj) = expect.as_object() {
                    for k in obj.keys() {
                        assert!(
                            fields.contains(&k.as_str()),
                            "case {i}: unhandled expect field {k}"
                        );
                    }
                }
                for f in fields {
                    let want = expected(expect, f);
                    let have = m.get(*f).cloned().unwrap_or(Value::Null);
                    if want != have {
                        failures.push(format!(
                            "case {i} {kind} {spec:?}: {f}: Xen has {want}, we have {have}"
                        ));
                    }
                }
            }
        }
    }
    assert_eq!((disks, vifs), (27, 43), "case counts by kind");
    assert!(
        failures.is_empty(),
        "{} disagreements with Xen:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

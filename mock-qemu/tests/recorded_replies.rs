//! Replies served from recordings of the real system emulator: the build's
//! facts always, the vCPU's only for the vCPUs that were recorded.

use std::sync::Arc;

use mock_qemu::core::{Core, CoreConfig};
use mock_qemu::profile::{Flavor, Profile, Version};
use mock_qemu::qmp::json::{JsonStreamer, Parsed};
use serde_json::{json, Value};

fn core_with(args: &[&str]) -> (Core, mock_qemu::core::SessionId) {
    let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let cfg = mock_qemu::cmdline::parse("qemu-system-x86_64", &argv, |_| None).unwrap();
    let profile = Profile::get(Version::V7_2, Flavor::System).unwrap();
    let mut core = Core::new(Arc::clone(&profile), &CoreConfig::default());
    core.run_cmdline(&cfg).unwrap();
    let (sid, _) = core.open_session();
    let mut c = (core, sid);
    ask(&mut c, json!({"execute": "qmp_capabilities"}));
    c
}

fn ask(c: &mut (Core, mock_qemu::core::SessionId), v: Value) -> Value {
    let mut items = Vec::new();
    JsonStreamer::new().feed(v.to_string().as_bytes(), &mut items);
    let item = items.pop().unwrap();
    assert!(matches!(item, Parsed::Value(_)));
    let d = c.0.handle(c.1, item);
    serde_json::from_str(d.reply.as_deref().unwrap()).unwrap()
}

const LM: &str = r#"{"execute": "qom-get", "arguments": {"path": "/machine/unattached/device[0]", "property": "lm"}}"#;

#[test]
fn the_recorded_vcpu_answers_for_the_recorded_vcpu_only() {
    let lm: Value = serde_json::from_str(LM).unwrap();
    // libvirt's line for a 1-vCPU TCG domain: the recording's.
    let mut c = core_with(&[
        "-S",
        "-machine",
        "pc",
        "-cpu",
        "qemu64",
        "-smp",
        "1,sockets=1,cores=1,threads=1",
    ]);
    assert_eq!(ask(&mut c, lm.clone()), json!({"return": true}));
    let r = ask(&mut c, json!({"execute": "query-cpus-fast"}));
    assert_eq!(r["return"].as_array().map(Vec::len), Some(1));
    // Another model or more vCPUs: refused by name, never guessed.
    for args in [
        &["-S", "-machine", "pc", "-cpu", "max"][..],
        &["-S", "-machine", "pc", "-smp", "2"],
    ] {
        let mut c = core_with(args);
        let desc = ask(&mut c, lm.clone())["error"]["desc"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            desc.starts_with("mock-qemu: 'qom-get' about vCPUs"),
            "{args:?}: {desc}"
        );
    }
    // -M none has no vCPU at all; the build's facts are there regardless.
    let mut c = core_with(&["-S", "-machine", "none"]);
    let desc = ask(&mut c, lm)["error"]["desc"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(desc.contains("not implemented by the mock"), "{desc}");
    let r = ask(&mut c, json!({"execute": "query-target"}));
    assert_eq!(r, json!({"return": {"arch": "x86_64"}}));
}

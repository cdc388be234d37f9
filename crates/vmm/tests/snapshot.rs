//! Save and restore at the VMM level: the test guest's heartbeat goes on
//! from where it was, and a corrupted save file is refused before any guest runs.

mod common;

use std::time::Duration;

use common::{spec, Console, Domain};
use rxen_proto::stream::ConfigRecord;
use rxen_proto::vmctl::{AfterSave, VmRequest, VmResponse};
use rxen_proto::vmspec::{ExitReason, KernelSource};

const T: Duration = Duration::from_secs(20);

fn heartbeat(con: &mut Console) -> u64 {
    let from = con.seen.len();
    con.send("heartbeat\n");
    let tail = con.wait_for(from, T, |t| parse(t).is_some());
    parse(&tail).expect("heartbeat")
}

fn parse(text: &str) -> Option<u64> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .find_map(|l| l.trim().strip_prefix("heartbeat ")?.trim().parse().ok())
}

fn config() -> ConfigRecord {
    ConfigRecord {
        config: serde_json::json!({"name": "test"}),
        config_path: None,
    }
}

#[test]
fn save_restore_keeps_the_heartbeat_and_corruption_is_refused() {
    let mut d = Domain::start(|dir| spec(dir, KernelSource::Builtin("testguest".into()), 2, 64));
    let mut con = d.console();
    con.wait_text(0, "booted on 2 vCPUs", T);
    std::thread::sleep(Duration::from_millis(500));
    let before = heartbeat(&mut con);
    let keep = tempfile::tempdir().expect("tmp");
    let file = keep.path().join("guest.save");
    let save = VmRequest::Save {
        path: file.clone(),
        config: config(),
        then: AfterSave::Exit,
    };
    // The VMM opens no path once the guest runs: the file comes with the request.
    let resp = d.control().request(&save);
    assert!(
        matches!(&resp, VmResponse::Error { message } if message.contains("passed with it")),
        "a save without a file: {resp:?}"
    );
    assert!(!file.exists());
    let out = std::fs::File::create(&file).expect("create");
    let resp = d.control().request_with_fd(&save, &out);
    let VmResponse::Transferred(stats) = resp else {
        panic!("save: {resp:?}\n{}", d.vmm_log());
    };
    assert!(stats.pages > 0 && stats.zero_pages > 0, "{stats:?}");
    assert_eq!(d.wait_exit(T), 0);
    assert_eq!(d.exit_record().reason, ExitReason::Saved);
    let size = std::fs::metadata(&file).expect("file").len();
    assert!(size < 32 << 20, "a 64 MiB guest saved into {size} bytes");

    for _ in 0..2 {
        let f = file.clone();
        let r = Domain::start(move |dir| {
            let mut s = spec(dir, KernelSource::Builtin("testguest".into()), 2, 64);
            s.restore_from = Some(f);
            s
        });
        let mut con = r.console();
        let after = heartbeat(&mut con);
        assert!(
            after >= before && after < before + 50,
            "heartbeat {before} before the save, {after} after the restore\n{}",
            r.vmm_log()
        );
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            heartbeat(&mut con) > after,
            "the restored guest does not run"
        );
    }

    let mut bad = std::fs::read(&file).expect("read");
    let at = bad.len() / 2;
    bad[at] ^= 0x20;
    let bad_file = keep.path().join("bad.save");
    std::fs::write(&bad_file, &bad).expect("write");
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = spec(dir.path(), KernelSource::Builtin("testguest".into()), 2, 64);
    s.restore_from = Some(bad_file);
    let e = rxen_vmm::vmm::Vm::create(s)
        .err()
        .expect("corrupt file accepted");
    assert!(e.to_string().contains("corrupt"), "{e}");
}

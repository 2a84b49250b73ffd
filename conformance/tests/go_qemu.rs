//! DigitalOcean's go-qemu as a client: `ci/go-qemu/main.go` (built offline
//! by `ci/go-qemu.sh` from Debian's golang-github-digitalocean-go-qemu-dev)
//! connects with `qmp.SocketMonitor`, adds null-co nodes, mirrors one onto
//! the other, waits for BLOCK_JOB_READY, completes the job with
//! `qemu.BlockJob.Complete` (which waits for BLOCK_JOB_COMPLETED), and
//! decodes replies with go-qemu's generated `raw` types. It must succeed
//! on the mock binary of every profile, and print the same on the mock and
//! on real qemu-storage-daemon 10.0 (when `QEMU_QSD_10_0` names it).
//!
//! The program is `$GO_QEMU_CLIENT` (ci/test.sh exports it), else
//! `target/go/go-qemu-client`; without it the tests say so and pass,
//! except in CI (`CI=true`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use conformance::target::{LaunchSpec, Process};
use mock_qemu::profile::{Flavor, Version};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn client() -> Option<PathBuf> {
    let p = std::env::var_os("GO_QEMU_CLIENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/go/go-qemu-client"));
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing; ci/test.sh builds it with ci/go-qemu.sh",
        p.display()
    );
    eprintln!(
        "SKIPPED: {} is missing (bash ci/go-qemu.sh builds it)",
        p.display()
    );
    None
}

/// Runs the client against a launched program: its stdout, or a panic
/// with its stderr.
fn session(client: &Path, spec: LaunchSpec) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut p = rt.block_on(Process::launch(spec)).expect("launching");
    let child = Command::new(client)
        .arg(p.socket_path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the go-qemu client");
    // The client bounds its own waits (10 s each); this bounds the whole.
    let out = rt.block_on(async {
        let pid = child.id();
        let waiter = tokio::task::spawn_blocking(move || child.wait_with_output());
        match tokio::time::timeout(Duration::from_secs(60), waiter).await {
            Ok(r) => r.unwrap().unwrap(),
            Err(_) => {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                panic!("the go-qemu client did not end within 60 s");
            }
        }
    });
    rt.block_on(p.stop());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "go-qemu client failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn on_mock(client: &Path, version: Version, flavor: Flavor) -> String {
    session(
        client,
        LaunchSpec::mock_binary(&mock_qemu_bin(), version, flavor),
    )
}

#[test]
fn go_qemu_mirrors_and_completes_on_every_mock_profile() {
    let Some(client) = client() else { return };
    for (version, flavor) in [
        (Version::V10_0, Flavor::Qsd),
        (Version::V10_0, Flavor::System),
        (Version::V7_2, Flavor::Qsd),
        (Version::V7_2, Flavor::System),
        (Version::V5_2, Flavor::Qsd),
    ] {
        let out = on_mock(&client, version, flavor);
        for line in [
            // 5.2 says "Duplicate node name".
            "blockdev-add (duplicate): Duplicate node",
            "node src: null-co, 1048576 bytes, detect-zeroes off",
            "event JOB_STATUS_CHANGE ready",
            "event BLOCK_JOB_READY len 1.048576e+06 offset 1.048576e+06",
            "block-job-complete: BLOCK_JOB_COMPLETED",
            "query-block-jobs: none left",
        ] {
            assert!(
                out.lines().any(|l| l.starts_with(line)),
                "{} {flavor}: no line {line:?} in\n{out}",
                version.name()
            );
        }
        assert!(out.ends_with("done\n"), "{out}");
    }
}

#[test]
fn go_qemu_prints_the_same_on_the_mock_and_on_real_qsd_10_0() {
    let Some(client) = client() else { return };
    let Some(real) = std::env::var_os("QEMU_QSD_10_0")
        .map(PathBuf::from)
        .filter(|p| p.exists())
    else {
        assert!(
            std::env::var("QMP_CONFORM_REAL").as_deref() != Ok("1"),
            "QMP_CONFORM_REAL=1 but QEMU_QSD_10_0 names no binary"
        );
        eprintln!("SKIPPED: QEMU_QSD_10_0 is not set (ci/fetch-qemu.sh prints it)");
        return;
    };
    let mock = on_mock(&client, Version::V10_0, Flavor::Qsd);
    let qsd = session(&client, LaunchSpec::real_qemu(&real, Flavor::Qsd));
    assert_eq!(mock, qsd);
}

fn mock_qemu_bin() -> PathBuf {
    conformance::target::built_mock_binary().unwrap_or_else(|e| panic!("{e}"))
}

//! libvirt end to end: Debian's libvirt 9.0 (embedded QEMU driver, no
//! daemon) drives mock-qemu as its emulator through virsh and
//! python3-libvirt (`ci/libvirt/check.py` does the work; this test runs it
//! per profile and shows its report).
//!
//! Needs virsh and python3-libvirt (`ci/libvirt/setup.sh`, which
//! `ci/test.sh` runs). Without them the test says so and passes, unless
//! `QMP_CONFORM_LIBVIRT=1` (set by `ci/test.sh`) demands them. The real
//! system emulators (`QEMU_SYS_7_2`, `QEMU_SYS_10_0`, from
//! `ci/fetch-qemu.sh`) are compared side by side when present.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn have_libvirt() -> bool {
    let virsh = Command::new("virsh")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let binding = Command::new("/usr/bin/python3")
        .args(["-c", "import libvirt"])
        .output()
        .is_ok_and(|o| o.status.success());
    virsh && binding
}

/// Runs check.py with a deadline of its own (each libvirt call inside has
/// one too); returns its report.
fn check(profile: &str, only: &str) -> Result<String, String> {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(repo().join("ci/libvirt/check.py"))
        .arg("--mock")
        .arg(mock_qemu_bin())
        .args(["--profiles", profile, "--only", only]);
    let real = match profile {
        "7.2" => std::env::var_os("QEMU_SYS_7_2"),
        _ => std::env::var_os("QEMU_SYS_10_0"),
    };
    if let Some(r) = real.filter(|r| Path::new(r).exists()) {
        cmd.arg(format!("--real-{profile}")).arg(r);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting check.py: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(_) => break,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                return Err("check.py did not finish in 600 s".into());
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}

fn run(profile: &str, only: &str) {
    if !have_libvirt() {
        assert!(
            std::env::var("QMP_CONFORM_LIBVIRT").as_deref() != Ok("1"),
            "QMP_CONFORM_LIBVIRT=1 but virsh or python3-libvirt is missing: run ci/libvirt/setup.sh"
        );
        eprintln!(
            "skipped: virsh / python3-libvirt not installed (ci/libvirt/setup.sh installs them)"
        );
        return;
    }
    assert!(
        mock_qemu_bin().exists(),
        "build mock-qemu first (cargo build -p mock-qemu)"
    );
    match check(profile, only) {
        Ok(report) => eprintln!("{report}"),
        Err(report) => panic!("libvirt check failed for profile {profile}:\n{report}"),
    }
}

#[test]
fn domcapabilities_match_the_real_emulator_7_2() {
    run("7.2", "domcaps");
}

#[test]
fn domcapabilities_match_the_real_emulator_10_0() {
    run("10.0", "domcaps");
}

/// python3-libvirt: start, snapshots, commits, pull, copies, backups
/// (push full and incremental, pull over NBD), destroy.
#[test]
fn python_libvirt_domain_operations_7_2() {
    run("7.2", "domain");
}

#[test]
fn python_libvirt_domain_operations_10_0() {
    run("10.0", "domain");
}

/// The same operations as virsh commands.
#[test]
fn virsh_domain_operations_7_2() {
    run("7.2", "virsh");
}

#[test]
fn virsh_domain_operations_10_0() {
    run("10.0", "virsh");
}

fn mock_qemu_bin() -> PathBuf {
    conformance::target::built_mock_binary().unwrap_or_else(|e| panic!("{e}"))
}

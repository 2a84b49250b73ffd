//! The mock-qemu binary over real sockets, launched as launchers launch QEMU.
//!
//! Each test body runs against the mock binary and, when `ci/fetch-qemu.sh`'s
//! variables are set (`QEMU_SYS_10_0`, `QEMU_QSD_10_0`), against the real
//! QEMU too: the same assertions hold for both, so the real one keeps the
//! test honest.
#![allow(unsafe_code)] // one dup2() in a pre_exec hook, to hand a listening fd over

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Flavor {
    Qsd,
    System,
}

/// A program to test: the mock, or a real QEMU.
#[derive(Debug, Clone)]
struct Program {
    label: String,
    path: PathBuf,
    /// Options the mock needs to impersonate this flavor (none for real QEMU).
    pre: Vec<String>,
    env: Vec<(String, String)>,
}

fn mock(flavor: Flavor) -> Program {
    let f = match flavor {
        Flavor::Qsd => "qsd",
        Flavor::System => "system",
    };
    Program {
        label: format!("mock-qemu/{f}"),
        path: env!("CARGO_BIN_EXE_mock-qemu").into(),
        pre: vec!["--flavor".into(), f.into()],
        env: vec![],
    }
}

fn real(flavor: Flavor) -> Option<Program> {
    let var = match flavor {
        Flavor::Qsd => "QEMU_QSD_10_0",
        Flavor::System => "QEMU_SYS_10_0",
    };
    let path = PathBuf::from(std::env::var_os(var)?);
    let mut env = vec![];
    if let Some(root) = path.parent().and_then(Path::parent).and_then(Path::parent) {
        let modules = root.join("usr/lib/x86_64-linux-gnu/qemu");
        if root != Path::new("/") && modules.is_dir() {
            env.push(("QEMU_MODULE_DIR".into(), modules.display().to_string()));
        }
    }
    Some(Program {
        label: format!("real {}", path.display()),
        path,
        pre: vec![],
        env,
    })
}

/// The mock, then the real binary when known.
fn programs(flavor: Flavor) -> Vec<Program> {
    let mut v = vec![mock(flavor)];
    v.extend(real(flavor));
    v
}

const SYSTEM_BASE: &[&str] = &[
    "-S",
    "-nodefaults",
    "-display",
    "none",
    "-machine",
    "none",
    "-accel",
    "tcg",
    "-no-user-config",
    "-nographic",
];

struct Running {
    child: Child,
    dir: tempfile::TempDir,
    label: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The program with its flavor options, `args`, its environment, no stdin or
/// stdout, and stderr piped.
fn command(p: &Program, args: &[String]) -> Command {
    let mut cmd = Command::new(&p.path);
    cmd.args(&p.pre)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in &p.env {
        cmd.env(k, v);
    }
    cmd
}

fn spawn(p: &Program, args: &[String], dir: tempfile::TempDir) -> Running {
    let mut cmd = command(p, args);
    cmd.current_dir(dir.path());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{}: {e}", p.label));
    Running {
        child,
        dir,
        label: p.label.clone(),
    }
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + TIMEOUT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A blocking QMP client.
struct Client {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Client {
        wait_for_file(path);
        let deadline = Instant::now() + TIMEOUT;
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("connect {}: {e}", path.display()),
            }
        };
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        Client {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    fn line(&mut self) -> Value {
        let mut l = String::new();
        let n = self.r.read_line(&mut l).expect("read (timed out?)");
        assert!(n > 0, "connection closed");
        assert!(l.ends_with("\r\n"), "line not CRLF-terminated: {l:?}");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}"))
    }

    /// Reads the greeting, tolerating qemu-storage-daemon's start-up race
    /// (a repeated greeting is read by [`Client::cmd`] as well).
    fn greeting(&mut self) -> Value {
        let g = self.line();
        assert!(g.get("QMP").is_some(), "expected a greeting, got {g}");
        g
    }

    fn send(&mut self, v: &Value) {
        self.w.write_all(format!("{v}\n").as_bytes()).unwrap();
    }

    /// Sends a command; returns (events before the reply, reply).
    fn cmd(&mut self, v: Value) -> (Vec<Value>, Value) {
        self.send(&v);
        let mut events = vec![];
        loop {
            let l = self.line();
            if l.get("event").is_some() {
                events.push(l);
            } else if l.get("QMP").is_none() {
                return (events, l);
            }
        }
    }

    fn negotiate(&mut self) {
        self.greeting();
        let (_, r) = self.cmd(json!({"execute": "qmp_capabilities"}));
        assert_eq!(r, json!({"return": {}}));
    }

    /// Whether anything arrives within `d` (used to show that nothing does).
    fn quiet_for(&mut self, d: Duration) -> bool {
        self.w.set_read_timeout(Some(d)).unwrap();
        let quiet = match self.r.fill_buf() {
            Ok(_) => false, // data, or end of stream
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        self.w.set_read_timeout(Some(TIMEOUT)).unwrap();
        quiet
    }
}

fn system_with_monitors(p: &Program, n: usize) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = SYSTEM_BASE.iter().map(|s| s.to_string()).collect();
    for i in 0..n {
        args.push("-chardev".into());
        args.push(format!(
            "socket,id=mon{i},path={}/m{i}.sock,server=on,wait=off",
            dir.path().display()
        ));
        args.push("-mon".into());
        args.push(format!("chardev=mon{i},mode=control"));
    }
    spawn(p, &args, dir)
}

#[test]
fn events_reach_every_negotiated_monitor_and_only_those() {
    for p in programs(Flavor::System) {
        let vm = system_with_monitors(&p, 3);
        let mut a = Client::connect(&vm.path("m0.sock"));
        let mut b = Client::connect(&vm.path("m1.sock"));
        let mut c = Client::connect(&vm.path("m2.sock"));
        a.negotiate();
        b.negotiate();
        c.greeting(); // never negotiates
        let (ev, r) = a.cmd(json!({"execute": "cont", "id": "go"}));
        assert_eq!(r, json!({"return": {}, "id": "go"}), "{}", vm.label);
        assert_eq!(ev.len(), 1, "{}: {ev:?}", vm.label);
        assert_eq!(ev[0]["event"], "RESUME");
        let ts = &ev[0]["timestamp"];
        assert!(
            ts["seconds"].as_i64().unwrap() > 1_600_000_000
                && ts["microseconds"].as_i64().unwrap() < 1_000_000,
            "{}: {ts}",
            vm.label
        );
        // The other negotiated monitor sees the same event, unprompted.
        let seen = b.line();
        assert_eq!(seen["event"], "RESUME", "{}", vm.label);
        // The un-negotiated one gets nothing, and still must negotiate.
        let (_, r) = c.cmd(json!({"execute": "query-status", "id": 1}));
        assert_eq!(r["error"]["class"], "CommandNotFound", "{}", vm.label);
    }
}

#[test]
fn a_monitor_serves_one_client_at_a_time() {
    for p in programs(Flavor::System) {
        let vm = system_with_monitors(&p, 1);
        let sock = vm.path("m0.sock");
        let mut first = Client::connect(&sock);
        first.negotiate();
        // A second client connects (the kernel queues it) but is not greeted
        // while the first is attached.
        let mut second = Client::connect(&sock);
        assert!(
            second.quiet_for(Duration::from_millis(300)),
            "{}: second client was served at once",
            vm.label
        );
        drop(first);
        let g = second.greeting();
        assert!(
            g["QMP"]["version"]["qemu"]["major"].is_number(),
            "{}",
            vm.label
        );
    }
}

#[test]
fn state_survives_a_client_disconnect() {
    for p in programs(Flavor::System) {
        let vm = system_with_monitors(&p, 1);
        let sock = vm.path("m0.sock");
        let mut c = Client::connect(&sock);
        c.negotiate();
        c.cmd(json!({"execute": "cont"}));
        let (ev, _) = c.cmd(json!({"execute": "stop"}));
        assert_eq!(
            ev.iter()
                .map(|e| e["event"].as_str().unwrap())
                .collect::<Vec<_>>(),
            ["STOP"],
            "{}",
            vm.label
        );
        drop(c);
        let mut c = Client::connect(&sock);
        c.negotiate();
        let (_, r) = c.cmd(json!({"execute": "query-status"}));
        assert_eq!(r["return"]["status"], "paused", "{}", vm.label);
        assert_eq!(r["return"]["running"], false, "{}", vm.label);
    }
}

#[test]
fn sigterm_reports_shutdown_and_exits() {
    for p in programs(Flavor::System) {
        let mut vm = system_with_monitors(&p, 1);
        let mut c = Client::connect(&vm.path("m0.sock"));
        c.negotiate();
        let pid = libc::pid_t::try_from(vm.child.id()).unwrap();
        // SAFETY: kill() on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let ev = c.line();
        assert_eq!(ev["event"], "SHUTDOWN", "{}", vm.label);
        assert_eq!(
            ev["data"],
            json!({"guest": false, "reason": "host-signal"}),
            "{}",
            vm.label
        );
        let status = vm.child.wait().unwrap();
        assert!(status.success(), "{}: {status}", vm.label);
        assert!(
            !vm.path("m0.sock").exists(),
            "{}: socket file left behind",
            vm.label
        );
    }
}

#[test]
fn qmp_option_on_unix_and_loopback_tcp() {
    for p in programs(Flavor::System) {
        let dir = tempfile::tempdir().unwrap();
        // A free loopback port: bind, read it, release.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut args: Vec<String> = SYSTEM_BASE.iter().map(|s| s.to_string()).collect();
        args.extend([
            "-qmp".into(),
            format!("unix:{}/q.sock,server=on,wait=off", dir.path().display()),
        ]);
        args.extend([
            "-qmp".into(),
            format!("tcp:127.0.0.1:{port},server=on,wait=off"),
        ]);
        let vm = spawn(&p, &args, dir);
        let mut u = Client::connect(&vm.path("q.sock"));
        u.negotiate();
        let deadline = Instant::now() + TIMEOUT;
        let t = loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(t) => break t,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{}: tcp connect: {e}", vm.label);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        t.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut line = String::new();
        BufReader::new(t).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("{\"QMP\": {\"version\": "),
            "{}: {line:?}",
            vm.label
        );
    }
}

#[test]
fn an_inherited_listening_fd_is_served() {
    for p in programs(Flavor::System) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fd.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let mut args: Vec<String> = SYSTEM_BASE.iter().map(|s| s.to_string()).collect();
        args.extend([
            "-chardev".into(),
            "socket,id=charmonitor,fd=3,server=on,wait=off".into(),
        ]);
        args.extend([
            "-mon".into(),
            "chardev=charmonitor,id=monitor,mode=control".into(),
        ]);
        let mut cmd = command(&p, &args);
        cmd.current_dir(dir.path());
        cmd.stderr(Stdio::null());
        // SAFETY: dup2 is async-signal-safe; the fd is open in the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                // dup2(3, 3) would keep close-on-exec: clear it explicitly.
                if (fd != 3 && libc::dup2(fd, 3) < 0) || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let _vm = Running {
            child,
            dir,
            label: p.label.clone(),
        };
        let mut c = Client::connect(&path);
        c.negotiate();
        let (_, r) = c.cmd(json!({"execute": "query-status"}));
        assert_eq!(r["return"]["status"], "prelaunch", "{}", p.label);
        drop(listener);
    }
}

#[test]
fn daemonize_returns_once_the_monitor_listens_and_writes_the_pidfile() {
    for p in programs(Flavor::System) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("d.sock");
        let pidfile = dir.path().join("qemu.pid");
        let mut args: Vec<String> = SYSTEM_BASE.iter().map(|s| s.to_string()).collect();
        args.extend([
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", sock.display()),
        ]);
        args.extend([
            "-pidfile".into(),
            pidfile.display().to_string(),
            "-daemonize".into(),
        ]);
        let mut cmd = command(&p, &args);
        cmd.current_dir(dir.path());
        cmd.stderr(Stdio::null());
        let status = cmd.status().unwrap();
        assert!(status.success(), "{}: {status}", p.label);
        // No waiting: the parent returned, so the monitor must accept now.
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let s = UnixStream::connect(&sock).unwrap_or_else(|e| panic!("{}: {e}", p.label));
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert!(line.contains("\"QMP\""), "{}: {line:?}", p.label);
        // SAFETY: kill() on the daemon's pid, read from its pidfile.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn stderr_of(p: &Program, args: &[&str]) -> (i32, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut cmd = command(p, &args);
    let mut child = cmd.spawn().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code().unwrap_or(-1), err)
}

#[test]
fn unknown_options_fail_as_qemu_does() {
    // qemu-storage-daemon uses getopt: argv[0] as given, then the message.
    for p in programs(Flavor::Qsd) {
        let (code, err) = stderr_of(&p, &["--bogus"]);
        assert_eq!(code, 1, "{}", p.label);
        assert_eq!(
            err,
            format!("{}: unrecognized option '--bogus'\n", p.path.display()),
            "{}",
            p.label
        );
    }
    // The system emulator names itself by its basename.
    for p in programs(Flavor::System) {
        let (code, err) = stderr_of(&p, &["-bogus"]);
        assert_eq!(code, 1, "{}", p.label);
        let name = p.path.file_name().unwrap().to_string_lossy();
        assert_eq!(
            err,
            format!("{name}: -bogus: invalid option\n"),
            "{}",
            p.label
        );
    }
}

#[test]
fn the_profile_comes_from_the_environment_when_a_launcher_passes_only_qemu_options() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_mock-qemu"))
        .env("MOCK_QEMU_PROFILE", "qemu-7.2")
        .args([
            "--chardev",
            &format!("socket,path={},server=on,wait=off,id=c", sock.display()),
            "--monitor",
            "chardev=c",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _vm = Running {
        child,
        dir,
        label: "mock".into(),
    };
    let mut c = Client::connect(&sock);
    let g = c.greeting();
    assert_eq!(
        g["QMP"]["version"]["qemu"],
        json!({"micro": 22, "minor": 2, "major": 7})
    );
}

fn qsd(p: &Program) -> (Running, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("q.sock");
    let args = vec![
        "--chardev".to_string(),
        format!("socket,path={},server=on,wait=off,id=c", sock.display()),
        "--monitor".into(),
        "chardev=c".into(),
    ];
    (spawn(p, &args, dir), sock)
}

/// [`chain_info`] with the work folder written `<dir>` (the mock's and real
/// QEMU's runs use different folders).
fn chain_info_in(path: &Path, dir: &Path) -> Vec<Value> {
    let dir = dir.display().to_string();
    chain_info(path)
        .into_iter()
        .map(|mut i| {
            for k in ["filename", "backing-filename"] {
                if let Some(s) = i[k].as_str() {
                    i[k] = json!(s.replace(&dir, "<dir>"));
                }
            }
            i
        })
        .collect()
}

/// `qemu-img info --backing-chain --output=json`, minus what depends on the
/// writer's layout (file lengths) rather than on the chain.
fn chain_info(path: &Path) -> Vec<Value> {
    let out = Command::new("qemu-img")
        .args(["info", "--backing-chain", "--output=json", "-U"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img info: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter()
        .map(|i| {
            json!({
                "filename": i["filename"], "format": i["format"], "virtual-size": i["virtual-size"],
                "backing-filename": i["backing-filename"], "backing-filename-format": i["backing-filename-format"],
                "cluster-size": i["cluster-size"], "format-specific": i["format-specific"],
            })
        })
        .collect()
}

#[test]
fn snapshot_overlays_are_valid_images_with_the_chain_qemu_writes() {
    let mut seen: Vec<(String, Vec<Value>)> = vec![];
    for p in programs(Flavor::Qsd) {
        let (vm, sock) = qsd(&p);
        let base = vm.path("base.qcow2");
        let snap = vm.path("snap.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("4M")
            .status()
            .unwrap();
        assert!(st.success());
        let mut c = Client::connect(&sock);
        c.negotiate();
        let (_, r) = c.cmd(
            json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "base",
            "file": {"driver": "file", "filename": base}}}),
        );
        assert_eq!(r, json!({"return": {}}), "{}", p.label);
        let (_, r) = c.cmd(
            json!({"execute": "blockdev-snapshot-sync", "arguments": {"node-name": "base",
            "snapshot-file": snap, "snapshot-node-name": "snap", "format": "qcow2"}}),
        );
        assert_eq!(r, json!({"return": {}}), "{}", p.label);
        let check = Command::new("qemu-img")
            .args(["check", "-U"])
            .arg(&snap)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}: qemu-img check: {}",
            p.label,
            String::from_utf8_lossy(&check.stdout)
        );
        let info: Vec<Value> = chain_info_in(&snap, vm.dir.path());
        assert_eq!(info.len(), 2, "{}: {info:?}", p.label);
        assert_eq!(
            info[0]["backing-filename"], "<dir>/base.qcow2",
            "{}",
            p.label
        );
        seen.push((p.label.clone(), info));
    }
    // The mock wrote the chain real QEMU writes.
    if let [(m, a), (r, b)] = &seen[..] {
        assert_eq!(a, b, "{m} vs {r}");
    }
}

fn run_tool(prog: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn exports_are_served_over_nbd_to_qemus_own_tools() {
    for p in programs(Flavor::Qsd) {
        let (vm, sock) = qsd(&p);
        let img = vm.path("data.img");
        let nbd = vm.path("nbd.sock");
        let img_s = img.display().to_string();
        assert!(run_tool("qemu-img", &["create", "-q", "-f", "raw", &img_s, "1M"]).0);
        assert!(
            run_tool(
                "qemu-io",
                &["-f", "raw", "-c", "write -P 0xab 0 64k", &img_s]
            )
            .0
        );
        let mut c = Client::connect(&sock);
        c.negotiate();
        for cmd in [
            json!({"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "disk", "read-only": true,
                "file": {"driver": "file", "filename": img_s}}}),
            json!({"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "zero", "size": 2097152}}),
            json!({"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": nbd}}}}),
            json!({"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e1", "node-name": "disk", "name": "exp1"}}),
            json!({"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e2", "node-name": "zero", "description": "zeroes"}}),
        ] {
            let (_, r) = c.cmd(cmd.clone());
            assert_eq!(r, json!({"return": {}}), "{}: {cmd}", p.label);
        }
        let nbd_s = nbd.display().to_string();
        let (ok, list) = run_tool("qemu-nbd", &["--list", "-k", &nbd_s]);
        assert!(ok, "{}: {list}", p.label);
        assert!(list.contains("exports available: 2"), "{}: {list}", p.label);
        assert!(
            list.contains("export: 'exp1'") && list.contains("size:  1048576"),
            "{}: {list}",
            p.label
        );
        assert!(
            list.contains("export: 'zero'")
                && list.contains("description: zeroes")
                && list.contains("size:  2097152"),
            "{}: {list}",
            p.label
        );
        let url = format!("nbd+unix:///exp1?socket={nbd_s}");
        let (ok, out) = run_tool(
            "qemu-io",
            &["-r", "-f", "raw", "-c", "read -P 0xab 0 64k", &url],
        );
        assert!(
            ok && !out.contains("Pattern verification failed"),
            "{}: {out}",
            p.label
        );
        let (ok, info) = run_tool("qemu-img", &["info", "--output=json", &url]);
        assert!(
            ok && info.contains("\"virtual-size\": 1048576"),
            "{}: {info}",
            p.label
        );
        // Deleting the export disconnects it for new clients.
        let (_, r) = c.cmd(json!({"execute": "block-export-del", "arguments": {"id": "e1"}}));
        assert_eq!(r, json!({"return": {}}), "{}", p.label);
        let (ok, out) = run_tool("qemu-io", &["-r", "-f", "raw", "-c", "read 0 512", &url]);
        assert!(
            !ok || out.contains("not present") || out.contains("Could not"),
            "{}: {out}",
            p.label
        );
    }
}

#[test]
fn blockdev_on_the_command_line_is_opened_at_start_or_fails_like_qemu() {
    for p in programs(Flavor::Qsd) {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.qcow2");
        assert!(
            run_tool(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    &img.display().to_string(),
                    "1M"
                ]
            )
            .0
        );
        let good = json!({"driver": "qcow2", "node-name": "n0", "file": {"driver": "file", "filename": img}}).to_string();
        let sock = dir.path().join("q.sock");
        let args: Vec<String> = vec![
            "--blockdev".into(),
            good,
            "--chardev".into(),
            format!("socket,path={},server=on,wait=off,id=c", sock.display()),
            "--monitor".into(),
            "chardev=c".into(),
        ];
        let vm = spawn(&p, &args, dir);
        let mut c = Client::connect(&sock);
        c.negotiate();
        let (_, r) =
            c.cmd(json!({"execute": "query-named-block-nodes", "arguments": {"flat": true}}));
        let names: Vec<&str> = r["return"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node-name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{}: {names:?}", vm.label);
        assert_eq!(names[0], "n0", "{}", vm.label);
        let bad = json!({"driver": "qcow2", "node-name": "n0", "file": {"driver": "file", "filename": "/nonexistent/x.qcow2"}}).to_string();
        let (code, err) = stderr_of(&p, &["--blockdev", &bad]);
        assert_eq!(code, 1, "{}", p.label);
        assert!(err.ends_with(&format!(": --blockdev {bad}: Could not open '/nonexistent/x.qcow2': No such file or directory\n")), "{}: {err}", p.label);
    }
}

#[test]
fn block_stream_rewrites_the_image_header_as_qemu_does() {
    let mut seen: Vec<(String, Vec<Value>)> = vec![];
    for p in programs(Flavor::Qsd) {
        let (vm, sock) = qsd(&p);
        let (base, mid, top) = (
            vm.path("base.qcow2"),
            vm.path("mid.qcow2"),
            vm.path("top.qcow2"),
        );
        let s = |p: &PathBuf| p.display().to_string();
        assert!(
            run_tool(
                "qemu-img",
                &["create", "-q", "-f", "qcow2", &s(&base), "1M"]
            )
            .0
        );
        assert!(
            run_tool(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-b",
                    &s(&base),
                    "-F",
                    "qcow2",
                    &s(&mid)
                ]
            )
            .0
        );
        assert!(
            run_tool(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-b",
                    &s(&mid),
                    "-F",
                    "qcow2",
                    &s(&top)
                ]
            )
            .0
        );
        let mut c = Client::connect(&sock);
        c.negotiate();
        let (_, r) = c.cmd(
            json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "top",
            "file": {"driver": "file", "filename": top}}}),
        );
        assert_eq!(r, json!({"return": {}}), "{}", p.label);
        // The implicit chain's nodes are generated; stream down to base's node.
        let (_, r) =
            c.cmd(json!({"execute": "query-named-block-nodes", "arguments": {"flat": true}}));
        let base_node = r["return"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["drv"] == "qcow2" && n["file"] == json!(s(&base)))
            .unwrap()["node-name"]
            .clone();
        let (_, r) = c.cmd(json!({"execute": "block-stream", "arguments": {"job-id": "j", "device": "top", "base-node": base_node}}));
        assert_eq!(r, json!({"return": {}}), "{}", p.label);
        // Wait for the job to finish (its last event), then let go of the images.
        loop {
            let ev = c.line();
            if ev["event"] == "JOB_STATUS_CHANGE" && ev["data"]["status"] == "null" {
                break;
            }
        }
        let (_, r) = c.cmd(json!({"execute": "blockdev-del", "arguments": {"node-name": "top"}}));
        assert_eq!(r, json!({"return": {}}), "{}", p.label);
        assert!(run_tool("qemu-img", &["check", &s(&top)]).0, "{}", p.label);
        let info: Vec<Value> = chain_info_in(&top, vm.dir.path());
        assert_eq!(
            info.len(),
            2,
            "{}: mid is gone from the chain: {info:?}",
            p.label
        );
        assert_eq!(
            info[0]["backing-filename"], "<dir>/base.qcow2",
            "{}",
            p.label
        );
        seen.push((p.label.clone(), info));
    }
    if let [(m, a), (r, b)] = &seen[..] {
        assert_eq!(a, b, "{m} vs {r}");
    }
}

#[test]
fn object_on_the_command_line_is_created_before_the_blockdevs_that_use_it() {
    for p in programs(Flavor::Qsd) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("q.sock");
        let node = json!({"driver": "throttle", "node-name": "thr", "throttle-group": "tg0",
            "file": {"driver": "null-co", "size": 1048576}})
        .to_string();
        let args: Vec<String> = vec![
            "--object".into(),
            "throttle-group,id=tg0".into(),
            "--blockdev".into(),
            node,
            "--chardev".into(),
            format!("socket,path={},server=on,wait=off,id=c", sock.display()),
            "--monitor".into(),
            "chardev=c".into(),
        ];
        let vm = spawn(&p, &args, dir);
        let mut c = Client::connect(&sock);
        c.negotiate();
        let (_, r) = c.cmd(json!({"execute": "object-del", "arguments": {"id": "tg0"}}));
        assert_eq!(
            r["error"]["desc"], "object 'tg0' is in use, can not be deleted",
            "{}: {r}",
            vm.label
        );
        let (_, r) = c.cmd(json!({"execute": "blockdev-del", "arguments": {"node-name": "thr"}}));
        assert_eq!(r["return"], json!({}), "{}: {r}", vm.label);
        let (_, r) = c.cmd(json!({"execute": "object-del", "arguments": {"id": "tg0"}}));
        assert_eq!(r["return"], json!({}), "{}: {r}", vm.label);
    }
}

#[test]
fn blockdev_create_writes_the_images_qemu_writes() {
    let mut seen: Vec<(String, Vec<Value>, Vec<u8>)> = vec![];
    for p in programs(Flavor::Qsd) {
        let (vm, sock) = qsd(&p);
        let (base, new) = (vm.path("base.qcow2"), vm.path("new.qcow2"));
        let s = |p: &PathBuf| p.display().to_string();
        assert!(
            run_tool(
                "qemu-img",
                &["create", "-q", "-f", "qcow2", &s(&base), "1M"]
            )
            .0
        );
        let mut c = Client::connect(&sock);
        c.negotiate();
        let create = |c: &mut Client, id: &str, options: Value| {
            let (_, r) = c.cmd(json!({"execute": "blockdev-create",
                "arguments": {"job-id": id, "options": options}}));
            assert_eq!(r, json!({"return": {}}), "{}", p.label);
            loop {
                let ev = c.line();
                if ev["event"] == "JOB_STATUS_CHANGE" && ev["data"]["status"] == "concluded" {
                    break;
                }
            }
            let (_, r) = c.cmd(json!({"execute": "job-dismiss", "arguments": {"id": id}}));
            assert_eq!(r, json!({"return": {}}), "{}", p.label);
        };
        create(
            &mut c,
            "c1",
            json!({"driver": "file", "filename": new, "size": 0}),
        );
        let (_, r) = c.cmd(
            json!({"execute": "blockdev-add", "arguments": {"driver": "file",
            "node-name": "new-file", "filename": new}}),
        );
        assert_eq!(r, json!({"return": {}}), "{}", p.label);
        create(
            &mut c,
            "c2",
            json!({"driver": "qcow2", "file": "new-file", "size": 1048576,
                "backing-file": base, "backing-fmt": "qcow2"}),
        );
        let (_, r) =
            c.cmd(json!({"execute": "blockdev-del", "arguments": {"node-name": "new-file"}}));
        assert_eq!(r, json!({"return": {}}), "{}", p.label);
        assert!(run_tool("qemu-img", &["check", &s(&new)]).0, "{}", p.label);
        let info = chain_info_in(&new, vm.dir.path());
        assert_eq!(info.len(), 2, "{}: {info:?}", p.label);
        assert_eq!(
            info[0]["backing-filename"], "<dir>/base.qcow2",
            "{}",
            p.label
        );
        let mut bytes = std::fs::read(&new).unwrap();
        // The backing name holds the work folder; compare the rest.
        let dir = vm.dir.path().display().to_string();
        if let Some(at) = bytes.windows(dir.len()).position(|w| w == dir.as_bytes()) {
            bytes.drain(at..at + dir.len());
        }
        seen.push((p.label.clone(), info, bytes));
    }
    assert_eq!(seen.len(), programs(Flavor::Qsd).len());
    if let [(m, a, x), (r, b, y)] = &seen[..] {
        assert_eq!(a, b, "qemu-img info of {m} and {r} differ");
        assert_eq!(x.len(), y.len(), "file lengths of {m} and {r} differ");
        assert!(x == y, "the image {m} wrote differs from {r}'s");
    }
}

/// Reference §3.11: after a commit the intermediates are stale. QEMU (and
/// the mock by default) accepts a new overlay on one; the mock's opt-in
/// strict mode refuses it with its own message.
#[test]
fn strict_mode_catches_an_overlay_on_an_image_a_commit_invalidated() {
    let mut strict = mock(Flavor::Qsd);
    strict.label.push_str(" --mock-strict");
    strict.pre.push("--mock-strict".into());
    let mut cases: Vec<(Program, bool)> = vec![(mock(Flavor::Qsd), false), (strict, true)];
    cases.extend(real(Flavor::Qsd).map(|p| (p, false)));
    for (p, is_strict) in cases {
        let (vm, sock) = qsd(&p);
        let s = |n: &str| vm.path(n).display().to_string();
        assert!(
            run_tool(
                "qemu-img",
                &["create", "-q", "-f", "qcow2", &s("base.qcow2"), "1M"]
            )
            .0
        );
        for (img, back) in [("mid.qcow2", "base.qcow2"), ("top.qcow2", "mid.qcow2")] {
            assert!(
                run_tool(
                    "qemu-img",
                    &[
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-b",
                        &s(back),
                        "-F",
                        "qcow2",
                        &s(img)
                    ]
                )
                .0
            );
        }
        let mut c = Client::connect(&sock);
        c.negotiate();
        for (node, back) in [("base", None), ("mid", Some("base")), ("top", Some("mid"))] {
            let mut a = json!({"driver": "qcow2", "node-name": node,
                "file": {"driver": "file", "filename": s(&format!("{node}.qcow2"))}});
            if let Some(b) = back {
                a["backing"] = json!(b);
            }
            let (_, r) = c.cmd(json!({"execute": "blockdev-add", "arguments": a}));
            assert_eq!(r, json!({"return": {}}), "{}", p.label);
        }
        let (_, r) = c.cmd(
            json!({"execute": "block-commit", "arguments": {"job-id": "c",
            "device": "top", "top-node": "mid", "base-node": "base"}}),
        );
        assert_eq!(r, json!({"return": {}}), "{}", p.label);
        loop {
            let ev = c.line();
            if ev["event"] == "JOB_STATUS_CHANGE" && ev["data"]["status"] == "null" {
                break;
            }
        }
        let (ev, r) = c.cmd(json!({"execute": "blockdev-snapshot-sync", "arguments": {
            "node-name": "mid", "snapshot-file": s("over-mid.qcow2"),
            "snapshot-node-name": "over-mid", "format": "qcow2"}}));
        let flagged = ev
            .iter()
            .any(|e| e["event"] == "X_MOCK_INVALIDATED_IMAGE_USE" && e["data"]["job"] == "c");
        assert_eq!(
            flagged, is_strict,
            "{}: the mock-only event: {ev:?}",
            p.label
        );
        if is_strict {
            let desc = r["error"]["desc"].as_str().unwrap_or_default();
            assert!(
                desc.starts_with("mock-qemu strict mode: a new overlay uses '")
                    && desc.contains("mid.qcow2")
                    && desc.contains("block-commit job 'c'"),
                "{}: {r}",
                p.label
            );
        } else {
            assert_eq!(
                r,
                json!({"return": {}}),
                "{}: as QEMU, no complaint",
                p.label
            );
        }
        // The base and the top stay usable in every mode.
        let (_, r) = c.cmd(json!({"execute": "blockdev-snapshot-sync", "arguments": {
            "node-name": "top", "snapshot-file": s("over-top.qcow2"),
            "snapshot-node-name": "over-top", "format": "qcow2"}}));
        assert_eq!(r, json!({"return": {}}), "{}", p.label);
    }
}

/// `--mock-jobs scaled:FACTOR`: the virtual clock follows the wall clock,
/// FACTOR times faster, with no `x-mock-clock-advance`: a 1 GiB mirror at
/// the simulated 1 GiB/s needs one virtual second, 1 ms of wall time at
/// 1000x. The event arrives on its own (the client just waits for it).
#[test]
fn scaled_real_time_moves_jobs_with_the_wall_clock() {
    let mut p = mock(Flavor::Qsd);
    p.pre
        .extend(["--mock-jobs".to_owned(), "scaled:1000".to_owned()]);
    let (_vm, sock) = qsd(&p);
    let mut c = Client::connect(&sock);
    c.negotiate();
    for n in ["src", "dst"] {
        let (_, r) = c.cmd(json!({"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": n, "size": 1u64 << 30}}));
        assert_eq!(r, json!({"return": {}}));
    }
    let (ev, r) = c.cmd(json!({"execute": "blockdev-mirror", "arguments": {"job-id": "m", "device": "src", "target": "dst", "sync": "full"}}));
    assert_eq!(r, json!({"return": {}}));
    assert!(
        ev.iter().all(|e| e["data"]["status"] != "ready"),
        "not ready before any time passed: {ev:?}"
    );
    loop {
        let e = c.line();
        if e["event"] == "BLOCK_JOB_READY" {
            assert_eq!(e["data"]["offset"], 1u64 << 30);
            break;
        }
    }
}

/// Images whose headers name each other as backing files: real QEMU 10.0
/// recurses without end on blockdev-add (it spins and grows until killed);
/// the mock answers with its own error instead of hanging (found by the
/// blockops fuzz target, regression input implicit-backing-chain-loops).
#[test]
fn a_backing_chain_that_loops_is_refused_not_followed_forever() {
    let p = mock(Flavor::Qsd);
    let (vm, sock) = qsd(&p);
    let s = |n: &str| vm.path(n).display().to_string();
    assert!(
        run_tool(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", &s("a.qcow2"), "1M"]
        )
        .0
    );
    assert!(
        run_tool(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                &s("a.qcow2"),
                "-F",
                "qcow2",
                &s("b.qcow2"),
                "1M"
            ]
        )
        .0
    );
    assert!(
        run_tool(
            "qemu-img",
            &[
                "rebase",
                "-q",
                "-u",
                "-b",
                &s("b.qcow2"),
                "-F",
                "qcow2",
                &s("a.qcow2")
            ]
        )
        .0
    );
    let mut c = Client::connect(&sock);
    c.negotiate();
    let (_, r) = c.cmd(json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2",
        "node-name": "a", "read-only": true, "file": {"driver": "file", "filename": s("a.qcow2")}}}));
    let desc = r["error"]["desc"].as_str().unwrap_or_default();
    assert!(
        desc.contains("mock-qemu: the backing chain loops back to"),
        "{r}"
    );
    let (_, r) = c.cmd(json!({"execute": "query-named-block-nodes"}));
    assert_eq!(r["return"], json!([]), "nothing of the failed add is left");
}

/// qemu-storage-daemon 10.0: `QEMU_QSD_10_0`, else the system's.
fn real_qsd_10() -> Option<Program> {
    real(Flavor::Qsd).or_else(|| {
        let path = PathBuf::from("/usr/bin/qemu-storage-daemon");
        path.exists().then(|| Program {
            label: format!("real {}", path.display()),
            path,
            pre: vec![],
            env: vec![],
        })
    })
}

fn qemu_img_ok(args: &[&str]) -> Option<String> {
    let out = Command::new("qemu-img").args(args).output().ok()?;
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How a session ends.
#[derive(Debug, Clone, Copy)]
enum Close {
    /// `blockdev-del` of the node, then `quit`.
    Del,
    /// `quit` with the node open (closed as the process exits).
    Quit,
    /// SIGTERM with the node open.
    Term,
}

/// Runs `cmds` on a qcow2 node `disk` over `image` (copied into the
/// program's folder), ends the session as `close` says, and returns the
/// image's bytes.
fn bitmap_session(p: &Program, image: &[u8], cmds: &[Value], close: Close) -> Vec<u8> {
    let (mut run, sock) = qsd(p);
    let img = run.path("disk.qcow2");
    std::fs::write(&img, image).unwrap();
    let mut c = Client::connect(&sock);
    c.negotiate();
    let add = json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2",
        "node-name": "disk", "file": {"driver": "file", "filename": img}}});
    for cmd in std::iter::once(&add).chain(cmds) {
        let (_, r) = c.cmd(cmd.clone());
        assert!(r.get("return").is_some(), "{}: {cmd} -> {r}", run.label);
    }
    match close {
        Close::Del => {
            let (_, r) = c.cmd(json!({"execute": "blockdev-del",
                "arguments": {"node-name": "disk"}}));
            assert!(r.get("return").is_some(), "{}: {r}", run.label);
            c.cmd(json!({"execute": "quit"}));
        }
        Close::Quit => {
            c.cmd(json!({"execute": "quit"}));
        }
        Close::Term => {
            let pid = libc::pid_t::try_from(run.child.id()).unwrap();
            // SAFETY: kill() on our own child's pid.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        }
    }
    let status = run.child.wait().unwrap();
    assert!(status.success(), "{}: {status}", run.label);
    std::fs::read(&img).unwrap()
}

/// Persistent bitmaps written by the mock as a qcow2 node closes — by
/// `blockdev-del`, `quit` or SIGTERM — are the bytes real
/// qemu-storage-daemon 10.0 writes for the same session (empty bitmaps,
/// default and explicit granularity, enabled and disabled; reopened,
/// marked in use and stored again; one removed), and `qemu-img check`
/// finds the images clean.
#[test]
fn persistent_bitmaps_reach_the_image_as_qemu_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.qcow2");
    let fresh_s = fresh.display().to_string();
    if qemu_img_ok(&["create", "-q", "-f", "qcow2", &fresh_s, "1M"]).is_none() {
        eprintln!("qemu-img not available: skipped");
        return;
    }
    let fresh = std::fs::read(&fresh).unwrap();
    let add = |name: &str, extra: Value| {
        let mut a = json!({"node": "disk", "name": name, "persistent": true});
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        json!({"execute": "block-dirty-bitmap-add", "arguments": a})
    };
    let first = vec![
        add("p", json!({"disabled": true})),
        add("wide", json!({"granularity": 131072})),
        json!({"execute": "block-dirty-bitmap-add",
            "arguments": {"node": "disk", "name": "transient"}}),
    ];
    let second = vec![
        json!({"execute": "block-dirty-bitmap-remove",
            "arguments": {"node": "disk", "name": "wide"}}),
        json!({"execute": "block-dirty-bitmap-enable",
            "arguments": {"node": "disk", "name": "p"}}),
        add("later", json!({})),
    ];
    let mut programs = vec![mock(Flavor::Qsd)];
    programs.extend(real_qsd_10());
    for close in [Close::Del, Close::Quit, Close::Term] {
        let results: Vec<(String, Vec<u8>, Vec<u8>)> = programs
            .iter()
            .map(|p| {
                let once = bitmap_session(p, &fresh, &first, close);
                let twice = bitmap_session(p, &once, &second, close);
                (p.label.clone(), once, twice)
            })
            .collect();
        let (_, once, twice) = &results[0];
        eprintln!("{close:?}: compared {} programs", results.len());
        // Two tables (clusters 4, 5), then the 64-byte directory.
        assert_eq!(once.len(), 0x60040, "{close:?}: file length");
        for (step, bytes) in [("first", once), ("second", twice)] {
            let f = dir.path().join(format!("{close:?}-{step}.qcow2"));
            std::fs::write(&f, bytes).unwrap();
            let f = f.display().to_string();
            qemu_img_ok(&["check", "-q", &f]);
            let info = qemu_img_ok(&["info", "--output=json", &f]).unwrap();
            let info: Value = serde_json::from_str(&info).unwrap();
            let names: Vec<&str> = info["format-specific"]["data"]["bitmaps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["name"].as_str().unwrap())
                .collect();
            let want: &[&str] = if step == "first" {
                &["wide", "p"]
            } else {
                &["p", "later"]
            };
            assert_eq!(names, want, "{close:?} {step}: {info}");
        }
        for (label, o, t) in &results[1..] {
            assert!(
                o == once,
                "{close:?}: first session differs from {label}'s bytes"
            );
            assert!(
                t == twice,
                "{close:?}: second session differs from {label}'s bytes"
            );
        }
    }
}

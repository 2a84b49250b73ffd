//! `mock-qemu`: the binary. Takes QEMU's command line, serves QMP monitors.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use mock_qemu::cmdline::{self, Config, Endpoint};
use mock_qemu::core::{Core, CoreConfig};
use mock_qemu::model::clock::VirtualTime;
use mock_qemu::model::vm::Chardev;
use mock_qemu::profile::{Flavor, Profile};
use mock_qemu::server::{Listener, MockQemu};
use mock_qemu::sys;

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let prog = cmdline::program_name(argv.first().map_or("mock-qemu", String::as_str));
    let cfg = match cmdline::parse(&prog, &argv[1..], |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e @ cmdline::CmdlineError::Getopt(_)) => {
            // glibc's getopt names the program by argv[0] as given.
            eprintln!("{}: {e}", argv.first().map_or("mock-qemu", String::as_str));
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("{prog}: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = run(&prog, cfg) {
        eprintln!("{prog}: {e:#}");
        std::process::exit(1);
    }
}

enum Bound {
    Unix(std::os::unix::net::UnixListener, Option<PathBuf>),
    Tcp(std::net::TcpListener),
}

impl Bound {
    /// QEMU's chardev filename of a listening socket (`query-chardev`).
    fn describe(&self) -> String {
        match self {
            Bound::Unix(l, path) => {
                let p = path.clone().or_else(|| {
                    l.local_addr()
                        .ok()
                        .and_then(|a| a.as_pathname().map(PathBuf::from))
                });
                format!("unix:{},server=on", p.unwrap_or_default().display())
            }
            Bound::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp:{}:{},server=on", a.ip(), a.port()),
                Err(_) => "tcp:,server=on".into(),
            },
        }
    }
}

fn bind(ep: &Endpoint) -> Result<Bound> {
    Ok(match ep {
        Endpoint::Unix(path) => {
            // QEMU replaces a stale socket file.
            let _ = std::fs::remove_file(path);
            // bind() creates the file before listen() runs; a client that
            // connects in between is refused. Bind a private name and rename
            // it into place, so the path appears only once it accepts.
            let mut tmp = path.clone().into_os_string();
            tmp.push(format!(".{}.tmp", std::process::id()));
            let tmp = PathBuf::from(tmp);
            let _ = std::fs::remove_file(&tmp);
            let l = std::os::unix::net::UnixListener::bind(&tmp)
                .with_context(|| format!("Failed to bind socket to {}", path.display()))?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("Failed to bind socket to {}", path.display()))?;
            Bound::Unix(l, Some(path.clone()))
        }
        Endpoint::Tcp { host, port } => {
            let host = if host.is_empty() {
                "127.0.0.1"
            } else {
                host.as_str()
            };
            let l = std::net::TcpListener::bind((host, *port))
                .with_context(|| format!("Failed to bind socket to {host}:{port}"))?;
            Bound::Tcp(l)
        }
        Endpoint::Fd(fd) => match sys::adopt_listener(*fd)
            .with_context(|| format!("fd={fd} is not a listening socket"))?
        {
            sys::Inherited::Unix(l) => Bound::Unix(l, None),
            sys::Inherited::Tcp(l) => Bound::Tcp(l),
        },
    })
}

fn print_version(prog: &str, profile: &Profile) {
    let v = serde_json::Value::from(profile.query_version());
    let q = &v["qemu"];
    let pkg = v["package"].as_str().unwrap_or("");
    let what = match profile.flavor() {
        Flavor::Qsd => format!("{prog} version"),
        Flavor::System => "QEMU emulator version".to_owned(),
    };
    let pkg = if pkg.is_empty() {
        String::new()
    } else {
        format!(" ({})", pkg.trim_start())
    };
    println!("{what} {}.{}.{}{pkg}", q["major"], q["minor"], q["micro"]);
    println!("Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers");
}

fn run(prog: &str, cfg: Config) -> Result<()> {
    let profile = Profile::get(cfg.version, cfg.flavor).context("loading the profile")?;
    if cfg.print_help {
        println!("usage: {prog} [QEMU options]  (mock-qemu; profile {}; see README for accepted options)", profile.label());
        return Ok(());
    }
    if cfg.print_version {
        print_version(prog, &profile);
        return Ok(());
    }
    if cfg.monitors.is_empty() && cfg.flavor == Flavor::Qsd {
        // qemu-storage-daemon with no monitor would serve nothing; QEMU runs anyway.
    }
    // Bind before forking so the parent of -daemonize exits only when the monitors listen.
    let bound: Vec<(Bound, usize)> = cfg
        .monitors
        .iter()
        .map(|m| bind(&m.endpoint).map(|b| (b, cfg.max_clients)))
        .collect::<Result<_>>()?;
    let daemon = if cfg.daemonize {
        Some(sys::daemonize().context("daemonize")?)
    } else {
        None
    };
    if let Some(pidfile) = &cfg.pidfile {
        std::fs::write(pidfile, format!("{}\n", std::process::id()))
            .with_context(|| format!("Cannot open pid file {}", pidfile.display()))?;
    }
    if let Some(d) = daemon {
        d.ready();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let mut core = Core::new(
        Arc::clone(&profile),
        &CoreConfig {
            epoch: VirtualTime(epoch),
            start_paused: cfg.start_paused,
            stepped_jobs: cfg.stepped_jobs,
            strict: cfg.strict,
            kvm: sys::kvm_accelerated(&cfg.accel),
            chardevs: cfg
                .monitors
                .iter()
                .zip(&bound)
                .map(|(m, (b, _))| Chardev {
                    label: m.label.clone(),
                    filename: b.describe(),
                })
                .collect(),
        },
    );
    core.set_host_io(Box::new(mock_qemu::host::RealHostIo::default()));
    for spec in &cfg.faults {
        let mut parts = spec.split(':');
        let mut a = mock_qemu::qmp::qobject::QDict::new();
        a.put("node-name", parts.next().unwrap_or_default());
        a.put("operation", parts.next().unwrap_or("read"));
        a.put("errno", parts.next().unwrap_or("EIO"));
        if let Some(o) = parts.next() {
            let at: u64 = o
                .parse()
                .map_err(|_| anyhow::anyhow!("--mock-fault {spec}: '{o}' is not a byte offset"))?;
            a.put("offset", at);
        }
        core.inject_fault(&a)
            .map_err(|e| anyhow::anyhow!("--mock-fault {spec}: {}", e.desc))?;
    }
    core.run_cmdline(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mock = MockQemu::new(core);
    let mut cleanup: Vec<PathBuf> = Vec::new();
    rt.block_on(async {
        for (b, max) in bound {
            let l = match b {
                Bound::Unix(l, path) => {
                    l.set_nonblocking(true)?;
                    if let Some(p) = &path {
                        cleanup.push(p.clone());
                    }
                    Listener::Unix(tokio::net::UnixListener::from_std(l)?, path)
                }
                Bound::Tcp(l) => {
                    l.set_nonblocking(true)?;
                    Listener::Tcp(tokio::net::TcpListener::from_std(l)?)
                }
            };
            let m = mock.clone();
            tokio::spawn(async move { m.serve_monitor(l, max).await });
        }
        if let Some(ppm) = cfg.time_scale_ppm {
            let scale = ppm as f64 / 1e6;
            // Scaled real time: every 10 ms of wall time moves the virtual
            // clock by the scaled amount actually elapsed.
            let m = mock.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
                let mut last = tokio::time::Instant::now();
                let mut carry = 0.0f64;
                loop {
                    tick.tick().await;
                    let now = tokio::time::Instant::now();
                    let us = now.duration_since(last).as_secs_f64() * 1e6 * scale + carry;
                    last = now;
                    let whole = us.floor();
                    carry = us - whole;
                    m.tick(whole as u64);
                }
            });
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::select! {
            _ = mock.wait_shutdown() => {}
            _ = term.recv() => mock.terminate("host-signal"),
            _ = int.recv() => mock.terminate("host-signal"),
            _ = hup.recv() => mock.terminate("host-signal"),
        }
        // Let sessions write what is queued (the reply to quit, SHUTDOWN).
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        Ok::<_, std::io::Error>(())
    })?;
    for p in cleanup {
        let _ = std::fs::remove_file(p);
    }
    if let Some(p) = &cfg.pidfile {
        let _ = std::fs::remove_file(p);
    }
    if false {
        bail!("unreachable");
    }
    Ok(())
}

//! QEMU-compatible command line: what launchers (libvirt, scripts, test
//! harnesses) pass to `qemu-storage-daemon` or `qemu-system-x86_64`.
//!
//! Options come in QEMU's forms: `-opt value`, `--opt value` and
//! `--opt=value`. Options the mock understands configure it; options it
//! accepts and ignores are listed in [`IGNORED_WITH_ARG`] and
//! [`IGNORED_FLAGS`] (and in the README); anything else is refused with a
//! message in QEMU's style and exit status 1.

use std::path::PathBuf;

use crate::profile::{Flavor, ProfileError, Version};
use crate::qmp::qobject::{QDict, QObject};

/// How a monitor is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket path the mock binds.
    Unix(PathBuf),
    /// A TCP address the mock binds (`host` empty means loopback).
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// An already listening socket inherited from the parent (`fd=N`).
    Fd(i32),
}

/// A QMP monitor to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    /// Where it listens.
    pub endpoint: Endpoint,
    /// `pretty=on` (accepted; output stays compact).
    pub pretty: bool,
    /// The chardev's id (`-chardev id=…`; QEMU names the one `-qmp`
    /// creates `compat_monitorN`), as `query-chardev` shows it.
    pub label: String,
}

/// Everything the command line decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// Profile version (`--profile`, `MOCK_QEMU_PROFILE`; default 10.0).
    pub version: Version,
    /// Program impersonated (`--flavor`, `MOCK_QEMU_FLAVOR`, or inferred).
    pub flavor: Flavor,
    /// QMP monitors.
    pub monitors: Vec<Monitor>,
    /// `-pidfile`.
    pub pidfile: Option<PathBuf>,
    /// `-daemonize`.
    pub daemonize: bool,
    /// `-S`.
    pub start_paused: bool,
    /// `-name`.
    pub name: Option<String>,
    /// Sessions per monitor at once (QEMU: 1).
    pub max_clients: usize,
    /// Stepped job mode and its throughput (`--mock-jobs stepped[:BYTES_PER_S]`).
    pub stepped_jobs: Option<u64>,
    /// `--mock-guest-unplug` (`MOCK_QEMU_GUEST_UNPLUG=1`): the simulated
    /// guest ejects PCI devices `device_del` asks it to, while it runs (a
    /// simulator extension; QEMU's paused or OS-less guest never does).
    pub guest_unplug: bool,
    /// Strict mode (`--mock-strict`, `MOCK_QEMU_STRICT=1`): refuse uses of
    /// images a commit invalidated (a simulator extension; QEMU accepts them).
    pub strict: bool,
    /// Scaled real time (`--mock-jobs scaled[:FACTOR]`): the virtual clock
    /// runs FACTOR times as fast as the wall clock, and jobs progress with
    /// it (at their speed or the simulated throughput). In millionths.
    pub time_scale_ppm: Option<u64>,
    /// `--mock-fault NODE:read|write[:EIO|ENOSPC[:OFFSET]]`, in order.
    pub faults: Vec<String>,
    /// `--version` / `-version` was asked for.
    pub print_version: bool,
    /// `--help` / `-h`.
    pub print_help: bool,
    /// Options accepted and ignored, as given (for the log).
    pub ignored: Vec<String>,
    /// `-blockdev` / `--blockdev` values, in order (applied at start-up).
    pub blockdevs: Vec<String>,
    /// `-object` / `--object` values, in order (created before the
    /// block devices, as QEMU creates its early backends first).
    pub objects: Vec<String>,
    /// `-device` values (`DRIVER,key=value…` or JSON), in order (created
    /// after the block devices, as QEMU does).
    pub devices: Vec<String>,
    /// The machine type of `-M`/`-machine` (`none`, `pc`, `q35`,
    /// `pc-i440fx-7.2`, …; `None`: the default, `pc`).
    pub machine: Option<String>,
    /// Accelerators to try, in order (`-accel`, `-machine accel=a:b`,
    /// `-enable-kvm`); empty: QEMU's default, `tcg`.
    pub accel: Vec<String>,
    /// `-cpu MODEL[,…]`: the model (`None`: the machine's default).
    pub cpu: Option<String>,
    /// `-smp`: the vCPUs at start (`cpus=`, or the product of the
    /// topology given; `None`: 1).
    pub smp: Option<u64>,
}

/// A command line QEMU would refuse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// Unknown option (text is QEMU's, without the program name prefix).
    #[error("{0}")]
    Invalid(String),
    /// Refused by getopt (qemu-storage-daemon's `--long` options): printed
    /// after `argv[0]` exactly as given, as glibc's getopt does.
    #[error("{0}")]
    Getopt(String),
    /// Bad profile or flavor name.
    #[error("{0}")]
    Profile(String),
}

impl From<ProfileError> for CmdlineError {
    fn from(e: ProfileError) -> Self {
        CmdlineError::Profile(e.to_string())
    }
}

/// System-emulator options taking a value that the mock accepts and ignores.
pub const IGNORED_WITH_ARG: &[&str] = &[
    "display",
    "m",
    "boot",
    "rtc",
    "global",
    "uuid",
    "msg",
    "sandbox",
    "overcommit",
    "drive",
    "netdev",
    "nic",
    "serial",
    "parallel",
    "vga",
    "vnc",
    "k",
    "L",
    "bios",
    "audiodev",
    "incoming",
    "d",
    "D",
    "trace",
    "T",
    "add-fd",
    "fsdev",
    "smbios",
    "numa",
    "mem-path",
    "spice",
    "usbdevice",
    "run-with",
    "action",
    "compat",
    "icount",
    "set",
    "fw_cfg",
    "plugin",
    "monitor-fd",
    "export",
    "nbd-server",
    "iothread",
    "runas",
    "chroot",
];

/// Flags (no value) that the mock accepts and ignores.
pub const IGNORED_FLAGS: &[&str] = &[
    "mem-prealloc",
    "nodefaults",
    "no-user-config",
    "nographic",
    "no-shutdown",
    "no-reboot",
    "no-hpet",
    "no-acpi",
    "usb",
    "snapshot",
    "full-screen",
    "no-fd-bootchk",
    "only-migratable",
    "preconfig",
    "enable-fips",
    "s",
    "old-param",
];

/// Parses `key=value,key2=value2` QemuOpts text; `,,` is a literal comma.
/// A first element without `=` is returned under `implied` (e.g. the
/// chardev backend or the monitor's chardev name).
pub fn parse_opts(text: &str, implied: &str) -> Vec<(String, String)> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    let mut out = Vec::new();
    for (i, p) in parts.into_iter().enumerate() {
        if p.is_empty() {
            continue;
        }
        match p.split_once('=') {
            Some((k, v)) => out.push((k.to_owned(), v.to_owned())),
            None if i == 0 && !implied.is_empty() => out.push((implied.to_owned(), p)),
            None => match p.strip_prefix("no") {
                // QemuOpts boolean shorthands: `server`, `nowait`.
                Some(rest) if !rest.is_empty() => out.push((rest.to_owned(), "off".to_owned())),
                _ => out.push((p, "on".to_owned())),
            },
        }
    }
    out
}

fn get<'a>(opts: &'a [(String, String)], key: &str) -> Option<&'a str> {
    opts.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn is_on(v: Option<&str>) -> bool {
    matches!(v, Some("on" | "yes" | "true" | "y"))
}

/// A `-chardev`/`--chardev` definition.
#[derive(Debug, Clone)]
struct Chardev {
    id: String,
    endpoint: Result<Endpoint, String>,
}

fn chardev_endpoint(opts: &[(String, String)]) -> Result<Endpoint, String> {
    let backend = get(opts, "backend").unwrap_or("");
    if backend != "socket" {
        return Err(format!(
            "chardev backend '{backend}' is not supported by mock-qemu (only 'socket')"
        ));
    }
    if !is_on(get(opts, "server")) {
        return Err("mock-qemu serves monitors only in server mode (server=on)".into());
    }
    if let Some(fd) = get(opts, "fd") {
        return fd
            .parse()
            .map(Endpoint::Fd)
            .map_err(|_| format!("Parameter 'fd' expects an integer, got '{fd}'"));
    }
    if let Some(path) = get(opts, "path") {
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    if let Some(port) = get(opts, "port") {
        let port = port.parse().map_err(|_| format!("invalid port '{port}'"))?;
        return Ok(Endpoint::Tcp {
            host: get(opts, "host").unwrap_or("").to_owned(),
            port,
        });
    }
    Err("chardev: socket: no local address specified".into())
}

/// `-qmp unix:PATH,server=on,wait=off` / `tcp:HOST:PORT,…`.
fn qmp_endpoint(spec: &str) -> Result<Endpoint, CmdlineError> {
    let opts = parse_opts(spec, "addr");
    let addr = get(&opts, "addr").unwrap_or("");
    if let Some(path) = addr.strip_prefix("unix:") {
        Ok(Endpoint::Unix(PathBuf::from(path)))
    } else if let Some(hp) = addr.strip_prefix("tcp:") {
        let (host, port) = hp.rsplit_once(':').ok_or_else(|| {
            CmdlineError::Invalid(format!("-qmp {spec}: address must be HOST:PORT"))
        })?;
        let port = port
            .parse()
            .map_err(|_| CmdlineError::Invalid(format!("-qmp {spec}: invalid port '{port}'")))?;
        Ok(Endpoint::Tcp {
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
        })
    } else {
        Err(CmdlineError::Invalid(format!(
            "-qmp {spec}: mock-qemu supports unix: and tcp: monitors"
        )))
    }
}

/// A `-blockdev` value: QEMU's JSON form (`{"driver": …}`). The dotted
/// key=value form needs the schema's type conversions and is not supported.
pub fn blockdev_args(spec: &str) -> Result<QDict, String> {
    if !spec.trim_start().starts_with('{') {
        return Err("mock-qemu supports only the JSON form of -blockdev ({\"driver\": …})".into());
    }
    json_dict(spec)
}

/// `-object`: the JSON form, or `TYPE,id=ID,key=value…` (values stay
/// strings, so only string-typed properties pass the schema check).
pub fn object_args(spec: &str) -> Result<QDict, String> {
    if spec.trim_start().starts_with('{') {
        return json_dict(spec);
    }
    let mut d = QDict::new();
    for (i, part) in spec.split(',').enumerate() {
        match part.split_once('=') {
            Some((k, v)) => d.put(k, v),
            None if i == 0 => d.put("qom-type", part),
            None => return Err(format!("Invalid parameter '{part}'")),
        }
    }
    Ok(d)
}

/// `-device`: the JSON form, or `DRIVER,key=value…` (QemuOpts: `,,` is a
/// comma; values stay strings, as device properties parse them).
pub fn device_args(spec: &str) -> Result<QDict, String> {
    if spec.trim_start().starts_with('{') {
        return json_dict(spec);
    }
    let mut d = QDict::new();
    for (k, v) in parse_opts(spec, "driver") {
        d.put(&k, v.as_str());
    }
    Ok(d)
}

fn json_dict(spec: &str) -> Result<QDict, String> {
    use crate::qmp::json::{JsonStreamer, Parsed};
    let mut items = Vec::new();
    let mut s = JsonStreamer::new();
    s.feed(spec.as_bytes(), &mut items);
    s.finish(&mut items);
    match items.into_iter().next() {
        Some(Parsed::Value(QObject::Dict(d))) => Ok(d),
        Some(Parsed::Error(e)) => Err(e.to_string()),
        _ => Err("expected a JSON object".into()),
    }
}

/// The program name QEMU would print in messages (`argv[0]`'s base name).
pub fn program_name(argv0: &str) -> String {
    std::path::Path::new(argv0)
        .file_name()
        .map_or_else(|| "mock-qemu".into(), |n| n.to_string_lossy().into_owned())
}

/// Default simulated throughput of stepped jobs without a speed limit.
pub const DEFAULT_THROUGHPUT: u64 = 1 << 30;

/// `instant`, `stepped` or `stepped:BYTES_PER_SECOND`.
fn parse_job_mode(v: &str, cfg: &mut Config) -> Result<Option<u64>, CmdlineError> {
    cfg.time_scale_ppm = None;
    match v.split_once(':') {
        None if v == "instant" => Ok(None),
        None if v == "stepped" => Ok(Some(DEFAULT_THROUGHPUT)),
        None if v == "scaled" => {
            cfg.time_scale_ppm = Some(1_000_000);
            Ok(Some(DEFAULT_THROUGHPUT))
        }
        Some(("scaled", f)) => {
            let f = f
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f >= 1e-6 && *f <= 1e9);
            cfg.time_scale_ppm = Some(f.map(|f| (f * 1e6) as u64).ok_or_else(|| {
                CmdlineError::Invalid(format!(
                    "--mock-jobs: '{v}': scaled:FACTOR needs a positive factor"
                ))
            })?);
            Ok(Some(DEFAULT_THROUGHPUT))
        }
        Some(("stepped", bps)) => bps
            .parse::<u64>()
            .ok()
            .filter(|b| *b > 0)
            .map(Some)
            .ok_or_else(|| {
                CmdlineError::Invalid(format!(
                    "--mock-jobs: '{bps}' is not a positive number of bytes per second"
                ))
            }),
        _ => Err(CmdlineError::Invalid(format!(
            "--mock-jobs: '{v}' is not instant, stepped, stepped:BYTES_PER_S, scaled or scaled:FACTOR"
        ))),
    }
}

/// Parses a command line (without `argv[0]`). `env` supplies
/// `MOCK_QEMU_PROFILE` / `MOCK_QEMU_FLAVOR`; `argv0` picks the default flavor
/// (`…storage-daemon` → qsd, `qemu-system…` → system).
pub fn parse(
    argv0: &str,
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, CmdlineError> {
    let mut cfg = Config {
        max_clients: 1,
        ..Config::default()
    };
    if let Some(p) = env("MOCK_QEMU_PROFILE") {
        cfg.version = p.parse()?;
    }
    let mut flavor: Option<Flavor> = env("MOCK_QEMU_FLAVOR").map(|f| f.parse()).transpose()?;
    if let Some(m) = env("MOCK_QEMU_JOBS") {
        cfg.stepped_jobs = parse_job_mode(&m, &mut cfg)?;
    }
    if env("MOCK_QEMU_STRICT").is_some_and(|v| v == "1") {
        cfg.strict = true;
    }
    if env("MOCK_QEMU_GUEST_UNPLUG").is_some_and(|v| v == "1") {
        cfg.guest_unplug = true;
    }
    if let Some(n) = env("MOCK_QEMU_MAX_CLIENTS") {
        cfg.max_clients = n.parse().map_err(|_| {
            CmdlineError::Invalid(format!("MOCK_QEMU_MAX_CLIENTS: '{n}' is not a number"))
        })?;
    }
    let prog = program_name(argv0);
    let mut system_hint = prog.starts_with("qemu-system") || prog.starts_with("qemu-kvm");
    let mut qsd_hint = prog.contains("storage-daemon");

    let mut chardevs: Vec<Chardev> = Vec::new();
    let mut monitor_refs: Vec<(String, bool)> = Vec::new();
    let mut compat_monitors = 0;
    let mut i = 0;
    while i < args.len() {
        let raw = &args[i];
        i += 1;
        let Some(stripped) = raw.strip_prefix("--").or_else(|| raw.strip_prefix('-')) else {
            // A bare argument: the system emulator takes it as a disk image.
            return Err(CmdlineError::Invalid(format!(
                "{raw}: mock-qemu does not take a disk image argument"
            )));
        };
        let double_dash = raw.starts_with("--");
        let (name, inline) = match stripped.split_once('=') {
            Some((n, v)) if double_dash => (n, Some(v.to_owned())),
            _ => (stripped, None),
        };
        let mut value = |name: &str| -> Result<String, CmdlineError> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            let v = args.get(i).cloned().ok_or_else(|| {
                CmdlineError::Invalid(if double_dash {
                    format!("option '--{name}' requires an argument")
                } else {
                    format!("-{name}: requires an argument")
                })
            })?;
            i += 1;
            Ok(v)
        };
        match name {
            "profile" => cfg.version = value(name)?.parse()?,
            "flavor" => flavor = Some(value(name)?.parse()?),
            "mock-jobs" => {
                let v = value(name)?;
                cfg.stepped_jobs = parse_job_mode(&v, &mut cfg)?;
            }
            "mock-strict" => cfg.strict = true,
            "mock-guest-unplug" => cfg.guest_unplug = true,
            "mock-fault" => {
                let v = value(name)?;
                cfg.faults.push(v);
            }
            "mock-max-clients" => {
                let v = value(name)?;
                cfg.max_clients = v.parse().map_err(|_| {
                    CmdlineError::Invalid(format!("--mock-max-clients: '{v}' is not a number"))
                })?;
            }
            "chardev" => {
                let opts = parse_opts(&value(name)?, "backend");
                let id = get(&opts, "id").unwrap_or("").to_owned();
                if id.is_empty() {
                    return Err(CmdlineError::Invalid("chardev: no id specified".into()));
                }
                chardevs.push(Chardev {
                    id,
                    endpoint: chardev_endpoint(&opts),
                });
            }
            "monitor" | "mon" => {
                if name == "monitor" && !double_dash {
                    // -monitor (system emulator) is the HMP monitor: accepted, not served.
                    cfg.ignored.push(format!("-monitor {}", value(name)?));
                    compat_monitors += 1;
                    continue;
                }
                if name == "monitor" {
                    qsd_hint = true;
                } else {
                    system_hint = true;
                }
                let opts = parse_opts(&value(name)?, "chardev");
                let mode = get(&opts, "mode").unwrap_or(if name == "monitor" {
                    "control"
                } else {
                    "readline"
                });
                let cd = get(&opts, "chardev").unwrap_or("").to_owned();
                if mode != "control" {
                    cfg.ignored
                        .push(format!("-mon chardev={cd},mode={mode} (HMP monitor)"));
                    continue;
                }
                monitor_refs.push((cd, is_on(get(&opts, "pretty"))));
            }
            "qmp" | "qmp-pretty" => {
                system_hint = true;
                let ep = qmp_endpoint(&value(name)?)?;
                cfg.monitors.push(Monitor {
                    endpoint: ep,
                    pretty: name == "qmp-pretty",
                    label: format!("compat_monitor{compat_monitors}"),
                });
                compat_monitors += 1;
            }
            "pidfile" => cfg.pidfile = Some(PathBuf::from(value(name)?)),
            "daemonize" => cfg.daemonize = true,
            "S" => {
                system_hint = true;
                cfg.start_paused = true;
            }
            "name" => {
                let opts = parse_opts(&value(name)?, "guest");
                cfg.name = get(&opts, "guest").map(str::to_owned);
            }
            "version" | "V" => cfg.print_version = true,
            "help" | "h" => cfg.print_help = true,
            "blockdev" => {
                let v = value(name)?;
                cfg.blockdevs.push(v);
            }
            "object" => {
                let v = value(name)?;
                cfg.objects.push(v);
            }
            "device" => {
                system_hint = true;
                let v = value(name)?;
                cfg.devices.push(v);
            }
            "machine" | "M" => {
                system_hint = true;
                let v = value(name)?;
                // `TYPE,key=value…` or `type=TYPE,…`; options merge, the
                // last type given wins. Other keys (accel, usb, …) are
                // accepted and ignored.
                let opts = parse_opts(&v, "type");
                if let Some(t) = get(&opts, "type") {
                    cfg.machine = Some(t.to_owned());
                }
                if let Some(a) = get(&opts, "accel") {
                    cfg.accel.extend(a.split(':').map(str::to_owned));
                }
                cfg.ignored.push(format!("-{name} {v}"));
            }
            "cpu" => {
                system_hint = true;
                let v = value(name)?;
                cfg.cpu = v.split(',').next().map(str::to_owned);
            }
            "smp" => {
                system_hint = true;
                let v = value(name)?;
                let opts = parse_opts(&v, "cpus");
                let n = |k: &str| get(&opts, k).and_then(|x| x.parse::<u64>().ok());
                cfg.smp = n("cpus").or_else(|| {
                    let parts = ["sockets", "dies", "clusters", "cores", "threads"];
                    let given: Vec<u64> = parts.iter().filter_map(|k| n(k)).collect();
                    (!given.is_empty()).then(|| given.iter().product())
                });
            }
            "accel" => {
                system_hint = true;
                let v = value(name)?;
                let opts = parse_opts(&v, "accel");
                if let Some(a) = get(&opts, "accel") {
                    cfg.accel.push(a.to_owned());
                }
            }
            "enable-kvm" => {
                system_hint = true;
                cfg.accel.push("kvm".into());
            }
            n if IGNORED_WITH_ARG.contains(&n) => {
                if !double_dash {
                    system_hint = true;
                }
                let v = value(n)?;
                cfg.ignored.push(format!("-{n} {v}"));
            }
            n if IGNORED_FLAGS.contains(&n) => {
                system_hint = true;
                cfg.ignored.push(format!("-{n}"));
            }
            _ => {
                return Err(if double_dash {
                    CmdlineError::Getopt(format!("unrecognized option '{raw}'"))
                } else {
                    CmdlineError::Invalid(format!("{raw}: invalid option"))
                })
            }
        }
    }
    for (cd, pretty) in monitor_refs {
        let ch = chardevs
            .iter()
            .find(|c| c.id == cd)
            .ok_or_else(|| CmdlineError::Invalid(format!("chardev \"{cd}\" not found")))?;
        let endpoint = ch.endpoint.clone().map_err(CmdlineError::Invalid)?;
        cfg.monitors.push(Monitor {
            endpoint,
            pretty,
            label: cd,
        });
    }
    cfg.flavor = flavor.unwrap_or(if qsd_hint || !system_hint {
        Flavor::Qsd
    } else {
        Flavor::System
    });
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Config, CmdlineError> {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        parse("mock-qemu", &args, |_| None)
    }

    #[test]
    fn qsd_style_monitor_on_a_unix_socket() {
        let c = p(&[
            "--chardev",
            "socket,path=/tmp/q.sock,server=on,wait=off,id=c",
            "--monitor",
            "chardev=c",
        ])
        .unwrap();
        assert_eq!(c.flavor, Flavor::Qsd);
        assert_eq!(
            c.monitors,
            vec![Monitor {
                endpoint: Endpoint::Unix("/tmp/q.sock".into()),
                pretty: false,
                label: "c".into(),
            }]
        );
    }

    #[test]
    fn system_style_qmp_unix_and_tcp() {
        let c = p(&[
            "-S",
            "-qmp",
            "unix:/tmp/a,server=on,wait=off",
            "-qmp",
            "tcp:127.0.0.1:4444,server,nowait",
            "-nodefaults",
            "-display",
            "none",
        ])
        .unwrap();
        assert_eq!(c.flavor, Flavor::System);
        assert!(c.start_paused);
        assert_eq!(c.monitors[0].endpoint, Endpoint::Unix("/tmp/a".into()));
        assert_eq!(
            c.monitors[1].endpoint,
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 4444
            }
        );
    }

    #[test]
    fn libvirt_style_inherited_fd_and_mon() {
        let c = p(&[
            "-name",
            "guest=vm1,debug-threads=on",
            "-chardev",
            "socket,id=charmonitor,fd=23,server=on,wait=off",
            "-mon",
            "chardev=charmonitor,id=monitor,mode=control",
            "-pidfile",
            "/run/x.pid",
            "-daemonize",
            "-machine",
            "none,accel=kvm:tcg",
        ])
        .unwrap();
        assert_eq!(c.flavor, Flavor::System);
        assert_eq!(c.monitors[0].endpoint, Endpoint::Fd(23));
        assert_eq!(c.name.as_deref(), Some("vm1"));
        assert!(c.daemonize);
        assert_eq!(
            c.pidfile.as_deref(),
            Some(std::path::Path::new("/run/x.pid"))
        );
    }

    #[test]
    fn unknown_options_are_refused_like_qemu() {
        assert_eq!(
            p(&["-bogus"]).unwrap_err(),
            CmdlineError::Invalid("-bogus: invalid option".into())
        );
        assert_eq!(
            p(&["--bogus"]).unwrap_err(),
            CmdlineError::Getopt("unrecognized option '--bogus'".into())
        );
    }

    #[test]
    fn cpu_model_and_vcpu_count() {
        let c = p(&["-cpu", "qemu64", "-smp", "1,sockets=1,cores=1,threads=1"]).unwrap();
        assert_eq!((c.cpu.as_deref(), c.smp), (Some("qemu64"), Some(1)));
        let c = p(&["-cpu", "host,migratable=on", "-smp", "sockets=2,cores=2"]).unwrap();
        assert_eq!((c.cpu.as_deref(), c.smp), (Some("host"), Some(4)));
        let c = p(&["-S"]).unwrap();
        assert_eq!((c.cpu, c.smp), (None, None));
    }

    #[test]
    fn accelerators_in_the_order_given() {
        let c = p(&["-machine", "none,accel=kvm:tcg", "-S"]).unwrap();
        assert_eq!(c.accel, ["kvm", "tcg"]);
        let c = p(&["-accel", "tcg", "-enable-kvm"]).unwrap();
        assert_eq!(c.accel, ["tcg", "kvm"]);
        assert!(!crate::sys::kvm_accelerated(&c.accel), "tcg comes first");
        assert!(!crate::sys::kvm_accelerated(&[]), "QEMU's default is tcg");
    }

    #[test]
    fn profile_from_option_and_environment() {
        let c = p(&["--profile", "qemu-7.2"]).unwrap();
        assert_eq!(c.version, Version::V7_2);
        let c = parse("qemu-system-x86_64", &[], |k| {
            (k == "MOCK_QEMU_PROFILE").then(|| "qemu-5.2".to_owned())
        })
        .unwrap();
        assert_eq!(c.version, Version::V5_2);
        assert_eq!(c.flavor, Flavor::System);
        assert!(p(&["--profile", "qemu-9.9"]).is_err());
    }

    #[test]
    fn opts_escape_commas_and_shorthands() {
        let o = parse_opts("socket,path=/a,,b,server,nowait", "backend");
        assert_eq!(get(&o, "backend"), Some("socket"));
        assert_eq!(get(&o, "path"), Some("/a,b"));
        assert_eq!(get(&o, "server"), Some("on"));
        assert_eq!(get(&o, "wait"), Some("off"));
    }

    #[test]
    fn devices_and_the_machine_type_are_kept_for_start_up() {
        let c = p(&[
            "-machine",
            "pc-q35-7.2,usb=off,dump-guest-core=off",
            "-device",
            r#"{"driver": "pcie-root-port", "id": "pci.1", "chassis": 1}"#,
            "-device",
            "virtio-blk-pci,drive=n0,id=vd0,serial=a,,b",
        ])
        .unwrap();
        assert_eq!(c.flavor, Flavor::System);
        assert_eq!(c.machine.as_deref(), Some("pc-q35-7.2"));
        assert_eq!(c.devices.len(), 2);
        let json = device_args(&c.devices[0]).unwrap();
        assert_eq!(json.get("chassis").map(|v| v.kind()), Some("number"));
        let kv = device_args(&c.devices[1]).unwrap();
        assert_eq!(
            kv.get("driver").and_then(QObject::as_str),
            Some("virtio-blk-pci")
        );
        assert_eq!(kv.get("serial").and_then(QObject::as_str), Some("a,b"));
        let c = p(&["-M", "none", "-machine", "type=pc"]).unwrap();
        assert_eq!(c.machine.as_deref(), Some("pc"));
        assert!(device_args("{").is_err());
        assert!(blockdev_args("driver=null-co").is_err());
    }
}

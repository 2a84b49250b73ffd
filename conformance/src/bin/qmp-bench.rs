//! `qmp-bench`: how fast is mock-qemu, next to the machine's floor and to a
//! real qemu-storage-daemon?
//!
//! One run measures, with the same blocking client for every target:
//!
//! 1. **launch → greeting**: spawn the server, poll for its socket, connect
//!    and read the greeting line. The floor is spawning `/bin/true` and
//!    waiting for it to exit (fork + exec + wait). Also recorded: launch →
//!    ready (the reply to `qmp_capabilities`), and the same for the trivial
//!    server below (a minimal Rust process that binds a socket and greets).
//! 2. **query-version round trip** on one connection, after
//!    `qmp_capabilities`. The floor is the trivial server: a child process
//!    (this binary, re-executed with `--trivial-server PATH`) that greets,
//!    then answers every request line with `{"return": {}}`.
//! 3. **pipelined throughput**: K `query-version` requests written
//!    back-to-back by a writer thread while the main thread reads K replies.
//!
//! Targets are measured interleaved (launch by launch, block by block), so
//! drift in the machine's load hits them alike. Nothing is pinned: client
//! and server share the machine's CPUs with whatever else runs.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

const CAPABILITIES: &[u8] = b"{\"execute\":\"qmp_capabilities\"}\n";
const QUERY_VERSION: &[u8] = b"{\"execute\":\"query-version\"}\n";
/// The trivial server's greeting: qemu-storage-daemon 10.0's, byte for byte.
const TRIVIAL_GREETING: &[u8] = b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"Debian 1:10.0.2+ds-2+deb13u1~bpo12+1\"}, \"capabilities\": [\"oob\"]}}\r\n";
const TRIVIAL_REPLY: &[u8] = b"{\"return\": {}}\r\n";
/// Give up on a server that does not listen within this time.
const LISTEN_DEADLINE: Duration = Duration::from_secs(10);
/// Reconnects allowed per launch before the launch counts as failed.
const MAX_RETRIES: u32 = 5;
/// Round trips are interleaved across targets in blocks of this many.
const RTT_BLOCK: usize = 1000;

#[derive(Parser, Debug)]
#[command(
    name = "qmp-bench",
    about = "Launch latency, round-trip latency and pipelined throughput: floor vs mock-qemu vs qemu-storage-daemon"
)]
struct Args {
    /// The mock-qemu binary (default: mock-qemu next to this binary, else
    /// target/release/mock-qemu).
    #[arg(long)]
    mock: Option<PathBuf>,
    /// The real qemu-storage-daemon.
    #[arg(long, default_value = "/usr/bin/qemu-storage-daemon")]
    qsd: PathBuf,
    /// Skip qemu-storage-daemon (also skipped, with a warning, when missing).
    #[arg(long)]
    no_qsd: bool,
    /// Launches per target.
    #[arg(long, default_value_t = 200)]
    launches: usize,
    /// Measured query-version round trips per target.
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
    /// Unmeasured round trips per target before measuring.
    #[arg(long, default_value_t = 1_000)]
    warmup: usize,
    /// Requests per pipelined burst.
    #[arg(long, default_value_t = 10_000)]
    pipeline: usize,
    /// Pipelined bursts per target (the median burst is reported).
    #[arg(long, default_value_t = 5)]
    pipeline_reps: usize,
    /// How long to wait for a greeting (or a reply to qmp_capabilities) on a
    /// connection before dropping it and reconnecting (counted as a retry).
    #[arg(long, default_value_t = 500)]
    greeting_timeout_ms: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: run as the trivial QMP-shaped server on this socket path.
    #[arg(long, hide = true)]
    trivial_server: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let r = match &args.trivial_server {
        Some(path) => trivial_server(path),
        None => run(&args),
    };
    if let Err(e) = r {
        eprintln!("qmp-bench: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// The trivial server (the round-trip floor)

/// Serves one client at a time, like a QEMU monitor: greet, then answer each
/// request line with fixed bytes, every complete line of a read in one write.
fn trivial_server(path: &Path) -> Result<()> {
    let _ = fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let _ = serve_trivial(&mut s, &mut buf, &mut out);
    }
    Ok(())
}

fn serve_trivial(s: &mut UnixStream, buf: &mut [u8], out: &mut Vec<u8>) -> io::Result<()> {
    s.write_all(TRIVIAL_GREETING)?;
    loop {
        let n = s.read(buf)?;
        if n == 0 {
            return Ok(());
        }
        let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
        if lines > 0 {
            out.clear();
            for _ in 0..lines {
                out.extend_from_slice(TRIVIAL_REPLY);
            }
            s.write_all(out)?;
        }
    }
}

// ---------------------------------------------------------------------------
// Targets and processes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `/bin/true` (launch floor only).
    True,
    /// This binary as the trivial server.
    Trivial,
    Mock,
    Qsd,
}

#[derive(Debug, Clone)]
struct Target {
    kind: Kind,
    name: &'static str,
    program: PathBuf,
}

impl Target {
    fn command(&self, sock: &Path) -> Command {
        let mut c = Command::new(&self.program);
        match self.kind {
            Kind::True => {}
            Kind::Trivial => {
                c.arg("--trivial-server").arg(sock);
            }
            Kind::Mock | Kind::Qsd => {
                let chardev = format!(
                    "socket,path={},server=on,wait=off,id=c",
                    sock.to_str().expect("the temporary folder's path is UTF-8")
                );
                c.args(["--chardev", &chardev, "--monitor", "chardev=c"]);
            }
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }
}

/// A child killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
struct Server {
    child: Child,
    stderr: Option<PathBuf>,
}

impl Server {
    fn spawn(mut cmd: Command, stderr: Option<&Path>) -> Result<Server> {
        if let Some(p) = stderr {
            cmd.stderr(fs::File::create(p)?);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
        Ok(Server {
            child,
            stderr: stderr.map(Path::to_path_buf),
        })
    }

    /// Adds what the server printed to an error.
    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        match self.stderr.as_deref().map(fs::read_to_string) {
            Some(Ok(s)) if !s.trim().is_empty() => e.context(format!("its stderr: {}", s.trim())),
            _ => e,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// The client (the same code for every target)

/// Counts of start-up anomalies.
#[derive(Debug, Default, Clone, Copy)]
struct Hiccups {
    /// Connections dropped after a stall (no greeting, or no reply to
    /// qmp_capabilities, within the timeout) or an EOF.
    retries: u32,
    /// Extra greeting lines seen after the first one.
    dup_greetings: u32,
    /// connect() attempts refused (ECONNREFUSED) or before the file existed.
    refused: u64,
}

impl Hiccups {
    fn add(&mut self, o: Hiccups) {
        self.retries += o.retries;
        self.dup_greetings += o.dup_greetings;
        self.refused += o.refused;
    }
}

#[derive(Debug)]
struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: String,
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Client {
    fn new(s: UnixStream) -> Result<Client> {
        Ok(Client {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
            line: String::with_capacity(512),
        })
    }

    fn set_timeout(&self, t: Duration) -> io::Result<()> {
        self.writer.set_read_timeout(Some(t))
    }

    /// Reads one line; EOF is an error.
    fn read_line(&mut self) -> io::Result<&str> {
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(&self.line)
    }

    /// Reads lines up to a command's reply, skipping events and greetings.
    fn read_reply(&mut self, hic: &mut Hiccups) -> io::Result<()> {
        loop {
            let l = self.read_line()?;
            if l.starts_with("{\"return\"") {
                return Ok(());
            }
            if l.starts_with("{\"error\"") {
                return Err(io::Error::other(format!("error reply: {}", l.trim_end())));
            }
            if l.starts_with("{\"QMP\"") {
                hic.dup_greetings += 1;
            }
        }
    }

    fn request(&mut self, req: &[u8], hic: &mut Hiccups) -> io::Result<()> {
        self.writer.write_all(req)?;
        self.read_reply(hic)
    }
}

/// Polls until the socket accepts a connection (tight loop: ENOENT and
/// ECONNREFUSED are retried after a yield).
fn connect_poll(path: &Path, server: &mut Server, hic: &mut Hiccups) -> Result<UnixStream> {
    let deadline = Instant::now() + LISTEN_DEADLINE;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
        }
        hic.refused += 1;
        if hic.refused % 256 == 0 {
            if let Some(st) = server.child.try_wait()? {
                bail!("the server exited ({st}) before listening");
            }
            if Instant::now() > deadline {
                bail!("the server did not listen within {LISTEN_DEADLINE:?}");
            }
        }
        std::thread::yield_now();
    }
}

/// Times from `t0` (the spawn) to the greeting and to the reply to
/// `qmp_capabilities`, reconnecting after a stall.
struct Opened {
    client: Client,
    greeting: Duration,
    ready: Duration,
    hiccups: Hiccups,
}

fn open_session(
    path: &Path,
    server: &mut Server,
    t0: Instant,
    timeout: Duration,
) -> Result<Opened> {
    let mut hic = Hiccups::default();
    loop {
        let s = connect_poll(path, server, &mut hic)?;
        let mut c = Client::new(s)?;
        c.set_timeout(timeout)?;
        let greeted = match c.read_line() {
            Ok(l) if l.starts_with("{\"QMP\"") => Some(t0.elapsed()),
            Ok(l) => bail!("expected a greeting, got {:?}", l.trim_end()),
            Err(e) if timed_out(&e) || e.kind() == io::ErrorKind::UnexpectedEof => None,
            Err(e) => return Err(e).context("reading the greeting"),
        };
        if let Some(greeting) = greeted {
            match c.request(CAPABILITIES, &mut hic) {
                Ok(()) => {
                    let ready = t0.elapsed();
                    c.set_timeout(LISTEN_DEADLINE)?;
                    return Ok(Opened {
                        client: c,
                        greeting,
                        ready,
                        hiccups: hic,
                    });
                }
                Err(e) if timed_out(&e) || e.kind() == io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(e).context("qmp_capabilities"),
            }
        }
        hic.retries += 1;
        if hic.retries > MAX_RETRIES {
            bail!("no usable QMP session after {MAX_RETRIES} reconnects");
        }
    }
}

// ---------------------------------------------------------------------------
// Statistics

#[derive(Debug, Clone, Copy)]
struct Summary {
    n: usize,
    median: f64,
    p99: f64,
    min: f64,
    max: f64,
}

/// Nearest-rank percentiles of nanosecond samples.
fn summarize(samples: &mut [f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let rank = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    Some(Summary {
        n,
        median: rank(0.5),
        p99: rank(0.99),
        min: samples[0],
        max: samples[n - 1],
    })
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn summary_json(s: Option<Summary>) -> Value {
    match s {
        Some(s) => {
            json!({"n": s.n, "median_ns": s.median, "p99_ns": s.p99, "min_ns": s.min, "max_ns": s.max})
        }
        None => Value::Null,
    }
}

// ---------------------------------------------------------------------------
// Measurements

#[derive(Debug, Default)]
struct LaunchResult {
    greeting: Vec<f64>,
    ready: Vec<f64>,
    hiccups: Hiccups,
}

/// One launch: spawn → (exit | greeting, ready) → kill.
fn launch_once(
    t: &Target,
    dir: &Path,
    i: usize,
    timeout: Duration,
    out: &mut LaunchResult,
) -> Result<()> {
    let sock = dir.join(format!("{}-{i}.sock", t.name));
    let cmd = t.command(&sock);
    if t.kind == Kind::True {
        let mut cmd = cmd;
        let t0 = Instant::now();
        let st = cmd.status().context("running /bin/true")?;
        let d = t0.elapsed();
        if !st.success() {
            bail!("/bin/true failed: {st}");
        }
        out.greeting.push(ns(d));
        return Ok(());
    }
    let t0 = Instant::now();
    let mut server = Server::spawn(cmd, None)?;
    let o = open_session(&sock, &mut server, t0, timeout)
        .with_context(|| format!("{} launch #{i}", t.name))?;
    out.greeting.push(ns(o.greeting));
    out.ready.push(ns(o.ready));
    out.hiccups.add(o.hiccups);
    drop(o.client);
    drop(server);
    let _ = fs::remove_file(&sock);
    Ok(())
}

/// A long-lived server with a session open, for the round-trip and
/// pipelined measurements.
struct Session {
    _server: Server,
    client: Client,
    hiccups: Hiccups,
    rtt: Vec<f64>,
    bursts: Vec<f64>,
}

fn start_session(t: &Target, dir: &Path, timeout: Duration) -> Result<Session> {
    let sock = dir.join(format!("{}-session.sock", t.name));
    let errf = dir.join(format!("{}-session.stderr", t.name));
    let t0 = Instant::now();
    let mut server = Server::spawn(t.command(&sock), Some(&errf))?;
    let o = match open_session(&sock, &mut server, t0, timeout) {
        Ok(o) => o,
        Err(e) => return Err(server.explain(e)).with_context(|| format!("starting {}", t.name)),
    };
    let mut s = Session {
        _server: server,
        client: o.client,
        hiccups: o.hiccups,
        rtt: Vec::new(),
        bursts: Vec::new(),
    };
    // The reply must be a real one for the QEMU targets.
    s.client
        .writer
        .write_all(QUERY_VERSION)
        .context("query-version")?;
    let reply = loop {
        let l = s.client.read_line().context("query-version")?;
        if !l.starts_with("{\"QMP\"") {
            break l.to_owned();
        }
        s.hiccups.dup_greetings += 1;
    };
    let ok = match t.kind {
        Kind::Trivial => reply.starts_with("{\"return\""),
        _ => reply.starts_with("{\"return\"") && reply.contains("\"qemu\""),
    };
    if !ok {
        bail!(
            "{}: unexpected query-version reply {:?}",
            t.name,
            reply.trim_end()
        );
    }
    Ok(s)
}

fn round_trips(s: &mut Session, n: usize, record: bool) -> Result<()> {
    let mut hic = Hiccups::default();
    for _ in 0..n {
        let t0 = Instant::now();
        s.client.request(QUERY_VERSION, &mut hic)?;
        if record {
            s.rtt.push(ns(t0.elapsed()));
        }
    }
    s.hiccups.add(hic);
    Ok(())
}

/// Writes `k` requests from a writer thread while reading `k` replies.
fn burst(s: &mut Session, k: usize) -> Result<Duration> {
    let mut w = s.client.writer.try_clone()?;
    let payload = QUERY_VERSION.repeat(k);
    let go = Arc::new(Barrier::new(2));
    let go2 = Arc::clone(&go);
    let writer = std::thread::spawn(move || {
        go2.wait();
        w.write_all(&payload)
    });
    go.wait();
    let t0 = Instant::now();
    let mut hic = Hiccups::default();
    let read = (0..k).try_for_each(|_| s.client.read_reply(&mut hic));
    let d = t0.elapsed();
    let wrote = writer
        .join()
        .map_err(|_| anyhow!("the writer thread panicked"))?;
    read.context("reading pipelined replies")?;
    wrote.context("writing pipelined requests")?;
    s.hiccups.add(hic);
    Ok(d)
}

// ---------------------------------------------------------------------------
// Report

fn machine_info() -> Value {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default().trim().to_owned();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    json!({
        "nproc": nproc,
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpu": cpu,
        "loadavg": read("/proc/loadavg"),
    })
}

fn fmt_ns(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if v >= 1e6 => format!("{:.2} ms", v / 1e6),
        Some(v) => format!("{:.1} µs", v / 1e3),
    }
}

fn fmt_rate(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{:.0}/s", v))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("n/a".into(), |r| format!("{r:.2}x"))
}

/// One table row: floor, mock, qsd, and the time ratios.
struct Row {
    label: String,
    /// Values as times (ns) for the ratios; for throughput, ns per command.
    times: [Option<f64>; 3],
    shown: [String; 3],
}

impl Row {
    fn time(label: &str, v: [Option<f64>; 3]) -> Row {
        Row {
            label: label.into(),
            times: v,
            shown: v.map(fmt_ns),
        }
    }

    fn rate(label: &str, per_sec: [Option<f64>; 3]) -> Row {
        Row {
            label: label.into(),
            times: per_sec.map(|r| r.filter(|&r| r > 0.0).map(|r| 1e9 / r)),
            shown: per_sec.map(fmt_rate),
        }
    }

    fn ratios(&self) -> [Option<f64>; 3] {
        let [f, m, q] = self.times;
        [ratio(m, f), ratio(q, f), ratio(m, q)]
    }
}

fn render(rows: &[Row]) -> String {
    let head = [
        "metric",
        "floor",
        "mock-qemu",
        "qsd",
        "mock/floor",
        "qsd/floor",
        "mock/qsd",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            let [a, b, c] = r.ratios().map(fmt_ratio);
            [
                r.label.clone(),
                r.shown[0].clone(),
                r.shown[1].clone(),
                r.shown[2].clone(),
                a,
                b,
                c,
            ]
        })
        .collect();
    let mut w = head.map(|h| h.chars().count());
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let line = |c: &[String; 7]| {
        let mut s = String::new();
        for (i, x) in c.iter().enumerate() {
            let pad = w[i] - x.chars().count();
            if i == 0 {
                let _ = write!(s, "{x}{}", " ".repeat(pad));
            } else {
                let _ = write!(s, "  {}{x}", " ".repeat(pad));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&head.map(String::from));
    out.push_str(&"-".repeat(w.iter().sum::<usize>() + 2 * (w.len() - 1)));
    out.push('\n');
    for c in &cells {
        out.push_str(&line(c));
    }
    out
}

// ---------------------------------------------------------------------------

fn default_mock() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mock-qemu")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("target/release/mock-qemu"))
}

fn run(args: &Args) -> Result<()> {
    let timeout = Duration::from_millis(args.greeting_timeout_ms);
    let mock = args.mock.clone().unwrap_or_else(default_mock);
    if !mock.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p mock-qemu) or pass --mock",
            mock.display()
        );
    }
    let with_qsd = !args.no_qsd && args.qsd.is_file();
    if !args.no_qsd && !with_qsd {
        eprintln!(
            "qmp-bench: {} not found; skipping qemu-storage-daemon",
            args.qsd.display()
        );
    }
    let me = std::env::current_exe().context("locating this binary")?;
    let tgt = |kind, name, program: &Path| Target {
        kind,
        name,
        program: program.to_path_buf(),
    };
    let t_true = tgt(Kind::True, "true", Path::new("/bin/true"));
    let t_triv = tgt(Kind::Trivial, "trivial", &me);
    let t_mock = tgt(Kind::Mock, "mock-qemu", &mock);
    let t_qsd = with_qsd.then(|| tgt(Kind::Qsd, "qsd", &args.qsd));

    let machine = machine_info();
    println!(
        "machine: nproc={} kernel={} cpu={:?} loadavg=[{}]",
        machine["nproc"],
        machine["kernel"].as_str().unwrap_or(""),
        machine["cpu"].as_str().unwrap_or(""),
        machine["loadavg"].as_str().unwrap_or("")
    );
    println!("mock-qemu: {}", mock.display());
    if let Some(q) = &t_qsd {
        println!("qsd:       {}", q.program.display());
    }
    println!(
        "floor: launch = spawn /bin/true + wait; round trip = trivial server (child process: this binary, --trivial-server)"
    );
    let dir = tempfile::Builder::new().prefix("qmp-bench").tempdir()?;
    let started = Instant::now();

    // 1. Launches, interleaved; the first of each target warms the page cache
    // and checks that the target starts at all (its stderr is kept).
    let mut launch_targets: Vec<&Target> = vec![&t_true, &t_triv, &t_mock];
    launch_targets.extend(t_qsd.as_ref());
    for t in &launch_targets {
        if t.kind != Kind::True {
            drop(start_session(t, dir.path(), timeout)?);
        }
    }
    let mut launches: Vec<LaunchResult> = launch_targets
        .iter()
        .map(|_| LaunchResult::default())
        .collect();
    for i in 0..args.launches {
        for (t, out) in launch_targets.iter().zip(launches.iter_mut()) {
            launch_once(t, dir.path(), i, timeout, out)?;
        }
    }
    let t_launch = started.elapsed();

    // 2 + 3. One session per target, round trips and bursts interleaved.
    let mut sess_targets: Vec<&Target> = vec![&t_triv, &t_mock];
    sess_targets.extend(t_qsd.as_ref());
    let mut sessions: Vec<Session> = sess_targets
        .iter()
        .map(|t| start_session(t, dir.path(), timeout))
        .collect::<Result<_>>()?;
    for (t, s) in sess_targets.iter().zip(sessions.iter_mut()) {
        round_trips(s, args.warmup, false).with_context(|| format!("{} warm-up", t.name))?;
    }
    let mut left = args.round_trips;
    while left > 0 {
        let n = left.min(RTT_BLOCK);
        for (t, s) in sess_targets.iter().zip(sessions.iter_mut()) {
            round_trips(s, n, true).with_context(|| format!("{} round trips", t.name))?;
        }
        left -= n;
    }
    let t_rtt = started.elapsed() - t_launch;
    if args.pipeline > 0 {
        for _ in 0..args.pipeline_reps {
            for (t, s) in sess_targets.iter().zip(sessions.iter_mut()) {
                let d = burst(s, args.pipeline).with_context(|| format!("{} pipelined", t.name))?;
                s.bursts.push(ns(d));
            }
        }
    }
    let t_total = started.elapsed();

    // Summaries, indexed floor / mock / qsd.
    let launch_of = |k: Kind| {
        launch_targets
            .iter()
            .position(|t| t.kind == k)
            .map(|i| &launches[i])
    };
    let sess_of = |k: Kind| {
        sess_targets
            .iter()
            .position(|t| t.kind == k)
            .map(|i| &sessions[i])
    };
    let sum = |v: Option<&Vec<f64>>| v.and_then(|v| summarize(&mut v.clone()));
    let greet = [Kind::True, Kind::Mock, Kind::Qsd].map(|k| sum(launch_of(k).map(|l| &l.greeting)));
    let ready = [Kind::True, Kind::Mock, Kind::Qsd].map(|k| sum(launch_of(k).map(|l| &l.ready)));
    let triv_launch = launch_of(Kind::Trivial).expect("measured");
    let triv_greet = sum(Some(&triv_launch.greeting));
    let triv_ready = sum(Some(&triv_launch.ready));
    let rtt = [Kind::Trivial, Kind::Mock, Kind::Qsd].map(|k| sum(sess_of(k).map(|s| &s.rtt)));
    let burst_med =
        [Kind::Trivial, Kind::Mock, Kind::Qsd].map(|k| sum(sess_of(k).map(|s| &s.bursts)));
    let tput = burst_med.map(|b| b.map(|b| args.pipeline as f64 / (b.median / 1e9)));
    let pick = |s: &[Option<Summary>; 3], f: fn(&Summary) -> f64| s.map(|x| x.as_ref().map(f));
    // launch → ready has no /bin/true equivalent: its ratios use /bin/true's exit.
    let ready_with_floor = [greet[0], ready[1], ready[2]];

    let rows = vec![
        Row::time("launch→greeting median", pick(&greet, |s| s.median)),
        Row::time("launch→greeting p99", pick(&greet, |s| s.p99)),
        Row::time("launch→ready median", pick(&ready_with_floor, |s| s.median)),
        Row::time("launch→ready p99", pick(&ready_with_floor, |s| s.p99)),
        Row::time("query-version RTT median", pick(&rtt, |s| s.median)),
        Row::time("query-version RTT p99", pick(&rtt, |s| s.p99)),
        Row::rate("pipelined throughput", tput),
    ];
    println!();
    println!(
        "launches: {} per target; round trips: {} per target after {} warm-up; pipelined: {} x {} requests",
        args.launches, args.round_trips, args.warmup, args.pipeline_reps, args.pipeline
    );
    print!("{}", render(&rows));
    println!("ratios compare times (for throughput: time per command); >1 means slower than the denominator.");
    println!(
        "floor: launch = /bin/true (spawn→exit; for launch→ready too); RTT/throughput = trivial server."
    );
    println!(
        "trivial server launch (a Rust binary binding a socket): →greeting median {} p99 {}, →ready median {} p99 {}",
        fmt_ns(triv_greet.map(|s| s.median)),
        fmt_ns(triv_greet.map(|s| s.p99)),
        fmt_ns(triv_ready.map(|s| s.median)),
        fmt_ns(triv_ready.map(|s| s.p99)),
    );
    for (t, l) in launch_targets.iter().zip(&launches) {
        if t.kind != Kind::True {
            println!(
                "{:>10} launches: {} reconnects after a stall/EOF, {} duplicate greetings, {} refused/absent connect polls",
                t.name, l.hiccups.retries, l.hiccups.dup_greetings, l.hiccups.refused
            );
        }
    }
    for (t, s) in sess_targets.iter().zip(&sessions) {
        if s.hiccups.retries + s.hiccups.dup_greetings > 0 {
            println!(
                "{:>10} session: {} reconnects, {} duplicate greetings",
                t.name, s.hiccups.retries, s.hiccups.dup_greetings
            );
        }
    }
    let targets_met = |name: &str, r: Option<f64>, limit: f64| match r {
        Some(r) => println!(
            "target {name}: {r:.2}x (limit {limit}x) {}",
            if r <= limit { "MET" } else { "NOT MET" }
        ),
        None => println!("target {name}: n/a"),
    };
    targets_met(
        "launch→greeting median ≤ 2x /bin/true",
        rows[0].ratios()[0],
        2.0,
    );
    targets_met(
        "query-version RTT median ≤ 1.5x trivial",
        rows[4].ratios()[0],
        1.5,
    );
    println!(
        "time: {:.1} s (launches {:.1} s, round trips {:.1} s, pipelined {:.1} s). Unpinned: expect a few % run-to-run noise on medians, more on p99.",
        t_total.as_secs_f64(),
        t_launch.as_secs_f64(),
        t_rtt.as_secs_f64(),
        (t_total - t_launch - t_rtt).as_secs_f64()
    );

    if let Some(path) = &args.json {
        let per = |k: Kind| -> Value {
            let l = launch_of(k);
            let s = sess_of(k);
            json!({
                "launch_greeting": summary_json(l.and_then(|l| summarize(&mut l.greeting.clone()))),
                "launch_ready": summary_json(l.and_then(|l| summarize(&mut l.ready.clone()))),
                "launch_hiccups": l.map(|l| json!({"retries": l.hiccups.retries, "dup_greetings": l.hiccups.dup_greetings, "refused": l.hiccups.refused})),
                "rtt": summary_json(s.and_then(|s| summarize(&mut s.rtt.clone()))),
                "pipelined_burst": summary_json(s.and_then(|s| summarize(&mut s.bursts.clone()))),
                "pipelined_cmds_per_s": s.and_then(|s| summarize(&mut s.bursts.clone())).map(|b| args.pipeline as f64 / (b.median / 1e9)),
            })
        };
        let ratios: Vec<Value> = rows
            .iter()
            .map(|r| {
                let [a, b, c] = r.ratios();
                json!({"metric": r.label, "mock/floor": a, "qsd/floor": b, "mock/qsd": c})
            })
            .collect();
        let doc = json!({
            "machine": machine,
            "config": {
                "mock": mock, "qsd": t_qsd.as_ref().map(|t| &t.program),
                "launches": args.launches, "round_trips": args.round_trips, "warmup": args.warmup,
                "pipeline": args.pipeline, "pipeline_reps": args.pipeline_reps,
                "greeting_timeout_ms": args.greeting_timeout_ms,
            },
            "targets": {
                "true": per(Kind::True),
                "trivial": per(Kind::Trivial),
                "mock-qemu": per(Kind::Mock),
                "qsd": if with_qsd { per(Kind::Qsd) } else { Value::Null },
            },
            "ratios": ratios,
            "seconds": t_total.as_secs_f64(),
        });
        fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("json: {}", path.display());
    }
    Ok(())
}

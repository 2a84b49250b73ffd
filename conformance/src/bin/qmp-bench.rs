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
//!    then answers every request line with fixed bytes (a copy of
//!    qemu-storage-daemon's `query-version` reply, so every target sends the
//!    client as many bytes), all complete lines of one read in one write.
//! 3. **pipelined throughput**: K `query-version` requests written
//!    back-to-back by a writer thread while the main thread reads K replies.
//! 4. **query-named-block-nodes on a 100-node graph** (mock-qemu and
//!    qemu-storage-daemon only): on the same session, 50 qcow2 nodes, each
//!    with an inline file child, are added (images made once with
//!    `qemu-img create`, then copied into a folder per target, since QEMU
//!    locks the images it opens read-write); then `query-named-block-nodes`
//!    with `flat: true` round trips, each reading the whole (large) reply
//!    line. No floor: the interesting ratio is qsd/mock (goal: ≥ 10x).
//!
//! Start-up races of qemu-storage-daemon 10.0 are tolerated and counted: a
//! second greeting is skipped; a connection that stays silent (no greeting,
//! or no reply to `qmp_capabilities`, within `--greeting-timeout-ms`) or is
//! dropped is reconnected; a process that dies during start-up (it sometimes
//! segfaults when a client connects that early) is relaunched and that
//! launch is not timed.
//!
//! Targets are measured interleaved (launch by launch, block by block), so
//! drift in the machine's load hits them alike. Nothing is pinned: client
//! and server share the machine's CPUs with whatever else runs; the report
//! says how much CPU other processes used meanwhile.

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
/// The trivial server's answer to any request: qemu-storage-daemon 10.0's
/// query-version reply, so that the client reads as many bytes from every target.
const TRIVIAL_REPLY: &[u8] = b"{\"return\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"Debian 1:10.0.2+ds-2+deb13u1~bpo12+1\"}}\r\n";
/// Give up on a server that does not listen within this time.
const LISTEN_DEADLINE: Duration = Duration::from_secs(10);
/// Reconnects allowed per launch before the launch counts as failed.
const MAX_RETRIES: u32 = 5;
/// Round trips are interleaved across targets in blocks of this many.
const RTT_BLOCK: usize = 1000;
const QUERY_NODES: &[u8] =
    b"{\"execute\":\"query-named-block-nodes\",\"arguments\":{\"flat\":true}}\n";
/// qcow2 images in the graph; each is a qcow2 node over a file node.
const GRAPH_IMAGES: usize = 50;
const GRAPH_NODES: usize = 2 * GRAPH_IMAGES;
/// query-named-block-nodes round trips are interleaved in blocks of this many.
const GRAPH_BLOCK: usize = 25;

#[derive(Parser, Debug)]
#[command(
    name = "qmp-bench",
    about = "Launch latency, round-trip latency, pipelined throughput and query-named-block-nodes on a 100-node graph: floor vs mock-qemu vs qemu-storage-daemon"
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
    /// Measured query-named-block-nodes round trips per target on the
    /// 100-node graph (0 skips that part).
    #[arg(long, default_value_t = 300)]
    graph_round_trips: usize,
    /// Unmeasured query-named-block-nodes round trips per target before
    /// measuring.
    #[arg(long, default_value_t = 20)]
    graph_warmup: usize,
    /// qemu-img, to create the graph's images (the graph part is skipped,
    /// with a warning, when it cannot be run).
    #[arg(long, default_value = "qemu-img")]
    qemu_img: PathBuf,
    /// How long to wait for a greeting (or a reply to qmp_capabilities) on a
    /// connection before dropping it and reconnecting (counted as a retry).
    #[arg(long, default_value_t = 500)]
    greeting_timeout_ms: u64,
    /// Mirror runs (to READY, then pivot) per target, median reported:
    /// 1 TiB on mock-qemu's virtual clock, 64 MiB on qemu-storage-daemon
    /// (0 skips that part).
    #[arg(long, default_value_t = 3)]
    mirror_reps: usize,
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
    /// Launches whose process died before a usable session (relaunched,
    /// and left out of the timings).
    crashes: u32,
}

impl Hiccups {
    fn add(&mut self, o: Hiccups) {
        self.retries += o.retries;
        self.dup_greetings += o.dup_greetings;
        self.refused += o.refused;
        self.crashes += o.crashes;
    }
}

#[derive(Debug)]
struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: String,
}

/// A stall, or a connection the server dropped: worth a reconnect.
fn transient(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        e.kind(),
        K::WouldBlock | K::TimedOut | K::UnexpectedEof | K::ConnectionReset | K::BrokenPipe
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
        if hic.refused & 0xff == 0 {
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
            Err(e) if transient(&e) => None,
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
                Err(e) if transient(&e) => {}
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
    if t.kind == Kind::True {
        let mut cmd = t.command(&sock);
        let t0 = Instant::now();
        let st = cmd.status().context("running /bin/true")?;
        let d = t0.elapsed();
        if !st.success() {
            bail!("/bin/true failed: {st}");
        }
        out.greeting.push(ns(d));
        return Ok(());
    }
    let mut crashes = 0;
    let (o, server) = loop {
        let t0 = Instant::now();
        let mut server = Server::spawn(t.command(&sock), None)?;
        match open_session(&sock, &mut server, t0, timeout) {
            Ok(o) => break (o, server),
            Err(e) => {
                crashes += 1;
                if crashes > MAX_RETRIES || !matches!(server.child.try_wait(), Ok(Some(_))) {
                    return Err(e.context(format!("{} launch #{i}", t.name)));
                }
            }
        }
    };
    out.greeting.push(ns(o.greeting));
    out.ready.push(ns(o.ready));
    out.hiccups.add(o.hiccups);
    out.hiccups.crashes += crashes;
    drop(o.client);
    drop(server);
    let _ = fs::remove_file(&sock);
    Ok(())
}

/// A long-lived server with a session open, for the round-trip and
/// pipelined measurements.
struct Session {
    server: Server,
    client: Client,
    hiccups: Hiccups,
    rtt: Vec<f64>,
    bursts: Vec<f64>,
    /// query-named-block-nodes round trips on the 100-node graph.
    graph_rtt: Vec<f64>,
    /// That reply's size in bytes (the whole line, CR LF included).
    graph_reply_bytes: Option<usize>,
}

fn start_session(t: &Target, dir: &Path, timeout: Duration) -> Result<Session> {
    let sock = dir.join(format!("{}-session.sock", t.name));
    let errf = dir.join(format!("{}-session.stderr", t.name));
    let mut crashes = 0;
    let (o, server) = loop {
        let t0 = Instant::now();
        let mut server = Server::spawn(t.command(&sock), Some(&errf))?;
        match open_session(&sock, &mut server, t0, timeout) {
            Ok(o) => break (o, server),
            Err(e) => {
                crashes += 1;
                if crashes > MAX_RETRIES || !matches!(server.child.try_wait(), Ok(Some(_))) {
                    return Err(server.explain(e)).with_context(|| format!("starting {}", t.name));
                }
            }
        }
    };
    let mut s = Session {
        server,
        client: o.client,
        hiccups: Hiccups {
            crashes,
            ..o.hiccups
        },
        rtt: Vec::new(),
        bursts: Vec::new(),
        graph_rtt: Vec::new(),
        graph_reply_bytes: None,
    };
    // Check that query-version works (the trivial server mimics the reply).
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
    if !(reply.starts_with("{\"return\"") && reply.contains("\"qemu\"")) {
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

/// Creates the graph's images, once for all targets.
fn create_images(qemu_img: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    for i in 0..GRAPH_IMAGES {
        let path = dir.join(format!("img{i}.qcow2"));
        let out = Command::new(qemu_img)
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg("1M")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", qemu_img.display()))?;
        if !out.status.success() {
            bail!(
                "{} create {}: {} {}",
                qemu_img.display(),
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Copies the images into a folder of the target's own (QEMU locks the
/// images it opens read-write), `images-{n}`: the same length for every
/// target, since the paths appear in the reply whose size is compared. Adds each as a qcow2 node with an inline
/// file child (`GRAPH_NODES` nodes), then checks query-named-block-nodes
/// once and records its reply's size.
fn build_graph(s: &mut Session, n: usize, images: &Path, dir: &Path) -> Result<()> {
    let own = dir.join(format!("images-{n}"));
    fs::create_dir_all(&own)?;
    let mut line = Vec::with_capacity(256);
    for i in 0..GRAPH_IMAGES {
        let file = format!("img{i}.qcow2");
        let path = own.join(&file);
        fs::copy(images.join(&file), &path)
            .with_context(|| format!("copying {file} to {}", own.display()))?;
        let filename = Value::from(path.to_str().context("the image's path is not UTF-8")?);
        line.clear();
        writeln!(
            line,
            "{{\"execute\":\"blockdev-add\",\"arguments\":{{\"driver\":\"qcow2\",\"node-name\":\"n{i}\",\"file\":{{\"driver\":\"file\",\"filename\":{filename}}}}}}}"
        )?;
        s.client.writer.write_all(&line)?;
        let reply = next_reply(s).with_context(|| format!("blockdev-add n{i}"))?;
        if reply.trim_end() != "{\"return\": {}}" {
            let e = anyhow!("blockdev-add n{i}: unexpected reply {:?}", reply.trim_end());
            return Err(s.server.explain(e));
        }
    }
    s.client.writer.write_all(QUERY_NODES)?;
    let reply = next_reply(s).context("query-named-block-nodes")?;
    let v: Value = serde_json::from_str(&reply).context("query-named-block-nodes reply")?;
    let nodes = v["return"].as_array().map(Vec::len);
    if nodes != Some(GRAPH_NODES) {
        let head: String = reply.chars().take(200).collect();
        bail!("query-named-block-nodes: expected {GRAPH_NODES} nodes, got {nodes:?}: {head:?}…");
    }
    s.graph_reply_bytes = Some(reply.len());
    Ok(())
}

/// The next line that is neither an event nor a greeting.
fn next_reply(s: &mut Session) -> Result<String> {
    loop {
        let l = s.client.read_line()?;
        if l.starts_with("{\"QMP\"") {
            s.hiccups.dup_greetings += 1;
        } else if !l.starts_with("{\"event\"") {
            return Ok(l.to_owned());
        }
    }
}

fn graph_round_trips(s: &mut Session, n: usize, record: bool) -> Result<()> {
    let mut hic = Hiccups::default();
    for _ in 0..n {
        let t0 = Instant::now();
        s.client.request(QUERY_NODES, &mut hic)?;
        if record {
            s.graph_rtt.push(ns(t0.elapsed()));
        }
    }
    s.hiccups.add(hic);
    Ok(())
}

// ---------------------------------------------------------------------------
// Mirror to READY and pivot

/// Mirrors `size` bytes on a fresh server and returns the wall time from
/// sending blockdev-mirror to the job's `null` (through READY and
/// job-complete). mock-qemu mirrors between two null-co nodes with stepped
/// jobs and moves its virtual clock past the copy time with
/// `x-mock-clock-advance`; qemu-storage-daemon copies `images`' src.qcow2
/// (written full) into dst.qcow2.
fn mirror_once(
    t: &Target,
    dir: &Path,
    size: u64,
    images: &Path,
    timeout: Duration,
) -> Result<Duration> {
    let sock = dir.join(format!("{}-mirror.sock", t.name));
    let mut cmd = t.command(&sock);
    if t.kind == Kind::Mock {
        cmd.args(["--mock-jobs", "stepped"]);
    }
    let mut server = Server::spawn(cmd, None)?;
    let o = open_session(&sock, &mut server, Instant::now(), timeout)?;
    let mut c = o.client;
    let mut hic = Hiccups::default();
    for n in ["src", "dst"] {
        let add = if t.kind == Kind::Mock {
            format!(
                "{{\"execute\": \"blockdev-add\", \"arguments\": {{\"driver\": \"null-co\", \"node-name\": \"{n}\", \"size\": {size}}}}}\n"
            )
        } else {
            let f = images.join(format!("{n}.qcow2"));
            format!(
                "{{\"execute\": \"blockdev-add\", \"arguments\": {{\"driver\": \"qcow2\", \"node-name\": \"{n}\", \"file\": {{\"driver\": \"file\", \"filename\": \"{}\"}}}}}}\n",
                f.display()
            )
        };
        c.request(add.as_bytes(), &mut hic)
            .with_context(|| format!("blockdev-add {n}"))?;
    }
    let wait = |c: &mut Client, what: &str| -> Result<()> {
        loop {
            let l = c
                .read_line()
                .with_context(|| format!("waiting for {what}"))?;
            if l.contains(what) {
                return Ok(());
            }
        }
    };
    let t0 = Instant::now();
    c.request(
        b"{\"execute\": \"blockdev-mirror\", \"arguments\": {\"job-id\": \"m\", \"device\": \"src\", \"target\": \"dst\", \"sync\": \"full\"}}\n",
        &mut hic,
    )
    .context("blockdev-mirror")?;
    if t.kind == Kind::Mock {
        // The simulated copy time at the default 1 GiB/s, and then some.
        let micros = size / (1 << 30) * 1_000_000 + 1_000_000;
        let adv = format!(
            "{{\"execute\": \"x-mock-clock-advance\", \"arguments\": {{\"microseconds\": {micros}}}}}\n"
        );
        c.writer.write_all(adv.as_bytes())?;
    }
    wait(&mut c, "\"BLOCK_JOB_READY\"")?;
    c.writer
        .write_all(b"{\"execute\": \"job-complete\", \"arguments\": {\"id\": \"m\"}}\n")?;
    wait(&mut c, "\"status\": \"null\"")?;
    Ok(t0.elapsed())
}

/// Median of `reps` mirror runs (qsd: fresh images for each run).
fn mirror_median(
    t: &Target,
    dir: &Path,
    size: u64,
    reps: usize,
    qemu_img: &Path,
    timeout: Duration,
) -> Result<f64> {
    let images = dir.join("mirror-images");
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        if t.kind == Kind::Qsd {
            mirror_images(qemu_img, &images, size)?;
        }
        v.push(ns(mirror_once(t, dir, size, &images, timeout)?));
    }
    Ok(summarize(&mut v).map_or(0.0, |s| s.median))
}

/// src.qcow2 written full (qemu-io next to qemu-img), and an empty dst.qcow2.
fn mirror_images(qemu_img: &Path, dir: &Path, size: u64) -> Result<()> {
    fs::create_dir_all(dir)?;
    let run = |prog: &Path, args: &[&str]| -> Result<()> {
        let st = Command::new(prog)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {}", prog.display()))?;
        if !st.success() {
            bail!("{} {args:?} failed", prog.display());
        }
        Ok(())
    };
    let qemu_io = qemu_img.with_file_name("qemu-io");
    let (src, dst) = (dir.join("src.qcow2"), dir.join("dst.qcow2"));
    let (src, dst) = (src.to_string_lossy(), dst.to_string_lossy());
    let sz = size.to_string();
    run(qemu_img, &["create", "-q", "-f", "qcow2", &src, &sz])?;
    run(qemu_img, &["create", "-q", "-f", "qcow2", &dst, &sz])?;
    run(
        &qemu_io,
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -P 0xa5 0 {size}"),
            &src,
        ],
    )
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
    v.map_or("n/a".into(), |v| format!("{v:.0}/s"))
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

/// CPU time counters (USER_HZ ticks), to tell how busy the rest of the
/// machine was during the run.
#[derive(Debug, Clone, Copy)]
struct CpuTicks {
    /// All CPUs: user + nice + system + irq + softirq.
    busy: u64,
    /// All CPUs: time stolen by the hypervisor.
    steal: u64,
    /// This process and its reaped children: user + system.
    own: u64,
}

impl CpuTicks {
    fn now() -> Option<CpuTicks> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let me = fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name: state is field 3, utime field 14.
        let f: Vec<u64> = me
            .rsplit_once(") ")?
            .1
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        Some(CpuTicks {
            busy: cpu.first()? + cpu.get(1)? + cpu.get(2)? + cpu.get(5)? + cpu.get(6)?,
            steal: *cpu.get(7)?,
            own: f.get(11..15)?.iter().sum(),
        })
    }
}

/// What one target measured.
#[derive(Debug, Default)]
struct Outcome {
    greeting: Option<Summary>,
    ready: Option<Summary>,
    launch_hiccups: Hiccups,
    rtt: Option<Summary>,
    burst: Option<Summary>,
    /// query-named-block-nodes on the 100-node graph.
    graph: Option<Summary>,
    graph_reply_bytes: Option<usize>,
    session_hiccups: Hiccups,
}

fn outcome(launch: Option<&LaunchResult>, session: Option<&Session>) -> Outcome {
    let sum = |v: &Vec<f64>| summarize(&mut v.clone());
    Outcome {
        greeting: launch.and_then(|l| sum(&l.greeting)),
        ready: launch.and_then(|l| sum(&l.ready)),
        launch_hiccups: launch.map(|l| l.hiccups).unwrap_or_default(),
        rtt: session.and_then(|s| sum(&s.rtt)),
        burst: session.and_then(|s| sum(&s.bursts)),
        graph: session.and_then(|s| sum(&s.graph_rtt)),
        graph_reply_bytes: session.and_then(|s| s.graph_reply_bytes),
        session_hiccups: session.map(|s| s.hiccups).unwrap_or_default(),
    }
}

fn hiccups_json(h: &Hiccups) -> Value {
    json!({"crashes": h.crashes, "reconnects": h.retries, "dup_greetings": h.dup_greetings, "refused_polls": h.refused})
}

impl Outcome {
    fn per_sec(&self, k: usize) -> Option<f64> {
        self.burst.map(|b| k as f64 / (b.median / 1e9))
    }

    fn to_json(&self, k: usize) -> Value {
        json!({
            "launch_greeting": summary_json(self.greeting),
            "launch_ready": summary_json(self.ready),
            "launch_hiccups": hiccups_json(&self.launch_hiccups),
            "rtt": summary_json(self.rtt),
            "pipelined_burst": summary_json(self.burst),
            "pipelined_cmds_per_s": self.per_sec(k),
            "query_named_block_nodes": summary_json(self.graph),
            "query_named_block_nodes_reply_bytes": self.graph_reply_bytes,
            "session_hiccups": hiccups_json(&self.session_hiccups),
        })
    }
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
    let mut targets = vec![
        tgt(Kind::True, "true", Path::new("/bin/true")),
        tgt(Kind::Trivial, "trivial", &me),
        tgt(Kind::Mock, "mock-qemu", &mock),
    ];
    if with_qsd {
        targets.push(tgt(Kind::Qsd, "qsd", &args.qsd));
    }

    let machine = machine_info();
    println!(
        "machine: nproc={} kernel={} cpu={:?} loadavg=[{}]",
        machine["nproc"],
        machine["kernel"].as_str().unwrap_or(""),
        machine["cpu"].as_str().unwrap_or(""),
        machine["loadavg"].as_str().unwrap_or("")
    );
    for t in &targets[2..] {
        println!("{:<10} {}", format!("{}:", t.name), t.program.display());
    }
    println!(
        "floor: launch = spawn /bin/true + wait for its exit; round trip and throughput = trivial \
         server (a child process: this binary with --trivial-server)"
    );
    let dir = tempfile::Builder::new().prefix("qmp-bench").tempdir()?;
    let started = Instant::now();
    let ticks0 = CpuTicks::now();

    // 1. Launches, interleaved target by target. A first session of each
    // server warms the page cache and checks that it starts at all.
    for t in targets.iter().filter(|t| t.kind != Kind::True) {
        drop(start_session(t, dir.path(), timeout)?);
    }
    let mut launches: Vec<LaunchResult> = targets.iter().map(|_| LaunchResult::default()).collect();
    for i in 0..args.launches {
        for (t, out) in targets.iter().zip(launches.iter_mut()) {
            launch_once(t, dir.path(), i, timeout, out)?;
        }
    }
    let t_launch = started.elapsed();

    // 2 + 3. One session per server; round trips in interleaved blocks, then
    // interleaved bursts.
    let servers: Vec<&Target> = targets.iter().filter(|t| t.kind != Kind::True).collect();
    let mut sessions: Vec<Session> = servers
        .iter()
        .map(|t| start_session(t, dir.path(), timeout))
        .collect::<Result<_>>()?;
    for (t, s) in servers.iter().zip(sessions.iter_mut()) {
        round_trips(s, args.warmup, false).with_context(|| format!("{} warm-up", t.name))?;
    }
    let mut left = args.round_trips;
    while left > 0 {
        let n = left.min(RTT_BLOCK);
        for (t, s) in servers.iter().zip(sessions.iter_mut()) {
            round_trips(s, n, true).with_context(|| format!("{} round trips", t.name))?;
        }
        left -= n;
    }
    let t_rtt = started.elapsed() - t_launch;
    for _ in 0..if args.pipeline > 0 {
        args.pipeline_reps
    } else {
        0
    } {
        for (t, s) in servers.iter().zip(sessions.iter_mut()) {
            let d = burst(s, args.pipeline).with_context(|| format!("{} pipelined", t.name))?;
            s.bursts.push(ns(d));
        }
    }
    let t_pipe = started.elapsed() - t_launch - t_rtt;

    // 4. query-named-block-nodes on a 100-node graph, mock-qemu and qsd, in
    // interleaved blocks.
    let graph_on = args.graph_round_trips > 0 && {
        let images = dir.path().join("images");
        match create_images(&args.qemu_img, &images) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("qmp-bench: {e:#}; skipping query-named-block-nodes");
                false
            }
        }
    };
    if graph_on {
        let images = dir.path().join("images");
        for (i, (t, s)) in servers.iter().zip(sessions.iter_mut()).enumerate() {
            if matches!(t.kind, Kind::Mock | Kind::Qsd) {
                build_graph(s, i, &images, dir.path())
                    .with_context(|| format!("{}: building the graph", t.name))?;
                graph_round_trips(s, args.graph_warmup, false)
                    .with_context(|| format!("{} query-named-block-nodes warm-up", t.name))?;
            }
        }
        let mut left = args.graph_round_trips;
        while left > 0 {
            let n = left.min(GRAPH_BLOCK);
            for (t, s) in servers.iter().zip(sessions.iter_mut()) {
                if matches!(t.kind, Kind::Mock | Kind::Qsd) {
                    graph_round_trips(s, n, true)
                        .with_context(|| format!("{} query-named-block-nodes", t.name))?;
                }
            }
            left -= n;
        }
    }
    let t_total = started.elapsed();
    let t_graph = t_total - t_launch - t_rtt - t_pipe;
    let qemu_img_found = Command::new(&args.qemu_img)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());

    // 5. Mirror to READY and pivot: 1 TiB on mock-qemu's virtual clock,
    // 64 MiB really copied by qemu-storage-daemon.
    let mut mirror_rows = Vec::new();
    if args.mirror_reps > 0 {
        for t in targets
            .iter()
            .filter(|t| t.kind == Kind::Mock || (t.kind == Kind::Qsd && qemu_img_found))
        {
            let size = if t.kind == Kind::Mock {
                1 << 40
            } else {
                64 << 20
            };
            let m = mirror_median(
                t,
                dir.path(),
                size,
                args.mirror_reps,
                &args.qemu_img,
                timeout,
            )
            .with_context(|| format!("{}: mirror", t.name))?;
            mirror_rows.push((t.name, size, m));
        }
    }

    let outcomes: Vec<Outcome> = targets
        .iter()
        .zip(&launches)
        .map(|(t, l)| {
            let s = servers
                .iter()
                .position(|x| x.kind == t.kind)
                .map(|i| &sessions[i]);
            outcome(Some(l), s)
        })
        .collect();
    drop(sessions);
    let ticks1 = CpuTicks::now();
    let of = |k: Kind| {
        targets
            .iter()
            .position(|t| t.kind == k)
            .map(|i| &outcomes[i])
    };
    let none = Outcome::default();
    let [o_true, o_triv, o_mock] =
        [Kind::True, Kind::Trivial, Kind::Mock].map(|k| of(k).unwrap_or(&none));
    let o_qsd = of(Kind::Qsd).unwrap_or(&none);

    // The table: launch floor = /bin/true (also for launch→ready, which it
    // has no equivalent of), round-trip floor = the trivial server.
    let col =
        |f: &Outcome, get: &dyn Fn(&Outcome) -> Option<f64>| [get(f), get(o_mock), get(o_qsd)];
    let med = |s: Option<Summary>| s.map(|s| s.median);
    let p99 = |s: Option<Summary>| s.map(|s| s.p99);
    let rows = vec![
        Row::time("launch→greeting median", col(o_true, &|o| med(o.greeting))),
        Row::time("launch→greeting p99", col(o_true, &|o| p99(o.greeting))),
        Row::time(
            "launch→ready median",
            [med(o_true.greeting), med(o_mock.ready), med(o_qsd.ready)],
        ),
        Row::time(
            "launch→ready p99",
            [p99(o_true.greeting), p99(o_mock.ready), p99(o_qsd.ready)],
        ),
        Row::time("query-version RTT median", col(o_triv, &|o| med(o.rtt))),
        Row::time("query-version RTT p99", col(o_triv, &|o| p99(o.rtt))),
        Row::rate(
            "pipelined throughput",
            col(o_triv, &|o| o.per_sec(args.pipeline)),
        ),
        Row::time(
            "query-named-block-nodes (100 nodes) median",
            [None, med(o_mock.graph), med(o_qsd.graph)],
        ),
        Row::time(
            "query-named-block-nodes (100 nodes) p99",
            [None, p99(o_mock.graph), p99(o_qsd.graph)],
        ),
    ];
    // Named rows, for the verdicts.
    let [r_greeting, r_rtt, r_graph_med, r_graph_p99] = [0, 4, 7, 8].map(|i| &rows[i]);
    // qsd/mock: how many times faster mock-qemu is.
    let qsd_per_mock = |r: &Row| ratio(r.times[2], r.times[1]);

    println!();
    println!(
        "launches: {} per target; round trips: {} per target after {} warm-up; pipelined: \
         median of {} bursts of {} requests",
        args.launches, args.round_trips, args.warmup, args.pipeline_reps, args.pipeline
    );
    if graph_on {
        println!(
            "query-named-block-nodes: {} round trips per target after {} warm-up, flat=true, on \
             {GRAPH_NODES} nodes ({GRAPH_IMAGES} qcow2 + their file children); no floor",
            args.graph_round_trips, args.graph_warmup
        );
    }
    print!("{}", render(&rows));
    println!(
        "ratios compare times (for throughput: time per command); >1 means slower than the \
         denominator. launch→ready = reply to qmp_capabilities received."
    );
    if graph_on {
        let bytes = |o: &Outcome| {
            o.graph_reply_bytes
                .map_or("n/a".into(), |b| format!("{b} B"))
        };
        println!(
            "query-named-block-nodes (100 nodes): reply size mock-qemu {}, qsd {}; qsd/mock \
             median {}, p99 {}",
            bytes(o_mock),
            bytes(o_qsd),
            fmt_ratio(qsd_per_mock(r_graph_med)),
            fmt_ratio(qsd_per_mock(r_graph_p99)),
        );
    }
    println!(
        "trivial server launch (a small Rust binary binding a socket): →greeting median {} p99 {}",
        fmt_ns(med(o_triv.greeting)),
        fmt_ns(p99(o_triv.greeting)),
    );
    for (t, o) in targets
        .iter()
        .zip(&outcomes)
        .filter(|(t, _)| t.kind != Kind::True)
    {
        let (l, s) = (&o.launch_hiccups, &o.session_hiccups);
        println!(
            "{:>10}: launches: {} crashed (relaunched, not timed), {} reconnects after a \
             stall/EOF, {} duplicate greetings, {} refused connect polls; session: {} crashed, \
             {} reconnects, {} duplicate greetings",
            t.name,
            l.crashes,
            l.retries,
            l.dup_greetings,
            l.refused,
            s.crashes,
            s.retries,
            s.dup_greetings
        );
    }
    let verdict = |name: &str, r: Option<f64>, limit: f64| match r {
        Some(r) => println!(
            "target {name}: {r:.2}x (limit {limit}x) {}",
            if r <= limit { "MET" } else { "NOT MET" }
        ),
        None => println!("target {name}: n/a"),
    };
    verdict(
        "launch→greeting median ≤ 2x /bin/true",
        r_greeting.ratios()[0],
        2.0,
    );
    verdict(
        "query-version RTT median ≤ 1.5x trivial server",
        r_rtt.ratios()[0],
        1.5,
    );
    if graph_on {
        match qsd_per_mock(r_graph_med) {
            Some(r) => println!(
                "target query-named-block-nodes (100 nodes) median: qsd/mock {r:.2}x (goal ≥ 10x) {}",
                if r >= 10.0 { "MET" } else { "NOT MET" }
            ),
            None => println!("target query-named-block-nodes (100 nodes) median: n/a"),
        }
    }
    for (name, size, m) in &mirror_rows {
        println!(
            "mirror to READY + pivot, {name}: {} in {} wall (median of {}){}",
            if *size >= 1 << 40 {
                format!("{} TiB", size >> 40)
            } else {
                format!("{} MiB", size >> 20)
            },
            fmt_ns(Some(*m)),
            args.mirror_reps,
            if name == &"mock-qemu" {
                " of null-co on the virtual clock (stepped jobs, 1 GiB/s simulated)"
            } else {
                " (qcow2 written full → empty qcow2), bytes really copied"
            }
        );
    }
    if let [(_, s_mock, m_mock), (_, s_qsd, m_qsd)] = mirror_rows[..] {
        println!(
            "mirror: mock-qemu moves {}x the bytes of qsd in {:.2}x its wall time",
            s_mock / s_qsd,
            m_mock / m_qsd
        );
    }

    // Noise: CPU that other processes used while we ran, and steal.
    let secs = t_total.as_secs_f64();
    let noise = match (ticks0, ticks1) {
        (Some(a), Some(b)) => {
            let hz = 100.0; // USER_HZ, fixed at 100 for /proc on Linux.
            let others = b.busy.saturating_sub(a.busy).saturating_sub(b.own - a.own) as f64 / hz;
            let steal = b.steal.saturating_sub(a.steal) as f64 / hz;
            json!({"other_cpu_s": others, "steal_cpu_s": steal})
        }
        _ => Value::Null,
    };
    println!(
        "time: {secs:.1} s (launches {:.1} s, round trips {:.1} s, pipelined {:.1} s, \
         query-named-block-nodes {:.1} s); loadavg at end [{}]",
        t_launch.as_secs_f64(),
        t_rtt.as_secs_f64(),
        t_pipe.as_secs_f64(),
        t_graph.as_secs_f64(),
        machine_info()["loadavg"].as_str().unwrap_or("")
    );
    if let (Some(o), Some(st)) = (noise["other_cpu_s"].as_f64(), noise["steal_cpu_s"].as_f64()) {
        println!(
            "noise: other processes used {o:.1} CPU-s during the run ({:.0}% of one CPU), steal \
             {st:.1} s. Nothing is pinned: medians move a few % between quiet runs; re-run if \
             other processes were busy.",
            100.0 * o / secs
        );
    }

    if let Some(path) = &args.json {
        let ratios: Vec<Value> = rows
            .iter()
            .map(|r| {
                let [a, b, c] = r.ratios();
                json!({"metric": r.label, "mock/floor": a, "qsd/floor": b, "mock/qsd": c})
            })
            .collect();
        let mut per_target = serde_json::Map::new();
        for (t, o) in targets.iter().zip(&outcomes) {
            per_target.insert(t.name.to_owned(), o.to_json(args.pipeline));
        }
        let doc = json!({
            "machine": machine,
            "config": {
                "mock": mock,
                "qsd": with_qsd.then_some(&args.qsd),
                "launches": args.launches,
                "round_trips": args.round_trips,
                "warmup": args.warmup,
                "pipeline": args.pipeline,
                "pipeline_reps": args.pipeline_reps,
                "greeting_timeout_ms": args.greeting_timeout_ms,
                "graph_round_trips": args.graph_round_trips,
                "graph_warmup": args.graph_warmup,
            },
            "floor": {"launch": "/bin/true", "round_trip": "trivial"},
            "targets": per_target,
            "ratios": ratios,
            "query_named_block_nodes": if graph_on {
                json!({
                    "nodes": GRAPH_NODES,
                    "qcow2_images": GRAPH_IMAGES,
                    "round_trips": args.graph_round_trips,
                    "warmup": args.graph_warmup,
                    "reply_bytes": {
                        "mock-qemu": o_mock.graph_reply_bytes,
                        "qsd": o_qsd.graph_reply_bytes,
                    },
                    "median_ns": {"mock-qemu": med(o_mock.graph), "qsd": med(o_qsd.graph)},
                    "p99_ns": {"mock-qemu": p99(o_mock.graph), "qsd": p99(o_qsd.graph)},
                    "qsd/mock_median": qsd_per_mock(r_graph_med),
                    "qsd/mock_p99": qsd_per_mock(r_graph_p99),
                    "goal_qsd/mock_median": 10.0,
                })
            } else {
                Value::Null
            },
            "mirror": mirror_rows
                .iter()
                .map(|(name, size, m)| json!({"target": name, "bytes": size, "median_ns": m}))
                .collect::<Vec<_>>(),
            "noise": noise,
            "seconds": secs,
        });
        fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("json: {}", path.display());
    }
    Ok(())
}

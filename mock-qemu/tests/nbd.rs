//! The NBD server against QEMU's own NBD clients (`qemu-nbd --list`,
//! `qemu-img`, `qemu-io`), a hand-written client for the corners, and
//! garbage. When `QEMU_QSD_10_0` names a qemu-storage-daemon, the listing is
//! also compared with the one real QEMU gives for the same exports.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Once};
use std::time::{Duration, Instant};

use mock_qemu::nbd::{
    parse_option, ClientOption, Export, ExportData, ExportTable, InfoRequest, MetaRequest, NbdAddr,
    NbdServer, NbdServerOptions, INFO_BLOCK_SIZE, INFO_NAME, OPT_ABORT, OPT_EXTENDED_HEADERS,
    OPT_GO, OPT_INFO, OPT_LIST, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_STARTTLS,
    OPT_STRUCTURED_REPLY, WRITE_NOT_IMPLEMENTED,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(20);
const MIB: u64 = 1024 * 1024;
const RUNTIME_THREAD: &str = "nbd-test-rt";

/// Panics on the server's runtime threads (tokio catches task panics, so
/// they would not fail a test by themselves).
static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_server_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(RUNTIME_THREAD) {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            prev(info);
        }));
    });
}

fn runtime() -> tokio::runtime::Runtime {
    count_server_panics();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(RUNTIME_THREAD)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `cmd` to completion, failing the test if it takes over `TIMEOUT`.
fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{desc}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(r) => r.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{desc} timed out");
        }
    }
}

fn run_ok(cmd: Command) -> String {
    let desc = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{desc}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cmd(prog: &str, args: &[&str]) -> Command {
    let mut c = Command::new(prog);
    c.args(args);
    c
}

/// A 1 MiB raw image whose first 64 KiB are 0xab, written by qemu-io.
fn make_image(dir: &Path) -> PathBuf {
    let img = dir.join("img.raw");
    let p = img.to_str().unwrap();
    run_ok(cmd("qemu-img", &["create", "-q", "-f", "raw", p, "1M"]));
    run_ok(cmd(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0xab 0 64k", p],
    ));
    img
}

struct Fixture {
    _rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    table: ExportTable,
    server: Option<NbdServer>,
    sock: PathBuf,
}

impl Fixture {
    /// exp1: the image, read-only; zero: 2 MiB of zeroes, writable, with a
    /// description; big: the image served as 2 MiB (zeros past its end).
    fn new() -> Fixture {
        Self::with_options(NbdServerOptions::default())
    }

    fn with_options(opts: NbdServerOptions) -> Fixture {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let img = make_image(dir.path());
        let table = ExportTable::new();
        table.insert(Export {
            name: "exp1".into(),
            description: None,
            size: MIB,
            read_only: true,
            data: ExportData::RawFile(img.clone()),
        });
        table.insert(Export {
            name: "zero".into(),
            description: Some("zero disk".into()),
            size: 2 * MIB,
            read_only: false,
            data: ExportData::Zeroes,
        });
        let sock = dir.path().join("nbd.sock");
        let server = {
            let _g = rt.enter();
            NbdServer::start_with(&NbdAddr::Unix(sock.clone()), table.clone(), opts).unwrap()
        };
        Fixture {
            _rt: rt,
            dir,
            table,
            server: Some(server),
            sock,
        }
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.sock.display())
    }

    fn client(&self) -> Client {
        Client::connect(&self.sock)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
        let panics = SERVER_PANICS.load(Ordering::SeqCst);
        if !std::thread::panicking() {
            assert_eq!(panics, 0, "the server panicked");
        }
    }
}

// --------------------------------------------------------------------------
// A minimal synchronous NBD client for the corners real tools don't reach.

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_POLICY: u32 = 0x8000_0002;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

#[derive(Debug, PartialEq)]
enum Reply {
    Simple { error: u32, data: Vec<u8> },
    Chunks(Vec<(u16, u16, Vec<u8>)>),
}

struct Client {
    s: UnixStream,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes(b[..2].try_into().unwrap())
}

fn name_payload(name: &str) -> Vec<u8> {
    let mut p = (name.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    p
}

fn info_payload(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut p = name_payload(name);
    p.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for r in requests {
        p.extend_from_slice(&r.to_be_bytes());
    }
    p
}

fn meta_payload(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut p = name_payload(name);
    p.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        p.extend_from_slice(&name_payload(q));
    }
    p
}

impl Client {
    fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_write_timeout(Some(TIMEOUT)).unwrap();
        Client { s }
    }

    fn rx(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    /// Reads the greeting, sends FIXED_NEWSTYLE | NO_ZEROES.
    fn hello(&mut self) -> Vec<u8> {
        let h = self.rx(18);
        self.s.write_all(&3u32.to_be_bytes()).unwrap();
        h
    }

    fn opt(&mut self, opt: u32, payload: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        self.s.write_all(&m).unwrap();
        let mut reps = vec![];
        loop {
            let h = self.rx(20);
            assert_eq!(&h[0..8], &0x0003_e889_0455_65a9u64.to_be_bytes());
            assert_eq!(be32(&h[8..]), opt);
            let ty = be32(&h[12..]);
            let len = be32(&h[16..]) as usize;
            let d = self.rx(len);
            reps.push((ty, d));
            if ty == REP_ACK || ty & 0x8000_0000 != 0 {
                return reps;
            }
        }
    }

    /// Structured replies, base:allocation, then GO `name`.
    fn go_structured(&mut self, name: &str) -> Vec<(u32, Vec<u8>)> {
        self.hello();
        assert_eq!(self.opt(OPT_STRUCTURED_REPLY, &[]), vec![(REP_ACK, vec![])]);
        let r = self.opt(
            OPT_SET_META_CONTEXT,
            &meta_payload(name, &["base:allocation"]),
        );
        assert_eq!(r.last().unwrap().0, REP_ACK, "{r:?}");
        let r = self.opt(OPT_GO, &info_payload(name, &[]));
        assert_eq!(r.last().unwrap().0, REP_ACK, "{r:?}");
        r
    }

    fn request(&mut self, flags: u16, ty: u16, from: u64, len: u32, payload: &[u8]) {
        let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&ty.to_be_bytes());
        m.extend_from_slice(&0x1234u64.to_be_bytes());
        m.extend_from_slice(&from.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(payload);
        self.s.write_all(&m).unwrap();
    }

    /// Reads one reply; `read_len` is the data a simple read reply carries.
    fn reply(&mut self, read_len: usize) -> Reply {
        let magic = be32(&self.rx(4));
        if magic == SIMPLE_REPLY_MAGIC {
            let h = self.rx(12);
            let error = be32(&h);
            assert_eq!(&h[4..], &0x1234u64.to_be_bytes());
            let data = if error == 0 {
                self.rx(read_len)
            } else {
                vec![]
            };
            return Reply::Simple { error, data };
        }
        let mut chunks = vec![];
        let mut magic = magic;
        loop {
            assert_eq!(magic, STRUCTURED_REPLY_MAGIC);
            let h = self.rx(16);
            let (flags, ty) = (be16(&h), be16(&h[2..]));
            assert_eq!(&h[4..12], &0x1234u64.to_be_bytes());
            let d = self.rx(be32(&h[12..]) as usize);
            chunks.push((flags, ty, d));
            if flags & 1 != 0 {
                return Reply::Chunks(chunks);
            }
            magic = be32(&self.rx(4));
        }
    }

    /// True once the server closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 4096];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

fn error_chunk(errno: u32, msg: &str) -> Reply {
    let mut d = errno.to_be_bytes().to_vec();
    d.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    d.extend_from_slice(msg.as_bytes());
    Reply::Chunks(vec![(1, 0x8001, d)])
}

// --------------------------------------------------------------------------
// Real tools

#[test]
fn qemu_nbd_list_shows_every_export_with_its_size() {
    let f = Fixture::new();
    let out = run_ok(cmd("qemu-nbd", &["--list", "-k", f.sock.to_str().unwrap()]));
    println!("{out}");
    assert!(out.starts_with("exports available: 2\n"), "{out}");
    let exp1 = out.find(" export: 'exp1'\n").expect(&out);
    let zero = out.find(" export: 'zero'\n").expect(&out);
    assert!(exp1 < zero, "listing order is insertion order: {out}");
    let (a, b) = out.split_at(zero);
    assert!(a.contains("  size:  1048576\n"), "{out}");
    assert!(
        a.contains("flags: 0x58f ( readonly flush fua df multi cache )"),
        "{out}"
    );
    assert!(!a.contains("description"), "{out}");
    assert!(b.contains("  description: zero disk\n"), "{out}");
    assert!(b.contains("  size:  2097152\n"), "{out}");
    assert!(
        b.contains("flags: 0xded ( flush fua trim zeroes df multi cache fast-zero )"),
        "{out}"
    );
    for block in [a, b] {
        assert!(block.contains("  min block: 1\n  opt block: 4096\n  max block: 33554432\n"));
        assert!(block.contains("  available meta contexts: 1\n   base:allocation\n"));
    }
}

#[test]
fn qemu_img_info_shows_the_virtual_size() {
    let f = Fixture::new();
    for (export, size) in [("exp1", MIB), ("zero", 2 * MIB)] {
        let out = run_ok(cmd("qemu-img", &["info", "--output=json", &f.uri(export)]));
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["virtual-size"], size, "{out}");
    }
}

#[test]
fn qemu_io_reads_the_served_data() {
    let f = Fixture::new();
    let io = |uri: &str, c: &str| run_ok(cmd("qemu-io", &["-r", "-f", "raw", "-c", c, uri]));
    io(&f.uri("exp1"), "read -P 0xab 0 64k");
    io(&f.uri("exp1"), "read -P 0 64k 960k");
    io(&f.uri("zero"), "read -P 0 0 2M");
    // A file shorter than its export: zeros past EOF.
    let img = f.dir.path().join("img.raw");
    f.table.insert(Export {
        name: "big".into(),
        description: None,
        size: 2 * MIB,
        read_only: true,
        data: ExportData::RawFile(img),
    });
    io(&f.uri("big"), "read -P 0xab 0 64k");
    io(&f.uri("big"), "read -P 0 1M 1M");
    // A pattern mismatch is caught (the check is not vacuous).
    let out = run(cmd(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0xcd 0 4k", &f.uri("exp1")],
    ));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed"));
    // Refuse: reads fail with EIO.
    f.table.insert(Export {
        name: "bad".into(),
        description: None,
        size: MIB,
        read_only: true,
        data: ExportData::Refuse,
    });
    let out = run(cmd(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read 0 4k", &f.uri("bad")],
    ));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Input/output error"), "{text}");
}

#[test]
fn an_unknown_export_fails_with_qemus_message() {
    let f = Fixture::new();
    let out = run(cmd("qemu-img", &["info", &f.uri("nope")]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server reported: export 'nope' not present"),
        "{err}"
    );
}

#[test]
fn tcp_on_loopback_with_port_zero() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path());
    let table = ExportTable::new();
    table.insert(Export {
        name: "exp1".into(),
        description: None,
        size: MIB,
        read_only: true,
        data: ExportData::RawFile(img),
    });
    let server = {
        let _g = rt.enter();
        NbdServer::start(&NbdAddr::Tcp("127.0.0.1".into(), 0), table, 0).unwrap()
    };
    let NbdAddr::Tcp(host, port) = server.local_addr().clone() else {
        panic!("{:?}", server.local_addr())
    };
    assert_eq!(host, "127.0.0.1");
    assert_ne!(port, 0);
    let uri = format!("nbd://127.0.0.1:{port}/exp1");
    let out = run_ok(cmd("qemu-img", &["info", "--output=json", &uri]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["virtual-size"], MIB);
    run_ok(cmd(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0xab 0 64k", &uri],
    ));
    // Binding the same port again fails synchronously; after stop it works.
    let again = {
        let _g = rt.enter();
        NbdServer::start(
            &NbdAddr::Tcp("127.0.0.1".into(), port),
            ExportTable::new(),
            0,
        )
    };
    assert_eq!(again.unwrap_err().kind(), ErrorKind::AddrInUse);
    server.stop();
    let _g = rt.enter();
    NbdServer::start(
        &NbdAddr::Tcp("127.0.0.1".into(), port),
        ExportTable::new(),
        0,
    )
    .unwrap()
    .stop();
}

// --------------------------------------------------------------------------
// Hand-written client

#[test]
fn option_haggling_replies_as_qemu() {
    let f = Fixture::new();
    let mut c = f.client();
    let h = c.hello();
    assert_eq!(&h[..8], b"NBDMAGIC");
    assert_eq!(&h[8..16], b"IHAVEOPT");
    assert_eq!(&h[16..], &[0, 3]);

    let list = c.opt(OPT_LIST, &[]);
    let mut zero = name_payload("zero");
    zero.extend_from_slice(b"zero disk");
    assert_eq!(
        list,
        vec![
            (REP_SERVER, name_payload("exp1")),
            (REP_SERVER, zero),
            (REP_ACK, vec![])
        ]
    );
    assert_eq!(
        c.opt(OPT_LIST, b"x"),
        vec![(
            REP_ERR_INVALID,
            b"option 'list' has unexpected length".to_vec()
        )]
    );
    assert_eq!(
        c.opt(OPT_EXTENDED_HEADERS, &[]),
        vec![(
            REP_ERR_UNSUP,
            b"Unsupported option 11 (extended headers)".to_vec()
        )]
    );
    assert_eq!(
        c.opt(99, &[1, 2, 3]),
        vec![(REP_ERR_UNSUP, b"Unsupported option 99 (<unknown>)".to_vec())]
    );
    assert_eq!(
        c.opt(OPT_STARTTLS, &[]),
        vec![(REP_ERR_POLICY, b"TLS not configured".to_vec())]
    );
    assert_eq!(
        c.opt(
            OPT_SET_META_CONTEXT,
            &meta_payload("exp1", &["base:allocation"])
        ),
        vec![(
            REP_ERR_INVALID,
            b"request option 'set meta context' when structured reply is not negotiated".to_vec()
        )]
    );
    assert_eq!(
        c.opt(OPT_INFO, &info_payload("nope", &[])),
        vec![(REP_ERR_UNKNOWN, b"export 'nope' not present".to_vec())]
    );
    // INFO on exp2 with NAME requested: name, description, block size,
    // export, ack (QEMU's order).
    let r = c.opt(
        OPT_INFO,
        &info_payload("zero", &[INFO_NAME, INFO_BLOCK_SIZE]),
    );
    let mut blk = 3u16.to_be_bytes().to_vec();
    blk.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0x10, 0, 2, 0, 0, 0]);
    let mut ex = 0u16.to_be_bytes().to_vec();
    ex.extend_from_slice(&(2 * MIB).to_be_bytes());
    ex.extend_from_slice(&0x0d6du16.to_be_bytes());
    assert_eq!(
        r,
        vec![
            (REP_INFO, [&[0u8, 1][..], b"zero"].concat()),
            (REP_INFO, [&[0u8, 2][..], b"zero disk"].concat()),
            (REP_INFO, blk),
            (REP_INFO, ex),
            (REP_ACK, vec![]),
        ]
    );
    let meta = c.opt(OPT_LIST_META_CONTEXT, &meta_payload("exp1", &[]));
    assert_eq!(
        meta,
        vec![
            (
                REP_META_CONTEXT,
                [&[0u8; 4][..], b"base:allocation"].concat()
            ),
            (REP_ACK, vec![])
        ]
    );
    assert_eq!(
        c.opt(OPT_LIST_META_CONTEXT, &meta_payload("exp1", &["qemu:"])),
        vec![(REP_ACK, vec![])]
    );
    assert_eq!(c.opt(OPT_ABORT, &[]), vec![(REP_ACK, vec![])]);
    assert!(c.closed());
}

#[test]
fn transmission_structured() {
    let f = Fixture::new();
    let mut c = f.client();
    let r = c.go_structured("exp1");
    // Structured: DF is advertised.
    let export = r
        .iter()
        .find(|(t, d)| *t == REP_INFO && d[..2] == [0, 0])
        .unwrap();
    assert_eq!(be16(&export.1[10..]), 0x058f);
    assert_eq!(f.table.client_count("exp1"), 1);

    c.request(0, 0, 4096, 8, &[]);
    let mut data = 4096u64.to_be_bytes().to_vec();
    data.extend_from_slice(&[0xab; 8]);
    assert_eq!(c.reply(0), Reply::Chunks(vec![(1, 1, data)]));

    c.request(0, 0, 0, 0, &[]);
    assert_eq!(c.reply(0), Reply::Chunks(vec![(1, 0, vec![])]));

    c.request(0, 7, 512, 4096, &[]);
    let mut ext = 0u32.to_be_bytes().to_vec();
    ext.extend_from_slice(&4096u32.to_be_bytes());
    ext.extend_from_slice(&0u32.to_be_bytes());
    assert_eq!(c.reply(0), Reply::Chunks(vec![(1, 5, ext)]));

    c.request(0, 1, 0, 512, &[0u8; 512]);
    assert_eq!(c.reply(0), error_chunk(22, "Export is read-only"));
    c.request(0, 4, 0, 512, &[]);
    assert_eq!(c.reply(0), error_chunk(22, "Export is read-only"));
    c.request(0, 0, MIB - 512, 1024, &[]);
    assert_eq!(
        c.reply(0),
        error_chunk(
            22,
            "operation past EOF; From: 1048064, Len: 1024, Size: 1048576"
        )
    );
    c.request(0, 0, 0, 32 * 1024 * 1024 + 1, &[]);
    assert_eq!(
        c.reply(0),
        error_chunk(22, "len (33554433) is larger than max len (33554432)")
    );
    c.request(0x40, 0, 0, 16, &[]);
    assert_eq!(
        c.reply(0),
        error_chunk(22, "unsupported flags for command read (got 0x40)")
    );
    c.request(0, 9, 0, 0, &[]);
    assert_eq!(
        c.reply(0),
        error_chunk(22, "invalid request type (9) received")
    );
    c.request(0, 3, 0, 0, &[]);
    assert_eq!(
        c.reply(0),
        Reply::Simple {
            error: 0,
            data: vec![]
        }
    );
    c.request(0, 2, 0, 0, &[]);
    assert!(c.closed());
    assert_eq!(f.table.client_count("exp1"), 0);
}

#[test]
fn transmission_simple_and_writes() {
    let f = Fixture::new();
    let mut c = f.client();
    c.hello();
    let r = c.opt(OPT_GO, &info_payload("zero", &[]));
    let export = r
        .iter()
        .find(|(t, d)| *t == REP_INFO && d[..2] == [0, 0])
        .unwrap();
    assert_eq!(
        be16(&export.1[10..]),
        0x0d6d,
        "no DF without structured replies"
    );
    c.request(0, 0, 0, 16, &[]);
    assert_eq!(
        c.reply(16),
        Reply::Simple {
            error: 0,
            data: vec![0; 16]
        }
    );
    // Writable export, no data plane: EIO (no message in simple mode).
    c.request(0, 1, 0, 4096, &[7u8; 4096]);
    assert_eq!(
        c.reply(0),
        Reply::Simple {
            error: 5,
            data: vec![]
        }
    );
    c.request(0, 7, 0, 512, &[]);
    assert_eq!(
        c.reply(0),
        Reply::Simple {
            error: 22,
            data: vec![]
        }
    );
    c.request(0, 1, 0, 32 * 1024 * 1024 + 1, &[]);
    assert_eq!(
        c.reply(0),
        Reply::Simple {
            error: 22,
            data: vec![]
        }
    );
    assert!(
        c.closed(),
        "an oversized write's payload is not read: close"
    );

    let mut c = f.client();
    c.go_structured("zero");
    for ty in [1u16, 4, 6] {
        let payload = if ty == 1 { vec![0u8; 512] } else { vec![] };
        c.request(0, ty, 0, 512, &payload);
        assert_eq!(c.reply(0), error_chunk(5, WRITE_NOT_IMPLEMENTED));
    }
    c.request(0, 7, 0, 512, &[]);
    let mut ext = 0u32.to_be_bytes().to_vec();
    ext.extend_from_slice(&512u32.to_be_bytes());
    ext.extend_from_slice(&1u32.to_be_bytes());
    assert_eq!(
        c.reply(0),
        Reply::Chunks(vec![(1, 5, ext)]),
        "null-co: hole"
    );
}

#[test]
fn removal_and_stop_disconnect_clients() {
    let mut f = Fixture::new();
    let mut c = f.client();
    c.go_structured("exp1");
    let mut idle = f.client();
    idle.hello();
    assert_eq!(f.table.client_count("exp1"), 1);
    assert!(f.table.remove("exp1"));
    assert!(!f.table.remove("exp1"));
    assert!(c.closed());
    assert_eq!(f.table.names(), vec!["zero".to_string()]);

    f.server.take().unwrap().stop();
    assert!(!f.sock.exists(), "stop removes the socket file");
    assert!(UnixStream::connect(&f.sock).is_err());
    assert!(idle.closed(), "stop drops clients still negotiating");
}

#[test]
fn max_connections_holds_the_next_client_in_the_backlog() {
    let f = Fixture::with_options(NbdServerOptions {
        max_connections: 1,
        ..NbdServerOptions::default()
    });
    let mut first = f.client();
    first.hello();
    let r = first.opt(OPT_INFO, &info_payload("exp1", &[]));
    let export = r
        .iter()
        .find(|(t, d)| *t == REP_INFO && d[..2] == [0, 0])
        .unwrap();
    assert_eq!(be16(&export.1[10..]) & 0x100, 0, "no multi-conn at max 1");
    let mut second = f.client();
    second
        .s
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut b = [0u8; 1];
    let e = second.s.read(&mut b).unwrap_err();
    assert!(matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));
    drop(first);
    second.s.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(&second.hello()[..8], b"NBDMAGIC");
}

#[test]
fn a_stalled_handshake_neither_blocks_others_nor_lasts() {
    let f = Fixture::with_options(NbdServerOptions {
        max_connections: 0,
        handshake_max_seconds: 1,
    });
    let mut stalled = f.client();
    stalled.rx(18);
    let started = Instant::now();
    let out = run_ok(cmd("qemu-nbd", &["--list", "-k", f.sock.to_str().unwrap()]));
    assert!(out.contains("exports available: 2"));
    assert!(stalled.closed(), "handshake-max-seconds drops the client");
    assert!(started.elapsed() < TIMEOUT);
}

// --------------------------------------------------------------------------
// Garbage

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Up to `max - 1` random bytes.
    fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max) as usize;
        self.bytes(n)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn garbage_closes_the_connection_without_panicking() {
    let f = Fixture::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..300 {
        let mut c = f.client();
        c.rx(18);
        let mut m = vec![];
        match i % 4 {
            // Anything at all.
            0 => m = rng.some_bytes(64),
            // Valid flags, then options with random numbers and lengths.
            1 | 2 => {
                m.extend_from_slice(&3u32.to_be_bytes());
                for _ in 0..rng.below(6) {
                    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
                    let opt = if i % 4 == 1 {
                        rng.below(13) as u32
                    } else {
                        rng.next() as u32
                    };
                    m.extend_from_slice(&opt.to_be_bytes());
                    let body = rng.some_bytes(48);
                    let len = if rng.below(4) == 0 {
                        rng.next() as u32
                    } else {
                        body.len() as u32
                    };
                    m.extend_from_slice(&len.to_be_bytes());
                    m.extend_from_slice(&body);
                }
            }
            // A proper GO, then requests with random fields.
            _ => {
                m.extend_from_slice(&3u32.to_be_bytes());
                for (opt, p) in [
                    (OPT_STRUCTURED_REPLY, vec![]),
                    (OPT_GO, info_payload("exp1", &[])),
                ] {
                    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
                    m.extend_from_slice(&opt.to_be_bytes());
                    m.extend_from_slice(&(p.len() as u32).to_be_bytes());
                    m.extend_from_slice(&p);
                }
                for _ in 0..rng.below(5) {
                    m.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
                    m.extend_from_slice(&(rng.below(64) as u16).to_be_bytes());
                    m.extend_from_slice(&(rng.below(10) as u16).to_be_bytes());
                    m.extend_from_slice(&rng.next().to_be_bytes());
                    m.extend_from_slice(&rng.below(2 * MIB).to_be_bytes());
                    m.extend_from_slice(&(rng.below(128 * 1024) as u32).to_be_bytes());
                }
                m.extend(rng.some_bytes(40));
            }
        }
        // The server may close mid-write: ignore write errors.
        let _ = c.s.write_all(&m);
        let _ = c.s.shutdown(std::net::Shutdown::Write);
        assert!(c.closed(), "case {i}: the connection stays open");
    }
    // Still serving.
    let out = run_ok(cmd("qemu-nbd", &["--list", "-k", f.sock.to_str().unwrap()]));
    assert!(out.contains("exports available: 2"));
    assert_eq!(SERVER_PANICS.load(Ordering::SeqCst), 0);
}

// --------------------------------------------------------------------------
// The option parser

#[test]
fn option_parser_on_hand_built_bytes() {
    let go = [&[0, 0, 0, 4][..], b"exp1", &[0, 2], &[0, 1], &[0, 3]].concat();
    assert_eq!(
        parse_option(OPT_GO, &go),
        Ok(ClientOption::Go(InfoRequest {
            name: "exp1".into(),
            requests: vec![1, 3]
        }))
    );
    assert_eq!(
        parse_option(OPT_INFO, &[0, 0, 0, 0, 0, 0]),
        Ok(ClientOption::Info(InfoRequest {
            name: String::new(),
            requests: vec![]
        }))
    );
    let msg = |opt, bytes: &[u8]| parse_option(opt, bytes).unwrap_err().message;
    // Says two requests, carries one.
    assert_eq!(
        msg(OPT_INFO, &[0, 0, 0, 1, b'a', 0, 2, 0, 1]),
        "Inconsistent lengths in option info"
    );
    assert_eq!(msg(OPT_GO, &[0, 0]), "Inconsistent lengths in option go");
    assert_eq!(
        msg(OPT_GO, &[0, 0, 0, 4, b'e', 0, b'p', b'1', 0, 0]),
        "Unexpected embedded NUL in option go"
    );
    assert_eq!(
        msg(OPT_GO, &[0, 0, 0x13, 0x88]),
        "Invalid name length: 5000"
    );
    assert_eq!(
        msg(OPT_INFO, &[0, 0, 0, 0, 0, 0, b'z']),
        "option 'info' has unexpected length"
    );
    assert_eq!(
        msg(OPT_STRUCTURED_REPLY, b"x"),
        "option 'structured reply' has unexpected length"
    );
    assert_eq!(parse_option(OPT_LIST, &[]), Ok(ClientOption::List));
    assert_eq!(parse_option(OPT_ABORT, b"ignored"), Ok(ClientOption::Abort));
    assert_eq!(parse_option(OPT_STARTTLS, &[]), Ok(ClientOption::StartTls));
    assert_eq!(
        parse_option(1, b"exp1\0tail"),
        Ok(ClientOption::ExportName("exp1".into()))
    );
    assert_eq!(
        parse_option(OPT_EXTENDED_HEADERS, &[]),
        Ok(ClientOption::Unsupported(OPT_EXTENDED_HEADERS))
    );
    // Meta queries; one over 4096 bytes is skipped.
    let mut meta = meta_payload("exp1", &["base:allocation", "qemu:dirty-bitmap:b"]);
    meta[11] = 3; // three queries
    meta.extend_from_slice(&4097u32.to_be_bytes());
    meta.extend_from_slice(&[b'x'; 4097]);
    assert_eq!(
        parse_option(OPT_LIST_META_CONTEXT, &meta),
        Ok(ClientOption::ListMetaContext(MetaRequest {
            export: "exp1".into(),
            queries: vec!["base:allocation".into(), "qemu:dirty-bitmap:b".into()]
        }))
    );
    // A huge query count with no queries is an inconsistency, not a loop.
    assert_eq!(
        msg(
            OPT_SET_META_CONTEXT,
            &[&name_payload("exp1")[..], &[0xff, 0xff, 0xff, 0xff]].concat()
        ),
        "Inconsistent lengths in option set meta context"
    );
    // Random payloads never panic.
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let opt = rng.below(14) as u32;
        let len = rng.below(40) as usize;
        let mut b = rng.bytes(len);
        if b.len() >= 4 && rng.below(2) == 0 {
            b[..3].fill(0); // plausible lengths
        }
        let _ = parse_option(opt, &b);
    }
}

// --------------------------------------------------------------------------
// Against real QEMU

/// `qemu-nbd --list` output, minus what only extended headers (which the
/// mock does not offer) change.
fn normalize_listing(s: &str) -> String {
    s.lines()
        .filter(|l| !l.trim_start().starts_with("transaction size:"))
        .map(|l| {
            if let Some(rest) = l.strip_prefix("  flags: 0x") {
                let (hex, names) = rest.split_once(' ').unwrap_or((rest, ""));
                let v = u32::from_str_radix(hex, 16).unwrap_or(0) & !0x1000;
                let names = names.replace(" block-status-payload", "");
                format!("  flags: 0x{v:x} {names}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn listing_matches_real_qemu_storage_daemon() {
    let Some(qsd) = std::env::var_os("QEMU_QSD_10_0") else {
        eprintln!("QEMU_QSD_10_0 not set: mock-only");
        return;
    };
    let f = Fixture::new();
    let img = f.dir.path().join("img.raw");
    let real_sock = f.dir.path().join("real.sock");
    let mut child = Command::new(qsd)
        .args([
            "--blockdev".to_string(),
            format!("driver=file,filename={},node-name=f", img.display()),
            "--blockdev".into(),
            "driver=null-co,node-name=z,size=2097152".into(),
            "--nbd-server".into(),
            format!("addr.type=unix,addr.path={}", real_sock.display()),
            "--export".into(),
            "type=nbd,id=e1,node-name=f,name=exp1".into(),
            "--export".into(),
            "type=nbd,id=e2,node-name=z,name=zero,description=zero disk,writable=on".into(),
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let real = loop {
        let out = run(cmd(
            "qemu-nbd",
            &["--list", "-k", real_sock.to_str().unwrap()],
        ));
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "qemu-storage-daemon did not listen"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "qemu-storage-daemon exited"
        );
    };
    let _ = child.kill();
    let _ = child.wait();
    let mock = run_ok(cmd("qemu-nbd", &["--list", "-k", f.sock.to_str().unwrap()]));
    assert_eq!(
        normalize_listing(&mock),
        normalize_listing(&real),
        "mock:\n{mock}\nreal:\n{real}"
    );
}

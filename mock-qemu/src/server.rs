//! Sessions and listeners: bytes in, lines out; the only async part.
//!
//! Every line a client receives goes through its session's queue, filled by
//! [`Hub`] under one lock, so replies and events reach each client in the
//! order the core produced them (events raised by a command before its
//! reply, as QEMU writes them).
//!
//! Like a QEMU chardev socket in server mode, a monitor serves one client at
//! a time: the next connection is accepted when the current one ends and
//! waits in the listen backlog until then (`max_clients` raises that, a
//! mock-only extension). Several monitors serve in parallel.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::core::{Core, Delivery, SessionId};
use crate::qmp::json::{JsonStreamer, Parsed};

/// Size of one socket read.
pub const READ_CHUNK: usize = 64 * 1024;

/// The core plus each session's outgoing queue.
#[derive(Debug)]
struct Hub {
    core: Core,
    queues: BTreeMap<SessionId, mpsc::UnboundedSender<String>>,
}

impl Hub {
    fn deliver(&mut self, requester: SessionId, d: Delivery) {
        let send =
            |q: &BTreeMap<SessionId, mpsc::UnboundedSender<String>>, sid: SessionId, line: &str| {
                if let Some(tx) = q.get(&sid) {
                    let _ = tx.send(line.to_owned());
                }
            };
        for line in &d.events {
            for &sid in &d.recipients {
                send(&self.queues, sid, line);
            }
        }
        if let Some(reply) = &d.reply {
            send(&self.queues, requester, reply);
        }
        for line in &d.after {
            for &sid in &d.recipients {
                send(&self.queues, sid, line);
            }
        }
    }
}

/// A running mock QEMU: one core, any number of monitors and sessions.
#[derive(Debug, Clone)]
pub struct MockQemu {
    hub: Arc<Mutex<Hub>>,
    shutdown: watch::Sender<bool>,
    warmed: Arc<std::sync::Once>,
}

/// Where a monitor listens.
#[derive(Debug)]
pub enum Listener {
    /// A unix socket we bound (the file is removed at exit, as QEMU does).
    Unix(UnixListener, Option<PathBuf>),
    /// A TCP socket.
    Tcp(TcpListener),
}

impl MockQemu {
    /// A mock around a core.
    pub fn new(core: Core) -> Self {
        let (shutdown, _) = watch::channel(false);
        MockQemu {
            hub: Arc::new(Mutex::new(Hub {
                core,
                queues: BTreeMap::new(),
            })),
            shutdown,
            warmed: Arc::new(std::sync::Once::new()),
        }
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        // A panic while holding the lock would be a mock bug; keep serving.
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the core locked (tests, the virtual clock driver).
    pub fn with_core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        f(&mut self.hub().core)
    }

    /// Resolves when the process should exit (`quit`, a signal).
    pub async fn wait_shutdown(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Asks every session and listener to stop.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Scaled real time: moves the virtual clock by `micros` and delivers
    /// what the jobs did meanwhile.
    pub fn tick(&self, micros: u64) {
        let mut hub = self.hub();
        let d = hub.core.tick(micros);
        hub.deliver(0, d);
    }

    /// SIGTERM / SIGINT: deliver what QEMU prints on the way out, then stop.
    pub fn terminate(&self, reason: &'static str) {
        {
            let mut hub = self.hub();
            let d = hub.core.terminate(reason);
            hub.deliver(0, d);
        }
        self.shutdown();
    }

    /// An in-process connection (a duplex pipe), served by a spawned session.
    /// Must be called within a tokio runtime.
    pub fn connect(&self) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(1 << 20);
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.serve_connection(server).await;
        });
        client
    }

    /// Serves one client until it disconnects or the mock shuts down.
    pub async fn serve_connection<S>(&self, stream: S) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (sid, greeting) = {
            let mut hub = self.hub();
            let (sid, greeting) = hub.core.open_session();
            hub.queues.insert(sid, tx);
            (sid, greeting)
        };
        let result = self.session_loop(sid, stream, greeting, &mut rx).await;
        let mut hub = self.hub();
        hub.queues.remove(&sid);
        hub.core.close_session(sid);
        result
    }

    async fn session_loop<S>(
        &self,
        sid: SessionId,
        stream: S,
        greeting: String,
        rx: &mut mpsc::UnboundedReceiver<String>,
    ) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut shutdown = self.shutdown.subscribe();
        let mut out = String::with_capacity(4096);
        out.push_str(&greeting);
        out.push_str("\r\n");
        writer.write_all(out.as_bytes()).await?;
        out.clear();
        self.warm_profile();
        let mut streamer = JsonStreamer::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut items: Vec<Parsed> = Vec::new();
        loop {
            tokio::select! {
                biased;
                n = reader.read(&mut buf) => {
                    let n = n?;
                    if n == 0 {
                        streamer.finish(&mut items);
                    } else {
                        streamer.feed(&buf[..n], &mut items);
                    }
                    let mut quit = false;
                    if !items.is_empty() {
                        let mut hub = self.hub();
                        for item in items.drain(..) {
                            let d = hub.core.handle(sid, item);
                            hub.deliver(sid, d);
                            if hub.core.quit_requested() {
                                quit = true;
                                break;
                            }
                        }
                    }
                    items.clear();
                    self.flush_queue(rx, &mut writer, &mut out).await?;
                    if quit {
                        self.shutdown();
                        return Ok(());
                    }
                    if n == 0 {
                        return Ok(());
                    }
                }
                line = rx.recv() => {
                    let Some(line) = line else { return Ok(()) };
                    out.clear();
                    out.push_str(&line);
                    out.push_str("\r\n");
                    self.flush_queue(rx, &mut writer, &mut out).await?;
                }
                _ = async { let _ = shutdown.wait_for(|v| *v).await; } => {
                    // Write what is queued (e.g. SHUTDOWN on a signal), then end.
                    out.clear();
                    self.flush_queue(rx, &mut writer, &mut out).await?;
                    return Ok(());
                }
            }
        }
    }

    /// Once the first greeting is out, parses the profile's schema on a
    /// thread of its own: the greeting does not wait for it, and the first
    /// command usually finds it ready.
    fn warm_profile(&self) {
        self.warmed.call_once(|| {
            let profile = Arc::clone(self.hub().core.profile());
            std::thread::spawn(move || {
                if let Err(e) = profile.warm() {
                    eprintln!("mock-qemu: {e}");
                }
            });
        });
    }

    /// Writes `out` plus everything queued, in one write.
    async fn flush_queue<W: AsyncWrite + Unpin>(
        &self,
        rx: &mut mpsc::UnboundedReceiver<String>,
        writer: &mut W,
        out: &mut String,
    ) -> io::Result<()> {
        while let Ok(line) = rx.try_recv() {
            out.push_str(&line);
            out.push_str("\r\n");
        }
        if !out.is_empty() {
            writer.write_all(out.as_bytes()).await?;
            writer.flush().await?;
            out.clear();
        }
        Ok(())
    }

    /// Serves a monitor's listener until shutdown. `max_clients` sessions at
    /// once (QEMU: 1).
    pub async fn serve_monitor(&self, listener: Listener, max_clients: usize) {
        let slots = Arc::new(Semaphore::new(max_clients.max(1)));
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = shutdown.wait_for(|v| *v) => return,
            };
            let accepted = tokio::select! {
                a = accept(&listener) => a,
                _ = shutdown.wait_for(|v| *v) => return,
            };
            match accepted {
                Ok(Conn::Unix(s)) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _ = me.serve_connection(s).await;
                        drop(permit);
                    });
                }
                Ok(Conn::Tcp(s)) => {
                    let _ = s.set_nodelay(true);
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _ = me.serve_connection(s).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    drop(permit);
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(l: &Listener) -> io::Result<Conn> {
    match l {
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
    }
}

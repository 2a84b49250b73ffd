//! Targets: what a scenario is played against.
//!
//! - [`InProcess`]: mock-qemu inside this process (no sockets, no sleeps).
//! - [`Process`]: a program the runner launches in a private work folder,
//!   either the mock-qemu binary or a real QEMU (qemu-storage-daemon or
//!   qemu-system-x86_64), reached over a unix socket.
//! - [`Socket`]: any QMP server that is already running.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mock_qemu::core::{Core, CoreConfig};
use mock_qemu::profile::{Flavor, Profile, Version};
use mock_qemu::server::MockQemu;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::scenario::Launch;

/// A bidirectional byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A boxed connection.
pub type BoxedStream = Box<dyn Stream>;

/// A boxed future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that accepts QMP connections.
pub trait Target: Send {
    /// Opens a new connection.
    fn connect(&mut self) -> BoxFuture<'_, Result<BoxedStream>>;
    /// Starts over with fresh state (relaunch, new mock).
    fn restart(&mut self) -> BoxFuture<'_, Result<()>>;
    /// The private work folder, if any (normalized to `<workdir>`).
    fn workdir(&self) -> Option<&Path>;
    /// A one-line description for reports.
    fn describe(&self) -> String;
    /// Launches with a scenario's options from now on: a target running
    /// with other options starts over with these (a fresh work folder, the
    /// setup commands, the command line).
    fn set_launch(&mut self, launch: Launch) -> BoxFuture<'_, Result<()>>;
}

/// Options every launched program gets before its monitor options, per
/// flavor: the same for real QEMU, the mock binary and the in-process mock,
/// so all three start in the same state (`-S`: prelaunch).
pub fn launch_args(flavor: Flavor) -> Vec<String> {
    match flavor {
        Flavor::Qsd => vec![],
        Flavor::System => [
            "-M",
            "none",
            "-accel",
            "tcg",
            "-S",
            "-nodefaults",
            "-display",
            "none",
        ]
        .map(String::from)
        .to_vec(),
    }
}

/// [`launch_args`] with a scenario's own options: its words after the
/// flavor's (`<workdir>` replaced by `dir`), a machine type of its own
/// replacing the default `-M none`.
pub fn launch_args_with(flavor: Flavor, launch: &Launch, dir: &Path) -> Vec<String> {
    let mut args = launch_args(flavor);
    let own_machine = launch
        .args
        .iter()
        .any(|a| matches!(a.as_str(), "-M" | "-machine" | "--machine"));
    if own_machine {
        if let Some(i) = args.iter().position(|a| a == "-M") {
            args.drain(i..i + 2);
        }
    }
    let dir = dir.display().to_string();
    args.extend(launch.args.iter().map(|a| a.replace("<workdir>", &dir)));
    args
}

/// Runs a scenario's setup commands in the work folder, before launching.
fn run_launch_setup(launch: &Launch, dir: &Path) -> Result<()> {
    for cmd in &launch.setup {
        let cmd = cmd.replace("<workdir>", &dir.display().to_string());
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(dir)
            .output()
            .with_context(|| format!("launch-setup: {cmd}"))?;
        if !out.status.success() {
            bail!(
                "launch-setup failed ({}): {cmd}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// A fresh private work folder (every case starts with an empty one).
fn work_folder() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("qmp-conform-")
        .tempdir()
        .context("creating a work folder")
}

/// A mock with the real host side (image files, sockets), as the binary
/// has, configured by the command line a launched program gets (`launch`'s
/// setup commands run first); relative file names resolve in `dir`, as a
/// launched target's do in its working directory.
fn real_mock(profile: &Arc<Profile>, launch: &Launch, dir: &Path) -> Result<MockQemu> {
    run_launch_setup(launch, dir)?;
    let flavor = profile.flavor();
    let argv0 = match flavor {
        Flavor::Qsd => "qemu-storage-daemon",
        Flavor::System => "qemu-system-x86_64",
    };
    let cmdline =
        mock_qemu::cmdline::parse(argv0, &launch_args_with(flavor, launch, dir), |_| None)?;
    // The monitor a launched target has (`-qmp unix:WORKDIR/qmp.sock`,
    // see `Process::start`), so `query-chardev` answers alike.
    let chardevs = vec![mock_qemu::model::vm::Chardev {
        label: match flavor {
            Flavor::System => "compat_monitor0".into(),
            Flavor::Qsd => "mon0".into(),
        },
        filename: format!("unix:{},server=on", dir.join("qmp.sock").display()),
    }];
    let config = CoreConfig {
        start_paused: cmdline.start_paused,
        chardevs,
        ..CoreConfig::default()
    };
    let mut core = Core::new(Arc::clone(profile), &config);
    core.set_host_io(Box::new(mock_qemu::host::RealHostIo::in_dir(dir)));
    core.run_cmdline(&cmdline)
        .map_err(|e| anyhow::anyhow!("{argv0}: {e}"))?;
    Ok(MockQemu::new(core))
}

/// mock-qemu in this process.
#[derive(Debug)]
pub struct InProcess {
    profile: Arc<Profile>,
    launch: Launch,
    mock: MockQemu,
    /// Work folder for setup steps and the images a scenario names.
    dir: tempfile::TempDir,
}

impl InProcess {
    /// A fresh mock with the given profile, configured by the options
    /// [`launch_args`] gives a launched program.
    pub fn new(version: Version, flavor: Flavor) -> Result<Self> {
        let profile = Profile::get(version, flavor)?;
        let launch = Launch::default();
        let dir = work_folder()?;
        let mock = real_mock(&profile, &launch, dir.path())?;
        Ok(InProcess {
            profile,
            launch,
            mock,
            dir,
        })
    }

    /// The mock, for tests that look inside.
    pub fn mock(&self) -> &MockQemu {
        &self.mock
    }
}

impl Target for InProcess {
    fn connect(&mut self) -> BoxFuture<'_, Result<BoxedStream>> {
        Box::pin(async move { Ok(Box::new(self.mock.connect()) as BoxedStream) })
    }
    fn restart(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.mock.shutdown();
            self.dir = work_folder()?;
            self.mock = real_mock(&self.profile, &self.launch, self.dir.path())?;
            Ok(())
        })
    }
    fn workdir(&self) -> Option<&Path> {
        Some(self.dir.path())
    }
    fn describe(&self) -> String {
        format!("mock-qemu (in process, {})", self.profile.label())
    }
    fn set_launch(&mut self, launch: Launch) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if launch == self.launch {
                return Ok(());
            }
            self.launch = launch;
            self.restart().await
        })
    }
}

/// How to launch a program that serves QMP on a unix socket.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The program.
    pub program: PathBuf,
    /// The program's own arguments, before the launch options
    /// ([`launch_args_with`]) and the monitor arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Which style of monitor arguments to add.
    pub flavor: Flavor,
    /// Wait this long after the socket file appears (qemu-storage-daemon's
    /// start-up race; 50 ms made it vanish in 14,000 launches).
    pub settle: Duration,
}

impl LaunchSpec {
    /// A real QEMU binary. Environment for a build unpacked from Debian
    /// packages (`…/usr/bin/NAME`): `LD_LIBRARY_PATH` and `QEMU_MODULE_DIR`
    /// point into the same tree.
    pub fn real_qemu(program: &Path, flavor: Flavor) -> LaunchSpec {
        // The program runs in its work folder: resolve a relative path first.
        let program = &absolute(program);
        let mut env = Vec::new();
        let mut args = Vec::new();
        if let Some(root) = program
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
        {
            let lib = root.join("usr/lib/x86_64-linux-gnu");
            if root != Path::new("/") && lib.is_dir() {
                env.push(("LD_LIBRARY_PATH".into(), lib.display().to_string()));
                env.push((
                    "QEMU_MODULE_DIR".into(),
                    lib.join("qemu").display().to_string(),
                ));
                // Firmware for machines other than `none` (`-M pc`: SeaBIOS
                // from Debian's seabios package, option ROMs from the tree).
                if flavor == Flavor::System {
                    for dir in [root.join("usr/share/qemu"), "/usr/share/seabios".into()] {
                        if dir.is_dir() {
                            args.push("-L".into());
                            args.push(dir.display().to_string());
                        }
                    }
                }
            }
        }
        LaunchSpec {
            program: program.to_owned(),
            args,
            env,
            flavor,
            settle: Duration::from_millis(50),
        }
    }

    /// The mock-qemu binary with a profile.
    pub fn mock_binary(program: &Path, version: Version, flavor: Flavor) -> LaunchSpec {
        let program = &absolute(program);
        LaunchSpec {
            program: program.to_owned(),
            args: vec![
                "--profile".into(),
                version.name().into(),
                "--flavor".into(),
                flavor.name().into(),
            ],
            env: vec![],
            flavor,
            settle: Duration::ZERO,
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())
}

/// A launched program in a private work folder.
#[derive(Debug)]
pub struct Process {
    spec: LaunchSpec,
    launch: Launch,
    dir: tempfile::TempDir,
    sock: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Process {
    /// Launches the program.
    pub async fn launch(spec: LaunchSpec) -> Result<Process> {
        let dir = work_folder()?;
        let sock = dir.path().join("qmp.sock");
        let mut p = Process {
            spec,
            launch: Launch::default(),
            dir,
            sock,
            child: None,
        };
        p.start().await?;
        Ok(p)
    }

    async fn start(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.sock);
        let s = self.sock.display().to_string();
        run_launch_setup(&self.launch, self.dir.path())?;
        let mut args = self.spec.args.clone();
        args.extend(launch_args_with(
            self.spec.flavor,
            &self.launch,
            self.dir.path(),
        ));
        match self.spec.flavor {
            Flavor::Qsd => {
                args.push("--chardev".into());
                args.push(format!("socket,path={s},server=on,wait=off,id=mon0"));
                args.push("--monitor".into());
                args.push("chardev=mon0".into());
            }
            Flavor::System => {
                args.push("-qmp".into());
                args.push(format!("unix:{s},server=on,wait=off"));
            }
        }
        let mut cmd = tokio::process::Command::new(&self.spec.program);
        cmd.args(&args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                self.dir.path().join("stderr.log"),
            )?))
            .kill_on_drop(true);
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("launching {}", self.spec.program.display()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.sock.exists() {
            if let Some(status) = child.try_wait()? {
                let err =
                    std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
                bail!(
                    "{} exited with {status} before listening: {err}",
                    self.spec.program.display()
                );
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} did not create its monitor socket within 10 s",
                    self.spec.program.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !self.spec.settle.is_zero() {
            tokio::time::sleep(self.spec.settle).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// The monitor's unix socket, for clients that connect by path.
    pub fn socket_path(&self) -> &Path {
        &self.sock
    }

    /// Stops the program (SIGKILL) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

impl Target for Process {
    fn connect(&mut self) -> BoxFuture<'_, Result<BoxedStream>> {
        Box::pin(async move {
            // A socket file can exist a moment before its listen() (QEMU's
            // bind-then-listen): retry a refused connection briefly.
            let mut tries = 0;
            loop {
                match tokio::net::UnixStream::connect(&self.sock).await {
                    Ok(s) => return Ok(Box::new(s) as BoxedStream),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tries < 50 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err(e) => {
                        // A program that exited (a refused command line)
                        // says why on stderr.
                        if let Some(status) = self
                            .child
                            .as_mut()
                            .and_then(|c| c.try_wait().ok().flatten())
                        {
                            let err = std::fs::read_to_string(self.dir.path().join("stderr.log"))
                                .unwrap_or_default();
                            bail!(
                                "{} exited with {status}: {}",
                                self.spec.program.display(),
                                err.trim()
                            );
                        }
                        return Err(e)
                            .with_context(|| format!("connecting to {}", self.sock.display()));
                    }
                }
            }
        })
    }
    fn restart(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.stop().await;
            // A fresh folder: no image or socket of the previous case remains.
            self.dir = work_folder()?;
            self.sock = self.dir.path().join("qmp.sock");
            self.start().await
        })
    }
    fn workdir(&self) -> Option<&Path> {
        Some(self.dir.path())
    }
    fn describe(&self) -> String {
        format!("{} ({})", self.spec.program.display(), self.spec.flavor)
    }
    fn set_launch(&mut self, launch: Launch) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if launch == self.launch {
                return Ok(());
            }
            self.launch = launch;
            self.restart().await
        })
    }
}

/// An already running QMP server.
#[derive(Debug, Clone)]
pub enum Socket {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(String),
}

impl Target for Socket {
    fn connect(&mut self) -> BoxFuture<'_, Result<BoxedStream>> {
        Box::pin(async move {
            Ok(match self {
                Socket::Unix(p) => Box::new(
                    tokio::net::UnixStream::connect(&*p)
                        .await
                        .with_context(|| format!("connecting to {}", p.display()))?,
                ) as BoxedStream,
                Socket::Tcp(a) => Box::new(
                    tokio::net::TcpStream::connect(a.as_str())
                        .await
                        .with_context(|| format!("connecting to {a}"))?,
                ) as BoxedStream,
            })
        })
    }
    fn restart(&mut self) -> BoxFuture<'_, Result<()>> {
        // An external server cannot be restarted: cases share its state.
        Box::pin(async { Ok(()) })
    }
    fn workdir(&self) -> Option<&Path> {
        None
    }
    fn describe(&self) -> String {
        match self {
            Socket::Unix(p) => format!("unix:{}", p.display()),
            Socket::Tcp(a) => format!("tcp:{a}"),
        }
    }
    fn set_launch(&mut self, launch: Launch) -> BoxFuture<'_, Result<()>> {
        // A running server was launched by someone else.
        Box::pin(async move {
            if launch != Launch::default() {
                bail!("the scenario needs its own launch options (# args / # launch-setup); a running server cannot take them");
            }
            Ok(())
        })
    }
}

/// The mock-qemu binary a test should launch: `$MOCK_QEMU_BIN`, else the
/// one cargo built next to the running test executable (`cargo test
/// --workspace` builds it); an error says how to build it.
pub fn built_mock_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MOCK_QEMU_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("mock-qemu"))
        .ok_or("no target dir")?;
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} is not built: run `cargo build -p mock-qemu` (or `cargo test --workspace`)",
            p.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_machine_replaces_the_default_and_workdir_is_filled_in() {
        let dir = Path::new("/w");
        let plain = launch_args_with(Flavor::System, &Launch::default(), dir);
        assert_eq!(plain, launch_args(Flavor::System));
        let launch = Launch {
            args: ["-M", "pc", "-blockdev", "<workdir>/a.qcow2"]
                .map(String::from)
                .to_vec(),
            setup: vec![],
        };
        let args = launch_args_with(Flavor::System, &launch, dir);
        assert!(!args.windows(2).any(|w| w[0] == "-M" && w[1] == "none"));
        assert_eq!(args.iter().filter(|a| *a == "-M").count(), 1);
        assert_eq!(args.last().map(String::as_str), Some("/w/a.qcow2"));
        assert!(args.contains(&"-S".to_owned()));
        let qsd = launch_args_with(Flavor::Qsd, &Launch::default(), dir);
        assert!(qsd.is_empty());
    }
}

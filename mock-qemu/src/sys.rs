//! The few POSIX calls the launcher needs that std does not offer:
//! `fork` for `-daemonize`, and adopting an inherited listening socket.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, RawFd};

/// An inherited listening socket, by address family.
#[derive(Debug)]
pub enum Inherited {
    /// AF_UNIX.
    Unix(std::os::unix::net::UnixListener),
    /// AF_INET / AF_INET6.
    Tcp(std::net::TcpListener),
}

/// Takes ownership of listening socket `fd` handed over by the parent
/// (libvirt's `-chardev socket,fd=N,server=on`).
pub fn adopt_listener(fd: RawFd) -> io::Result<Inherited> {
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage/len describe a valid, writable buffer.
    let rc = unsafe { libc::getsockname(fd, std::ptr::addr_of_mut!(storage).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd is a socket (getsockname succeeded) that the parent gave
    // to us; nothing else in this process owns it.
    match i32::from(storage.ss_family) {
        libc::AF_UNIX => Ok(Inherited::Unix(unsafe {
            std::os::unix::net::UnixListener::from_raw_fd(fd)
        })),
        libc::AF_INET | libc::AF_INET6 => Ok(Inherited::Tcp(unsafe {
            std::net::TcpListener::from_raw_fd(fd)
        })),
        f => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd}: unsupported socket family {f}"),
        )),
    }
}

/// `-daemonize`: forks; the parent waits until the child reports readiness
/// (via [`Daemon::ready`]) and exits 0, or exits 1 if the child dies first.
/// Must be called before any thread is started.
pub fn daemonize() -> io::Result<Daemon> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: single-threaded at this point (no runtime started yet).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        // Parent: wait for one byte from the child.
        // SAFETY: closing our copy of the write end; reading into a valid buffer.
        unsafe { libc::close(fds[1]) };
        let mut b = [0u8; 1];
        let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
        std::process::exit(if n == 1 && b[0] == 0 { 0 } else { 1 });
    }
    // Child.
    // SAFETY: plain syscalls on fds we own.
    unsafe {
        libc::close(fds[0]);
        libc::setsid();
    }
    Ok(Daemon { fd: fds[1] })
}

/// The child side of `-daemonize`.
#[derive(Debug)]
pub struct Daemon {
    fd: RawFd,
}

impl Daemon {
    /// Tells the parent that start-up worked; it exits 0. Stdio goes to /dev/null.
    pub fn ready(self) {
        // SAFETY: writes one byte to our pipe end, then re-points stdio.
        unsafe {
            let b = [0u8; 1];
            libc::write(self.fd, b.as_ptr().cast(), 1);
            libc::close(self.fd);
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                libc::dup2(null, 0);
                libc::dup2(null, 1);
                libc::dup2(null, 2);
                if null > 2 {
                    libc::close(null);
                }
            }
        }
    }
}

/// Whether QEMU would run with KVM given these accelerators in order: the
/// first that works is used (`kvm` works when `/dev/kvm` opens for reading
/// and writing, `tcg` always); none given means `tcg`.
pub fn kvm_accelerated(accels: &[String]) -> bool {
    for a in accels {
        match a.as_str() {
            "kvm" => {
                let ok = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/kvm")
                    .is_ok();
                if ok {
                    return true;
                }
            }
            "tcg" => return false,
            _ => {}
        }
    }
    false
}

/// Deallocates `len` bytes at `offset` of `f`, keeping its size
/// (`fallocate(FALLOC_FL_PUNCH_HOLE)`, what QEMU's discard of a freed
/// cluster does to a file). A file system without holes is left as it is.
pub fn punch_hole(f: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: fallocate on an open fd we borrow; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

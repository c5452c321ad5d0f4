//! Ports that are never released before use: a listener bound on port 0 and handed to a
//! child process as an inherited file descriptor, and a port nobody can listen on.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::OnceLock;

/// A listening socket on 127.0.0.1 at a port the OS chose, kept open by the test for as
/// long as the guard lives and handed to a child with [`ChildListener::hand_to`]: the port
/// is never free between the choice and the child's use, so no other socket can take it.
pub struct ChildListener {
    listener: TcpListener,
    pub port: u16,
}

impl ChildListener {
    pub fn bind() -> ChildListener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("listener address").port();
        ChildListener { listener, port }
    }

    /// The descriptor's number, the same in the child (it is inherited, not duplicated).
    pub fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Lets `cmd`'s child inherit the listener: Rust opens every descriptor close-on-exec,
    /// so the flag is cleared in the child between fork and exec (never in this process,
    /// where other tests spawn children at the same time).
    pub fn hand_to(&self, cmd: &mut Command) {
        let fd = self.fd();
        // SAFETY: the closure only calls fcntl(2), which is async-signal-safe, on a
        // descriptor the child holds (a copy of ours), and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// A loopback address where a connection is refused at once, for the whole run of the
/// test binary: a TCP socket bound to 127.0.0.1 on a port the OS chose and never put in
/// the listening state (a SYN to it is answered with a reset). The socket stays bound, so
/// no other socket can listen on that port meanwhile.
pub fn refused_addr() -> SocketAddr {
    static DEAD: OnceLock<(tokio::net::TcpSocket, SocketAddr)> = OnceLock::new();
    DEAD.get_or_init(|| {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind 127.0.0.1:0");
        let addr = s.local_addr().expect("bound address");
        (s, addr)
    })
    .1
}

/// `http://ADDR` of [`refused_addr`].
pub fn refused_url() -> String {
    format!("http://{}", refused_addr())
}

//! Ports that are never released before use: a listener bound on port 0 and handed to a
//! child process as an inherited file descriptor, and a port nobody can listen on.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A listening socket on 127.0.0.1 at a port the OS chose, kept open by the test for as
/// long as the guard lives and handed to a child with [`ChildListener::hand_to`]: the port
/// is never free between the choice and the child's use, so no other socket can take it.
pub struct ChildListener {
    listener: TcpListener,
    pub port: u16,
}

impl ChildListener {
    /// The descriptor number the child finds the listener at: its standard input.
    pub const FD: i32 = 0;

    pub fn bind() -> ChildListener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("listener address").port();
        ChildListener { listener, port }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Makes the listener `cmd`'s standard input, descriptor [`ChildListener::FD`] in the
    /// child. Rust opens every descriptor close-on-exec and the workspace forbids the
    /// `unsafe` a `pre_exec` clearing the flag would need; the one descriptor a child
    /// inherits without either is one of its standard streams, and HAProxy and nginx read
    /// nothing from standard input.
    pub fn hand_to(&self, cmd: &mut Command) {
        let copy = self.listener.try_clone().expect("duplicate the listener");
        cmd.stdin(Stdio::from(OwnedFd::from(copy)));
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

#[test]
fn refused_addr_refuses_connections_and_no_socket_can_listen_there() {
    let addr = refused_addr();
    let refused = std::net::TcpStream::connect(addr).expect_err("nobody listens there");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(TcpListener::bind(addr).is_err(), "{addr} is taken");
    assert_eq!(refused_addr(), addr, "one address for the whole run");
}

#[test]
fn a_child_listener_stays_taken_and_reaches_the_child_as_its_standard_input() {
    let l = ChildListener::bind();
    assert!(
        TcpListener::bind(l.addr()).is_err(),
        "{} is taken",
        l.addr()
    );
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "test -S /dev/stdin"]);
    l.hand_to(&mut cmd);
    assert!(
        cmd.status().expect("sh runs").success(),
        "stdin is a socket"
    );
    // After the child is gone the test's copy still holds the port.
    assert!(
        TcpListener::bind(l.addr()).is_err(),
        "{} is still taken",
        l.addr()
    );
}

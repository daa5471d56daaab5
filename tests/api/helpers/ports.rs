//! Loopback ports for servers a test starts on a port it must know in advance (Redis servers,
//! Sentinels, cluster nodes and their buses, a gateway under libfaketime): picked free, and held
//! for this test binary until the holder drops them, so that no other test is handed the same
//! port while its server is starting, or while it is down between a kill and a restart.

use std::collections::BTreeSet;
use std::net::TcpListener;

use parking_lot::Mutex;

/// Ports held by a [`HeldPort`] now.
static HELD: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Cluster nodes talk to each other on their port + 10000.
const BUS_OFFSET: u16 = 10_000;

/// A port [`free_port`] handed out (with its cluster bus port, when asked for), given back on
/// drop.
#[derive(Debug)]
pub struct HeldPort {
    pub port: u16,
    with_bus: bool,
}

impl HeldPort {
    /// Another free port of the same kind, for a server that could not bind this one.
    pub fn another(&self) -> HeldPort {
        free_port(self.with_bus)
    }

    fn all(&self) -> impl Iterator<Item = u16> {
        [
            Some(self.port),
            self.with_bus.then(|| self.port + BUS_OFFSET),
        ]
        .into_iter()
        .flatten()
    }
}

impl Drop for HeldPort {
    fn drop(&mut self) {
        let mut held = HELD.lock();
        for p in self.all() {
            held.remove(&p);
        }
    }
}

/// A loopback port free right now and held by no other test (`with_bus`: its cluster bus port
/// too). Another process, or a socket bound to port 0, may still take it before its server
/// binds it: a server's start checks that the server answering is its own.
pub fn free_port(with_bus: bool) -> HeldPort {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().unwrap().port();
        let mut held = HELD.lock();
        let bus_free = || {
            port < u16::MAX - BUS_OFFSET
                && !held.contains(&(port + BUS_OFFSET))
                && TcpListener::bind(("127.0.0.1", port + BUS_OFFSET)).is_ok()
        };
        if held.contains(&port) || with_bus && !bus_free() {
            continue;
        }
        let port = HeldPort { port, with_bus };
        held.extend(port.all());
        return port;
    }
}

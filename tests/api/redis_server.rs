//! Real `redis-server` processes for the cluster-mode tests (standalone, Cluster nodes, and
//! Sentinels), on ephemeral loopback ports, so tests can run in parallel and kill and restart
//! their Redis. `scripts/setup.sh` installs Redis.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::{free_port, HeldPort};

/// A fresh self-signed certificate and its key, in PEM.
struct Certified {
    cert: String,
    key: String,
}

impl Certified {
    /// For 127.0.0.1.
    fn new() -> Certified {
        Self::for_name(LOOPBACK)
    }

    /// For `name` alone (an address or a host name).
    fn for_name(name: &str) -> Certified {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        Certified {
            cert: c.cert.pem(),
            key: c.key_pair.serialize_pem(),
        }
    }
}

/// One `redis-server`, killed on drop.
pub struct RedisServer {
    pub port: u16,
    held: HeldPort,
    /// Its TLS clients' port and certificate, when it takes them.
    tls: Option<Tls>,
    dir: PathBuf,
    cluster: bool,
    /// `requirepass`, when the server demands AUTH.
    password: Option<String>,
    /// Further `redis-server` arguments (memory limits, replication).
    extra: Vec<String>,
    /// Stopped by [`Self::freeze`]: `redis-cli` would wait on it forever.
    frozen: bool,
    /// Whether it has run: a restart comes up on the same ports, a first start may move.
    started: bool,
    child: Option<Child>,
}

struct Tls {
    port: HeldPort,
    cert: PathBuf,
    key: PathBuf,
}

/// A directory of its own for each server this test binary starts.
fn server_dir(kind: &str) -> PathBuf {
    static SERVERS: AtomicUsize = AtomicUsize::new(0);
    let n = SERVERS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("embedgate-{kind}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How a server's start went.
enum Start {
    /// It answers, and it is the process just started.
    Up,
    /// It exited: its port was taken.
    Exited,
}

/// Waits until the server on `port` is the process `child` (`INFO server`'s `process_id`), or
/// `child` exits (a Redis that cannot bind its port exits at once): a port another process took
/// may answer in its place, even as a Redis, and a test must not go on against that one.
fn wait_for_own(child: &mut Child, port: u16, password: Option<&str>, what: &str) -> Start {
    let own = format!("process_id:{}", child.id());
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().expect("wait on redis-server").is_some() {
            return Start::Exited;
        }
        let up = TcpStream::connect(("127.0.0.1", port)).is_ok()
            && cli(port, password, &["INFO", "server"])
                .is_some_and(|info| info.lines().any(|l| l.trim() == own));
        if up {
            return Start::Up;
        }
        assert!(
            Instant::now() < until,
            "{what} on port {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many times a first start may find its port taken and move to another.
const STARTS: usize = 5;

/// Where every server listens.
const LOOPBACK: &str = "127.0.0.1";

impl RedisServer {
    /// A standalone server without persistence.
    pub fn start() -> RedisServer {
        Self::spawn(free_port(false), false, None)
    }

    /// A standalone server that refuses clients without AUTH `password`.
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::spawn(free_port(false), false, Some(password.to_string()))
    }

    /// A standalone server started with further `redis-server` arguments, e.g.
    /// `["--maxmemory", "2mb"]` or `["--replicaof", "127.0.0.1", "6379"]`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut s = Self::spawn_stopped(free_port(false), false, None);
        s.extra = extra.iter().map(|a| a.to_string()).collect();
        s.restart();
        s
    }

    /// A standalone server that also takes TLS clients on a second port, with a fresh
    /// self-signed certificate for 127.0.0.1; returns the server, its TLS port and the path of
    /// the certificate (PEM) a client must trust. The plain port stays for [`Self::cli`].
    pub fn start_tls() -> (RedisServer, u16, PathBuf) {
        Self::start_tls_for(LOOPBACK)
    }

    /// As [`Self::start_tls`], its certificate for `name` alone (`localhost`: a client that
    /// checks it against the address it connected to, not the name it was given, fails).
    pub fn start_tls_for(name: &str) -> (RedisServer, u16, PathBuf) {
        let mut s = Self::spawn_stopped(free_port(false), false, None);
        let cert = s.take_tls(free_port(false), &Certified::for_name(name));
        s.restart();
        let tls_port = s.tls_port().unwrap();
        (s, tls_port, cert)
    }

    /// Has the server take TLS clients on `port` with `certified`'s certificate (written to its
    /// directory) when it next starts; returns the certificate's path.
    fn take_tls(&mut self, port: HeldPort, certified: &Certified) -> PathBuf {
        let cert = self.dir.join("redis.crt");
        let key = self.dir.join("redis.key");
        std::fs::write(&cert, &certified.cert).unwrap();
        std::fs::write(&key, &certified.key).unwrap();
        self.tls = Some(Tls {
            port,
            cert: cert.clone(),
            key,
        });
        cert
    }

    /// The port of its TLS clients, when it takes them.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls.as_ref().map(|t| t.port.port)
    }

    fn spawn(port: HeldPort, cluster: bool, password: Option<String>) -> RedisServer {
        let mut s = Self::spawn_stopped(port, cluster, password);
        s.restart();
        s
    }

    fn spawn_stopped(port: HeldPort, cluster: bool, password: Option<String>) -> RedisServer {
        RedisServer {
            port: port.port,
            held: port,
            dir: server_dir("redis"),
            cluster,
            password,
            extra: vec![],
            frozen: false,
            started: false,
            tls: None,
            child: None,
        }
    }

    /// The URL a client uses, with the password when there is one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Deletes the snapshot a `SAVE` left, so the next restart comes up empty.
    pub fn forget_snapshot(&self) {
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server without a word (SIGSTOP): its clients' connections stay open and
    /// nothing answers on them, as when its host crashes or is partitioned away. A drop still
    /// kills it.
    pub fn freeze(&mut self) {
        self.signal("STOP");
        self.frozen = true;
    }

    /// Lets a server [`Self::freeze`] stopped go on (SIGCONT).
    pub fn thaw(&mut self) {
        self.signal("CONT");
        self.frozen = false;
    }

    fn signal(&self, name: &str) {
        if let Some(c) = &self.child {
            signal(c, name);
        }
    }

    /// Starts the server again on the same port and waits until it answers. It saves nothing on
    /// its own, but loads the snapshot a `SAVE` left in its directory, as a restart does. A
    /// first start whose port was taken meanwhile moves to another; a restart waits for its own
    /// (its clients know no other) and fails the test if it stays taken.
    pub fn restart(&mut self) {
        self.kill();
        self.frozen = false;
        let until = Instant::now() + Duration::from_secs(10);
        for tries in 1.. {
            if let Start::Up = self.launch() {
                self.started = true;
                return;
            }
            if self.started {
                assert!(
                    Instant::now() < until,
                    "redis-server could not bind port {} again: another process took it while \
                     the server was down",
                    self.port
                );
                std::thread::sleep(Duration::from_millis(100));
            } else {
                assert!(tries < STARTS, "redis-server exited at start {tries} times");
                self.held = self.held.another();
                self.port = self.held.port;
                if let Some(tls) = &mut self.tls {
                    tls.port = tls.port.another();
                }
            }
        }
    }

    /// Starts the process once and waits until it answers, or exits.
    fn launch(&mut self) -> Start {
        let port = self.port.to_string();
        let tls_port = self.tls_port().map(|p| p.to_string());
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ];
        if self.cluster {
            args.extend([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
        }
        if let Some(p) = &self.password {
            args.extend(["--requirepass", p.as_str()]);
        }
        if let (Some(tls), Some(tls_port)) = (&self.tls, &tls_port) {
            let (cert, key) = (tls.cert.to_str().unwrap(), tls.key.to_str().unwrap());
            args.extend([
                "--tls-port",
                tls_port,
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                cert,
                "--tls-auth-clients",
                "no",
            ]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        let child = Command::new("redis-server")
            .args(&args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (run scripts/setup.sh)");
        // Held here until it is known up, so that a failing test still kills it.
        let child = self.child.insert(child);
        let started = wait_for_own(child, self.port, self.password.as_deref(), "redis-server");
        if let Start::Exited = started {
            self.child = None;
        }
        started
    }

    /// URLs in the shared pool for `tenant`, read straight from Redis.
    pub fn shared_stock(&self, tenant: &str) -> usize {
        self.shared_stock_matching(tenant, "*")
    }

    /// Whether the shared pool holds `at_least` URLs for `tenant` (for its pool key `key` alone,
    /// in any epoch, when given) within 20 s: a busy machine can delay a fetch and its put.
    pub async fn shared_stock_reaches(
        &self,
        tenant: &str,
        key: Option<&embedgate::pool::PoolKey>,
        at_least: usize,
    ) -> bool {
        let pattern = key.map_or("*".to_string(), |k| format!("*:{k}"));
        crate::helpers::eventually(Duration::from_secs(20), || {
            std::future::ready(self.shared_stock_matching(tenant, &pattern) >= at_least)
        })
        .await
    }

    /// URLs in `tenant`'s shared pool keys whose part after `p3:` matches `pattern`, counted in
    /// one script: a snapshot of one instant, read in one `redis-cli` run. (One run per key took
    /// half a second for 64 keys on a busy machine, long enough for a put to land in the middle
    /// of the count and be taken for stock already there.)
    fn shared_stock_matching(&self, tenant: &str, pattern: &str) -> usize {
        const COUNT: &str = "local n = 0 \
            for _, k in ipairs(redis.call('KEYS', ARGV[1])) do n = n + redis.call('ZCARD', k) end \
            return n";
        let keys = format!("embedgate:{{t:{tenant}}}:p3:{pattern}");
        self.cli(&["EVAL", COUNT, "0", &keys])
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    }
    /// A copy of every key matching `pattern` (`DUMP`), as a backup tool makes one.
    pub async fn backup(&self, pattern: &str) -> Vec<(String, Vec<u8>)> {
        let conn = redis::Client::open(self.url()).unwrap();
        let mut conn = conn.get_multiplexed_async_connection().await.unwrap();
        let names = self.cli(&["--scan", "--pattern", pattern]);
        let mut copy = Vec::new();
        for name in names.unwrap_or_default().lines() {
            let dump = redis::cmd("DUMP").arg(name).query_async(&mut conn).await;
            copy.push((name.to_string(), dump.unwrap()));
        }
        copy
    }

    /// Writes a [`RedisServer::backup`] back into the running server key by key
    /// (`RESTORE … REPLACE`, as a migration tool replaying a dump does).
    pub async fn restore(&self, copy: Vec<(String, Vec<u8>)>) {
        let conn = redis::Client::open(self.url()).unwrap();
        let mut conn = conn.get_multiplexed_async_connection().await.unwrap();
        for (name, dump) in copy {
            let mut restore = redis::cmd("RESTORE");
            restore.arg(name).arg(0).arg(dump).arg("REPLACE");
            let () = restore.query_async(&mut conn).await.unwrap();
        }
    }

    /// Runs `redis-cli` against this server; its trimmed output, `None` if it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        if self.frozen || TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            return None;
        }
        cli(self.port, self.password.as_deref(), args)
    }

    /// One field of a section of `INFO` (`("replication", "role")`), if the server answers.
    pub fn info(&self, section: &str, field: &str) -> Option<String> {
        self.cli(&["INFO", section])?.lines().find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
    }

    /// Waits, up to 20 s, until this replica has its copy of `primary`'s data set and holds
    /// everything `primary` had written when the wait began. (Not "as much as `primary` holds
    /// now": a fleet writes on, and on a busy machine its next write often lands between the
    /// two servers' answers, so the offsets were seldom seen equal and the wait timed out.)
    pub async fn caught_up_with(&self, primary: &RedisServer) {
        let offset = |server: &RedisServer, field: &str| {
            server
                .info("replication", field)
                .and_then(|o| o.parse::<u64>().ok())
        };
        // Read once, at the primary's first answer.
        let mut written = None;
        let mut done = || {
            written = written.or_else(|| offset(primary, "master_repl_offset"));
            written.is_some_and(|written| {
                self.info("replication", "master_link_status").as_deref() == Some("up")
                    && offset(self, "slave_repl_offset").is_some_and(|held| held >= written)
            })
        };
        let held =
            crate::helpers::eventually(Duration::from_secs(20), || std::future::ready(done()))
                .await;
        assert!(held, "timed out waiting: the replica caught up");
    }
}

/// Sends SIG`name` to `child`.
fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "SIG{name} reached redis-server");
}

/// Runs `redis-cli` against the server on `port`, logging in with `password`; its trimmed
/// output, `None` if it failed.
fn cli(port: u16, password: Option<&str>, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-p", &port.to_string()]);
    if let Some(p) = password {
        cmd.args(["--no-auth-warning", "-a", p]);
    }
    let out = cmd.args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One Redis Sentinel that monitors a primary as `mymaster`, alone (quorum 1), judging it down
/// after half a second without an answer; killed on drop.
pub struct RedisSentinel {
    pub port: u16,
    _held: HeldPort,
    /// `requirepass`, when it demands AUTH.
    password: Option<String>,
    dir: PathBuf,
    child: Child,
}

impl RedisSentinel {
    pub fn start(primary: u16) -> RedisSentinel {
        Self::spawn((LOOPBACK, primary), None, "")
    }

    /// One whose clients may not subscribe to its announcements (an ACL without `SUBSCRIBE`).
    pub fn start_unheard(primary: u16) -> RedisSentinel {
        let deaf = "user default on nopass ~* &* +@all -subscribe -psubscribe\n";
        Self::spawn((LOOPBACK, primary), None, deaf)
    }

    /// Stops the Sentinel without a word (SIGSTOP): it takes connections and answers nothing.
    /// A drop still kills it.
    pub fn freeze(&self) {
        signal(&self.child, "STOP");
    }

    /// Lets a Sentinel [`Self::freeze`] stopped go on (SIGCONT).
    pub fn thaw(&self) {
        signal(&self.child, "CONT");
    }

    /// One that monitors `server`'s TLS port over TLS (it trusts `server`'s certificate and shows
    /// it as its own), and so names that port, at `host`; its own clients connect in plain TCP.
    /// A host name (`localhost`) is announced as such (`announce-hostnames`), as Sentinels in
    /// front of TLS primaries are set up so that clients can check the certificate's name.
    pub fn start_tls(server: &RedisServer, host: &str) -> RedisSentinel {
        let (cert, key) = (server.dir.join("redis.crt"), server.dir.join("redis.key"));
        let tls = format!(
            "tls-replication yes\ntls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {cert}\n",
            cert = cert.display(),
            key = key.display()
        );
        let port = server.tls_port().expect("the server takes TLS clients");
        Self::spawn((host, port), None, &tls)
    }

    /// One that logs in to the primary with `primary_password` and takes AUTH `own_password`.
    pub fn start_with_passwords(
        primary: u16,
        primary_password: &str,
        own_password: &str,
    ) -> RedisSentinel {
        Self::spawn(
            (LOOPBACK, primary),
            Some((primary_password.to_string(), own_password.to_string())),
            "",
        )
    }

    /// `primary`: its host and port. `more`: further lines of its configuration.
    fn spawn(
        (host, primary): (&str, u16),
        passwords: Option<(String, String)>,
        more: &str,
    ) -> RedisSentinel {
        let names = if host.parse::<std::net::IpAddr>().is_ok() {
            ""
        } else {
            // Read before the monitor line, which names the primary by it.
            "sentinel resolve-hostnames yes\nsentinel announce-hostnames yes\n"
        };
        let own_password = passwords.as_ref().map(|p| p.1.clone());
        for _ in 0..STARTS {
            let held = free_port(false);
            let port = held.port;
            let dir = server_dir("sentinel");
            // Sentinel rewrites its configuration file as it learns, so it gets one of its own.
            let conf = dir.join("sentinel.conf");
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\n{names}\
                 sentinel monitor mymaster {host} {primary} 1\n\
                 sentinel down-after-milliseconds mymaster 500\n\
                 sentinel failover-timeout mymaster 2000\n",
                dir = dir.display()
            );
            if let Some((to_primary, own)) = &passwords {
                text.push_str(&format!(
                    "sentinel auth-pass mymaster {to_primary}\nrequirepass {own}\n"
                ));
            }
            text.push_str(more);
            std::fs::write(&conf, text).unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (run scripts/setup.sh)");
            let mut sentinel = RedisSentinel {
                port,
                _held: held,
                password: own_password.clone(),
                dir,
                child,
            };
            let password = sentinel.password.as_deref();
            if let Start::Exited = wait_for_own(&mut sentinel.child, port, password, "the Sentinel")
            {
                continue;
            }
            let until = Instant::now() + Duration::from_secs(10);
            while sentinel.primary_port() != Some(primary) {
                assert!(
                    Instant::now() < until,
                    "the Sentinel on port {port} did not name its primary"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            return sentinel;
        }
        panic!("the Sentinel exited at start {STARTS} times")
    }

    /// The URL a client uses, with the password when it takes AUTH.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The port of the server the Sentinel names as `mymaster`'s primary now.
    pub fn primary_port(&self) -> Option<u16> {
        self.primary_addr()?.1.parse().ok()
    }

    /// The host and port the Sentinel names as `mymaster`'s primary now, as it gives them.
    pub fn primary_addr(&self) -> Option<(String, String)> {
        let addr = self.cli(&["SENTINEL", "get-master-addr-by-name", "mymaster"])?;
        let mut lines = addr.lines().map(|l| l.trim().to_string());
        Some((lines.next()?, lines.next()?))
    }

    /// Has the Sentinel fail the primary over to its replica now (`SENTINEL FAILOVER`, as an
    /// operator does for maintenance): the old primary stays up as a replica of the new one.
    /// Whether the Sentinel started it (it refuses without a replica fit to promote).
    pub fn fail_over(&self) -> bool {
        self.cli(&["SENTINEL", "FAILOVER", "mymaster"]).as_deref() == Some("OK")
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        cli(self.port, self.password.as_deref(), args)
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of `masters` primaries and no replicas, all on loopback.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        Self::create(masters, 0, &[], None)
    }

    /// A cluster of `masters` primaries whose clients and nodes talk TLS (`tls-cluster yes`:
    /// a client that asks over TLS is given the nodes' TLS ports), with one fresh self-signed
    /// certificate for 127.0.0.1; returns the cluster and the path of the certificate a client
    /// must trust. [`RedisCluster::urls`] are `rediss://` seeds.
    pub fn start_tls(masters: usize) -> (RedisCluster, PathBuf) {
        let certified = Certified::new();
        let cluster = Self::create(masters, 0, &["--tls-cluster", "yes"], Some(&certified));
        let cert = cluster.nodes[0].dir.join("redis.crt");
        (cluster, cert)
    }

    /// A cluster of `masters` primaries, each with one replica that takes over within about a
    /// second of its primary failing (`cluster-node-timeout` 1000 ms).
    pub fn start_replicated(masters: usize) -> RedisCluster {
        let cluster = Self::create(masters, 1, &["--cluster-node-timeout", "1000"], None);
        let until = Instant::now() + Duration::from_secs(20);
        while !cluster.nodes.iter().all(|n| {
            n.cli(&["INFO", "replication"])
                .is_some_and(|i| i.contains("role:master") || i.contains("master_link_status:up"))
        }) {
            assert!(Instant::now() < until, "the replicas did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// With `tls`, the nodes' cluster bus runs on their TLS ports (+10000).
    fn create(
        masters: usize,
        replicas: usize,
        extra: &[&str],
        tls: Option<&Certified>,
    ) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                let mut n = RedisServer::spawn_stopped(free_port(tls.is_none()), true, None);
                n.extra = extra.iter().map(|a| a.to_string()).collect();
                if let Some(certified) = tls {
                    n.take_tls(free_port(true), certified);
                }
                n.restart();
                n
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.tls_port().unwrap_or(n.port)))
            .collect();
        let mut create = Command::new("redis-cli");
        if tls.is_some() {
            let cert = nodes[0].dir.join("redis.crt");
            create.args(["--tls", "--cacert", cert.to_str().unwrap()]);
        }
        let out = create
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let until = Instant::now() + Duration::from_secs(20);
        while !nodes.iter().all(|n| {
            n.cli(&["CLUSTER", "INFO"])
                .is_some_and(|i| i.contains("cluster_state:ok"))
        }) {
            assert!(Instant::now() < until, "the cluster did not converge");
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| match n.tls_port() {
                Some(port) => format!("rediss://127.0.0.1:{port}"),
                None => n.url(),
            })
            .collect()
    }

    /// The slot `key` hashes to.
    pub fn slot_of(&self, key: &str) -> String {
        self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .expect("CLUSTER KEYSLOT")
    }

    fn id(&self, node: usize) -> String {
        self.nodes[node]
            .cli(&["CLUSTER", "MYID"])
            .expect("CLUSTER MYID")
    }

    /// Starts moving `slot` from node `from` to node `to`, as an online resharding does: `to`
    /// imports it and `from` migrates it, so a key `from` no longer has is asked for at `to`
    /// (`ASK`), and a call over keys split between them is told to try again (`TRYAGAIN`).
    pub fn start_moving(&self, slot: &str, from: usize, to: usize) {
        let (from_id, to_id) = (self.id(from), self.id(to));
        let ok = |n: usize, args: &[&str]| {
            assert_eq!(self.nodes[n].cli(args).as_deref(), Some("OK"), "{args:?}");
        };
        ok(to, &["CLUSTER", "SETSLOT", slot, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", slot, "MIGRATING", &to_id]);
    }

    /// Moves up to `count` of `slot`'s keys from node `from` to node `to` (`MIGRATE`: each key
    /// leaves `from` as it arrives at `to`); returns how many moved.
    pub fn migrate_keys(&self, slot: &str, from: usize, to: usize, count: usize) -> usize {
        let keys = self.nodes[from]
            .cli(&["CLUSTER", "GETKEYSINSLOT", slot, &count.to_string()])
            .unwrap_or_default();
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            return 0;
        }
        let port = self.nodes[to].port.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(&keys);
        let answer = self.nodes[from].cli(&args);
        assert!(
            matches!(answer.as_deref(), Some("OK" | "NOKEY")),
            "MIGRATE: {answer:?}"
        );
        keys.len()
    }

    /// Ends a move: every node hands `slot` to node `to`.
    pub fn finish_moving(&self, slot: &str, to: usize) {
        let to_id = self.id(to);
        for n in &self.nodes {
            n.cli(&["CLUSTER", "SETSLOT", slot, "NODE", &to_id]);
        }
    }

    /// Keys held over all nodes.
    pub fn keys(&self) -> usize {
        self.nodes
            .iter()
            .filter_map(|n| n.cli(&["DBSIZE"]).and_then(|d| d.parse::<usize>().ok()))
            .sum()
    }

    /// The nodes that are primaries now, by their own word.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&n| {
                self.nodes[n]
                    .cli(&["INFO", "replication"])
                    .is_some_and(|i| i.contains("role:master"))
            })
            .collect()
    }

    /// Moves `slot` with its keys from node `from` to node `to` at once.
    pub fn move_slot(&self, slot: &str, from: usize, to: usize) {
        self.start_moving(slot, from, to);
        while self.migrate_keys(slot, from, to, 100) > 0 {}
        self.finish_moving(slot, to);
    }

    /// The node that is primary for `key`'s slot now, by its own word.
    pub fn primary_of(&self, key: &str) -> Option<usize> {
        let slot: u16 = self
            .nodes
            .iter()
            .find_map(|n| n.cli(&["CLUSTER", "KEYSLOT", key]))?
            .parse()
            .ok()?;
        self.nodes.iter().position(|n| {
            // This node's own line of CLUSTER NODES: id addr flags primary ping pong epoch
            // link slot-range…
            let nodes = n.cli(&["CLUSTER", "NODES"]).unwrap_or_default();
            let Some(me) = nodes.lines().find(|l| l.contains("myself")) else {
                return false;
            };
            let fields: Vec<&str> = me.split_whitespace().collect();
            fields.get(2).is_some_and(|f| f.contains("master"))
                && fields.iter().skip(8).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                })
        })
    }
}

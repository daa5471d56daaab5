//! `embedgate serve` and `embedgate sim` with config files: the shipped examples load, and an
//! invalid file refuses to start with a message naming the key.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_embedgate"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn refuses(args: &[&str], toml: &str, needle: &str) {
    let path = std::env::temp_dir().join(format!(
        "embedgate-bad-{}-{}.toml",
        std::process::id(),
        needle.replace('.', "-")
    ));
    std::fs::write(&path, toml).unwrap();
    let out = bin().args(args).arg(&path).output().unwrap();
    assert!(!out.status.success(), "{toml} was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(needle), "error names {needle}: {stderr}");
}

#[test]
fn invalid_configs_refuse_to_start_naming_the_key() {
    refuses(&["serve", "--config"], "[pool]\nmax_urlz = 5\n", "max_urlz");
    refuses(
        &["serve", "--config"],
        "[upstream]\nrate_per_sec = -1\n",
        "upstream.rate_per_sec",
    );
    refuses(
        &["serve", "--config"],
        "[pool]\nmin_remaining_secs = 300\n",
        "pool.min_remaining_secs",
    );
    refuses(
        &["serve", "--config"],
        "[[tenants]]\nid = \"a\"\napi_key_sha256 = [\"abc\"]\n",
        "tenants[0].api_key_sha256",
    );
    refuses(
        &["sim", "--config"],
        "[knobs]\nerror_rate = 2.0\n",
        "error_rate",
    );
    // Several upstreams: each names its account, ids are unique, role settings need a role,
    // and the single [upstream] table is not mixed in.
    let up =
        |extra: &str| format!("[[upstreams]]\nid = \"us\"\naccount = \"111122223333\"\n{extra}\n");
    refuses(
        &["serve", "--config"],
        "[[upstreams]]\nid = \"us\"\n",
        "upstreams[0].account",
    );
    refuses(
        &["serve", "--config"],
        &format!("{}{}", up(""), up("region = \"eu-west-1\"")),
        "upstreams[1].id",
    );
    refuses(
        &["serve", "--config"],
        &up("external_id = \"x\""),
        "upstreams[0].external_id",
    );
    refuses(
        &["serve", "--config"],
        &up("role_arn = \"arn:aws:iam::1:role/x\""),
        "upstreams[0].role_arn",
    );
    refuses(
        &["serve", "--config"],
        &format!("[upstream]\nrate_per_sec = 5.0\n{}", up("")),
        "not both",
    );
    // A clock that is wrong on purpose is for tests only.
    refuses(
        &["serve", "--config"],
        "[debug]\nclock_offset_secs = 30\n",
        "--unsafe-test",
    );
}

#[test]
fn a_replica_with_a_wrong_clock_on_purpose_starts_only_with_unsafe_test() {
    let path = std::env::temp_dir().join(format!("embedgate-skew-{}.toml", std::process::id()));
    std::fs::write(&path, "[debug]\nclock_offset_secs = -120\n").unwrap();
    starts(
        &["serve", "--unsafe-test", "--config", path.to_str().unwrap()],
        "wrong on purpose",
    );
}

/// Starts the binary, waits (at most 30 s) for a line containing `ready` on stdout or stderr,
/// then kills it.
fn starts(args: &[&str], ready: &str) {
    let mut child = bin()
        .args(args)
        .env("EMBEDGATE_LISTEN", "127.0.0.1:0")
        .env("EMBEDGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("EMBEDGATE_SIM_LISTEN", "127.0.0.1:0")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = BufReader::new(child.stdout.take().unwrap());
    let err = BufReader::new(child.stderr.take().unwrap());
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        out.lines()
            .map_while(Result::ok)
            .for_each(|l| drop(tx.send(l)))
    });
    std::thread::spawn(move || {
        err.lines()
            .map_while(Result::ok)
            .for_each(|l| drop(tx2.send(l)))
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut found = false;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(ready) => {
                found = true;
                break;
            }
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        found,
        "{args:?} did not report {ready:?}; it printed: {seen:#?}"
    );
}

#[test]
fn the_shipped_example_configs_start() {
    starts(
        &["serve", "--config", "config/embedgate.example.toml"],
        "embedgate serving",
    );
    starts(
        &["sim", "--config", "config/sim.example.toml"],
        "listening on",
    );
}

//! `embedgate serve` and `embedgate sim` with config files: the shipped examples load, and an
//! invalid file refuses to start with a message naming the key.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::helpers::{free_port, serve_command, Lines};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_embedgate"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// The binary with `args`, listening on ephemeral ports and never asking EC2 for credentials.
fn sandboxed(args: &[&str]) -> Command {
    let mut c = bin();
    c.args(args)
        .env("EMBEDGATE_LISTEN", "127.0.0.1:0")
        .env("EMBEDGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("EMBEDGATE_SIM_LISTEN", "127.0.0.1:0")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

fn refuses(args: &[&str], toml: &str, needle: &str) {
    let path = std::env::temp_dir().join(format!(
        "embedgate-bad-{}-{}.toml",
        std::process::id(),
        needle.replace('.', "-")
    ));
    std::fs::write(&path, toml).unwrap();
    let mut child = sandboxed(args)
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // An accepted config starts a server that never exits: stop it and say so, not hang.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{toml} was accepted: the process started and kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
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
    for timeout in ["0", "600001"] {
        refuses(
            &["serve", "--config"],
            &format!("[api]\nbody_timeout_ms = {timeout}\n"),
            "api.body_timeout_ms: must be from 1 to 600000",
        );
    }
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
    // A warm key its tenant's policy refuses, named to the member, by check-config as by serve.
    let warm = format!(
        "[[tenants]]\nid = \"a\"\napi_key_sha256 = [\"{}\"]\ndefault_account = \"111122223333\"\n\
         warm = [{{ Operation = \"GetDashboardEmbedUrl\", DashboardId = \"d\", IdentityType = \"IAM\" }}]\n\
         [tenants.policy]\ndashboards = [\"*\"]\nidentity_types = [\"ANONYMOUS\"]\n",
        "0".repeat(64)
    );
    for command in ["serve", "check-config"] {
        refuses(
            &[command, "--config"],
            &warm,
            "tenants[0].warm[0].IdentityType: identity type IAM is not allowed",
        );
    }
    // A table given as an array of its values in order (serde would read `pool = [5]` as
    // `min_remaining_secs = 5`), at the top and inside a tenant.
    refuses(
        &["serve", "--config"],
        "pool = [5]\n",
        "pool: must be a table, not an array",
    );
    refuses(
        &["serve", "--config"],
        "[[tenants]]\nid = \"a\"\napi_key_sha256 = []\npolicy = [[\"111122223333\"]]\n",
        "tenants[0].policy: must be a table, not an array",
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
    // Log lines may wait in their batches a bounded time: what a crash loses.
    refuses(
        &["serve", "--config"],
        "log_flush_ms = 60000\n",
        "log_flush_ms",
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
    starts_with(args, &[], ready)
}

/// [`starts`] with environment variables `env`.
fn starts_with(args: &[&str], env: &[(&str, &str)], ready: &str) {
    let mut child = sandboxed(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::of(vec![
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ]);
    let mut seen = Vec::new();
    let found = lines
        .wait_for(ready, std::time::Duration::from_secs(30), &mut seen)
        .is_some();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        found,
        "{args:?} did not report {ready:?}; it printed: {seen:#?}"
    );
}

/// A log filter in the environment that is not one is said to be ignored, and the process logs
/// at its configured level (`EMBEDGATE_LOG=infp` was read as "every level of target infp" and
/// silenced every other line); in the config file it refuses to start.
#[test]
fn a_log_filter_that_is_not_one_is_named_not_followed() {
    starts_with(
        &["serve", "--config", "config/embedgate.example.toml"],
        &[("EMBEDGATE_LOG", "infp")],
        "EMBEDGATE_LOG ignored (\\\"infp\\\" is not a level",
    );
    refuses(
        &["serve", "--config"],
        "log_level = \"infp\"\n",
        "log_level: \"infp\" is not a level",
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

#[test]
fn drop_in_mode_needs_a_master_key_and_key_ids_that_identify_one_tenant() {
    let hash = "22a60ff8c666ee7f81ede927b1adfb38922412b0bbd7162b99525a22607f603b";
    refuses(
        &["serve", "--config"],
        "compat_listen = \"127.0.0.1:0\"\n",
        "compat_listen",
    );
    // A master key in the TOML is not a setting (it must come from the environment or a file).
    refuses(
        &["serve", "--config"],
        "master_key = \"0123456789abcdef0123456789abcdef\"\n",
        "master_key",
    );
    refuses(
        &["serve", "--config"],
        &format!("[[tenants]]\nid = \"a\"\napi_key_sha256 = [\"{hash}\"]\naccess_key_ids = [\"short\"]\n"),
        "tenants[0].access_key_ids",
    );
    refuses(
        &["serve", "--config"],
        "[[tenants]]\nid = \"a\"\napi_key_sha256 = []\naccess_key_ids = [\"EGSAMEKEY00000000001\"]\n\
         [[tenants]]\nid = \"b\"\napi_key_sha256 = []\naccess_key_ids = [\"EGSAMEKEY00000000001\"]\n",
        "tenants[1].access_key_ids",
    );
    let path = std::env::temp_dir().join(format!(
        "embedgate-short-master-{}.toml",
        std::process::id()
    ));
    std::fs::write(&path, "").unwrap();
    let out = bin()
        .args(["serve", "--config"])
        .arg(&path)
        .env("EMBEDGATE_MASTER_KEY", "too-short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 32 bytes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tenant_credentials_prints_a_key_whose_secret_is_derived_from_the_master_key() {
    let path = std::env::temp_dir().join(format!("embedgate-creds-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[[tenants]]\nid = \"acme\"\napi_key_sha256 = []\naccess_key_ids = [\"EGOLDKEY000000000001\"]\n",
    )
    .unwrap();
    let master = "a-master-key-for-this-test-0123456789";
    let run = |extra: &[&str], key: Option<&str>| {
        let mut c = bin();
        c.args(["tenant-credentials", "--config"])
            .arg(&path)
            .arg("acme")
            .args(extra);
        match key {
            Some(k) => c.env("EMBEDGATE_MASTER_KEY", k),
            None => c.env_remove("EMBEDGATE_MASTER_KEY"),
        };
        c.output().unwrap()
    };
    let field = |out: &str, name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap()
    };
    let out = run(&[], Some(master));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let id = field(&text, "access key id:");
    let secret = field(&text, "secret access key:");
    assert_ne!(id, "EGOLDKEY000000000001", "a new key id");
    assert!(
        text.contains(&format!(
            "access_key_ids = [\"EGOLDKEY000000000001\", \"{id}\"]"
        )),
        "the line to paste keeps the old id for rotation: {text}"
    );
    let expected =
        embedgate::credentials::derive_secret(&embedgate::config::Secret::new(master), "acme", &id);
    assert_eq!(secret, expected.expose());
    // The same id again gives the same secret; another master key another one.
    let again = run(&["--key-id", &id], Some(master));
    assert_eq!(
        field(
            &String::from_utf8_lossy(&again.stdout),
            "secret access key:"
        ),
        secret
    );
    let other = run(
        &["--key-id", &id],
        Some("another-master-key-for-this-test-0123"),
    );
    assert_ne!(
        field(
            &String::from_utf8_lossy(&other.stdout),
            "secret access key:"
        ),
        secret
    );
    // No master key: refused, saying where it comes from.
    let none = run(&[], None);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("EMBEDGATE_MASTER_KEY"));
}

/// What the README must name: every subcommand, every flag of each, and every setting the
/// gateway and the simulator read (their defaults serialized, so an unset optional setting is
/// named too, and the shipped examples, which show a warm entry and the accounts' registry). A
/// user never meets a flag or a setting the README does not explain.
#[test]
fn the_readme_names_every_subcommand_flag_and_setting() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let mut missing = vec![];

    let help = |args: &[&str]| {
        let out = bin().args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{args:?} --help");
        String::from_utf8(out.stdout).unwrap()
    };
    let top = help(&[]);
    let subcommands: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(subcommands.len() >= 8, "{top}");
    let mut flags = 0;
    for c in subcommands {
        if !readme.contains(&format!("embedgate {c}")) {
            missing.push(format!("subcommand `embedgate {c}`"));
        }
        for flag in long_flags(&help(&[c])) {
            flags += 1;
            if flag != "--help" && flag != "--version" && !readme.contains(&flag) {
                missing.push(format!("`embedgate {c} {flag}`"));
            }
        }
    }

    assert!(flags >= 30, "the help texts' flags were read: {flags}");

    let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let gateway = embedgate::dev::settings(addr, addr, "http://127.0.0.1:1", "key");
    let sim = embedgate::dev::sim_settings(addr, Some(addr));
    let mut settings = vec![];
    settings_in(&serde_json::to_value(&gateway).unwrap(), &mut settings);
    settings_in(&serde_json::to_value(&sim).unwrap(), &mut settings);
    for example in ["config/embedgate.example.toml", "config/sim.example.toml"] {
        let text = std::fs::read_to_string(format!("{root}/{example}")).unwrap();
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        settings_in(&serde_json::to_value(parsed).unwrap(), &mut settings);
    }
    settings.sort();
    settings.dedup();
    for key in settings {
        let named = [
            format!("`{key}`"),
            format!("`{key} "),
            format!("`{key}="),
            format!("[{key}]"),
            format!(".{key}]"),
        ];
        if !named.iter().any(|n| readme.contains(n.as_str())) {
            missing.push(format!("setting `{key}`"));
        }
    }
    assert!(missing.is_empty(), "the README does not name: {missing:#?}");
}

/// The `--long-flags` a help text lists.
fn long_flags(help: &str) -> Vec<String> {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(String::from)
        .collect()
}

/// Every key of a settings tree, tables included. Members spelled as QuickSight spells them (a
/// warm entry's request) are QuickSight's, documented by its API, and left out, as are the tag
/// keys of a policy's `session_tags` and `session_tag_rules` (the tenant's own).
fn settings_in(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if !k.starts_with(|c: char| c.is_ascii_uppercase()) {
                    out.push(k.clone());
                    match (k.as_str(), v) {
                        ("session_tags", _) => {}
                        // Keyed by tag: the members of each rule are settings.
                        ("session_tag_rules", serde_json::Value::Object(rules)) => {
                            rules.values().for_each(|r| settings_in(r, out))
                        }
                        _ => settings_in(v, out),
                    }
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| settings_in(i, out)),
        _ => {}
    }
}

/// Request lines wait in batches (`log_flush_ms`); a gateway stopped by SIGTERM writes them all
/// before it exits, however long the interval.
#[test]
fn a_gateway_stopped_by_sigterm_has_written_every_request_line() {
    let held = free_port(false);
    let port = held.port;
    let mut child = serve_command("config/embedgate.example.toml")
        .env("EMBEDGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("EMBEDGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("EMBEDGATE_LOG_FLUSH_MS", "10000")
        .env("EMBEDGATE_LOG", "info")
        .spawn()
        .unwrap();
    const REQUESTS: usize = 20;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let ask = || {
            http.post(format!("http://127.0.0.1:{port}/v1/embed-url/dashboard"))
                .bearer_auth("not-a-key")
                .json(&serde_json::json!({}))
                .send()
        };
        // Its lines wait in their batches, so the gateway is known to serve by its answer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut answered = loop {
            match ask().await {
                Ok(r) => break r,
                Err(e) if std::time::Instant::now() > deadline => panic!("never served: {e}"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        for _ in 1..REQUESTS {
            assert!(
                [401, 429].contains(&answered.status().as_u16()),
                "{}",
                answered.status()
            );
            answered = ask().await.unwrap();
        }
    });
    drop(rt); // its idle connections closed, so the shutdown has nothing to wait for
    let term = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    assert!(term.success());
    let lines: Vec<String> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(child.wait().unwrap().success());
    let requests = lines
        .iter()
        .filter(|l| l.contains("\"embed-url request\""))
        .count();
    assert_eq!(requests, REQUESTS, "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("embedgate stopped")),
        "{lines:#?}"
    );
}

/// A flag's seconds outside their range are a usage error naming the range (`inf` stopped
/// `probe` and `top` with a panic; 0 or a negative wait was quietly taken as 0.1 s).
#[test]
fn a_flags_seconds_outside_their_range_are_a_usage_error() {
    for (command, flag, rest) in [
        ("probe", "--timeout-secs", "http://127.0.0.1:9/healthz"),
        ("top", "--interval-secs", "--once"),
    ] {
        for value in ["inf", "nan", "0", "-1"] {
            let out = bin()
                .args([command, rest, &format!("{flag}={value}")])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command} {flag}={value}: {stderr}"
            );
            assert!(
                stderr.contains("not a number of seconds from 0.1 to 3600"),
                "{command} {flag}={value}: {stderr}"
            );
        }
    }
}

/// An API key that could never be presented is refused where it is made: empty (no key
/// authenticates; `EMBEDGATE_DEV_API_KEY=` made the demo tenant's key empty, and then any request
/// whose `Authorization` carried no key was served as it) or with surrounding whitespace (a
/// presented key is trimmed).
#[test]
fn an_api_key_that_could_never_be_presented_is_refused_where_it_is_made() {
    for key in ["", " padded "] {
        let out = bin().args(["hash-key", key]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "hash-key {key:?} printed a hash");
        assert!(stderr.contains("hash-key: an API key must not"), "{stderr}");
        let out = bin()
            .args(["dev", "--print-config"])
            .env("EMBEDGATE_DEV_API_KEY", key)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "dev took the key {key:?}");
        assert!(
            stderr.contains("EMBEDGATE_DEV_API_KEY): an API key must not"),
            "{stderr}"
        );
    }
    refuses(
        &["serve", "--config"],
        "[[tenants]]\nid = \"a\"\napi_key_sha256 = [\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"]\n",
        "is the hash of an empty key",
    );
}

/// The proxy settings for forwarded client certificates come from the environment as a
/// Kubernetes manifest would set them (a list in one variable), `check-config` says who vouches
/// for client certificates, and one setting without the other is refused naming it.
#[test]
fn check_config_says_which_proxies_forward_client_certificates() {
    let check = |env: &[(&str, &str)]| {
        sandboxed(&["check-config", "--config", "config/embedgate.example.toml"])
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let header = (
        "EMBEDGATE_API__CLIENT_CERT_HEADER",
        "x-forwarded-client-cert",
    );
    let out = check(&[
        header,
        (
            "EMBEDGATE_API__CLIENT_CERT_PROXIES",
            "[\"127.0.0.1\", \"10.0.0.0/8\"]",
        ),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains(
                ", client certificate names read from x-forwarded-client-cert sent by 127.0.0.1, 10.0.0.0/8"
            ),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check(&[header]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("api.client_cert_header: needs api.client_cert_proxies"),
        "{stderr}"
    );
}

//! The `embedgate` binary: parse the command line, load settings, run until a shutdown signal.
//! Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod commands;

/// mimalloc instead of glibc's allocator: a request allocates and frees many small objects
/// (headers, the parsed body, the key, the answer), and in a profile of the hit path glibc's
/// malloc and free took about a sixth of the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Args, Parser, Subcommand};
use embedgate::clock::Clock;
use embedgate::config::Settings;
use embedgate::sim::{SimServer, SimSettings};
use embedgate::startup::Application;
use embedgate::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "embedgate",
    version,
    about = "A gateway in front of Amazon QuickSight's embed-URL APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with the in-process simulator and a demo tenant (no AWS account needed).
    Dev(DevArgs),
    /// Run the gateway in front of QuickSight.
    Serve(ServeArgs),
    /// Run the QuickSight simulator (for tests and local development; never talks to AWS).
    Sim(SimArgs),
    /// Print the SHA-256 of an API key (for `api_key_sha256` in the tenant table); generates a new
    /// key when none is given.
    HashKey {
        /// The key to hash (default: generate one and print both).
        key: Option<String>,
    },
    /// Print a SigV4 access key for a tenant of the QuickSight-compatible listener: a new key id
    /// (or the one given) and its secret, derived from the master key (EMBEDGATE_MASTER_KEY or
    /// the config's master_key_file).
    TenantCredentials(commands::CredentialArgs),
    /// Load and validate settings as `serve` would, print what they describe, and exit.
    CheckConfig(commands::CheckArgs),
    /// GET an http:// URL and succeed on a 2xx answer (a health check for shell-less images).
    Probe(commands::ProbeArgs),
    /// A terminal view of a gateway (pool, upstream rate vs budget, throttling, per-tenant
    /// rejections), refreshed every second, from its admin listener.
    Top(commands::TopArgs),
}

#[derive(Args)]
struct DevArgs {
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin address (/metrics).
    #[arg(long, default_value = "127.0.0.1:9464")]
    admin_listen: SocketAddr,
    /// Simulator address.
    #[arg(long, default_value = "127.0.0.1:4599")]
    sim_listen: SocketAddr,
    /// QuickSight-compatible listener (drop-in mode).
    #[arg(long, default_value = "127.0.0.1:8081")]
    compat_listen: SocketAddr,
    /// The demo portal (a page that embeds dashboards with the QuickSight embedding SDK).
    #[arg(long, default_value = "127.0.0.1:8082")]
    demo_listen: SocketAddr,
    /// The simulator's HTTPS listener for embed pages (self-signed certificate; the embedding
    /// SDK needs https:// URLs).
    #[arg(long, default_value = "127.0.0.1:4600")]
    sim_tls_listen: SocketAddr,
    /// Demo tenant API key [default: a new random key each start].
    #[arg(long, env = "EMBEDGATE_DEV_API_KEY")]
    api_key: Option<String>,
    /// Print the gateway settings `dev` would run with, as TOML for `embedgate serve --config`
    /// (the simulator's test credentials, the demo tenant; without the compatible listener,
    /// whose master key `serve` reads from the environment), and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML settings file (see config/embedgate.example.toml); repeat to merge several in order
    /// (e.g. settings, then the tenant table from a secret).
    #[arg(long, required = true)]
    config: Vec<PathBuf>,
    /// Allow `[debug]` settings that make this process misbehave on purpose (tests only).
    #[arg(long)]
    unsafe_test: bool,
}

#[derive(Args)]
struct SimArgs {
    /// Address to listen on [default: 127.0.0.1:4599].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TOML settings file (see config/sim.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// AWS region the simulator signs for [default: us-east-1].
    #[arg(long)]
    region: Option<String>,
    /// Test access key id to accept (replaces the configured credentials, with --secret-access-key).
    #[arg(long, requires = "secret_access_key")]
    access_key_id: Option<String>,
    /// Test secret access key for --access-key-id.
    #[arg(long, requires = "access_key_id")]
    secret_access_key: Option<String>,
    /// Base URL of issued embed URLs [default: http://<listen address>, or https://<the
    /// --embed-tls-listen address>].
    #[arg(long)]
    public_url: Option<String>,
    /// Also serve embed pages over HTTPS here (self-signed certificate made at start-up) and
    /// issue https:// URLs, as the QuickSight embedding SDK requires.
    #[arg(long)]
    embed_tls_listen: Option<SocketAddr>,
    /// Median latency added to every API call, in milliseconds.
    #[arg(long)]
    latency_ms: Option<f64>,
    /// 99th-percentile latency; with it, latency is log-normal.
    #[arg(long)]
    latency_p99_ms: Option<f64>,
    /// Throttle each account above this many calls per second.
    #[arg(long)]
    throttle_rps: Option<u32>,
    /// Fraction (0-1) of calls answered with InternalFailureException.
    #[arg(long)]
    error_rate: Option<f64>,
    /// Fraction (0-1) of calls that hang.
    #[arg(long)]
    hang_rate: Option<f64>,
    /// Seconds added to the simulator's clock.
    #[arg(long, allow_negative_numbers = true)]
    clock_offset_secs: Option<f64>,
    /// Accept unsigned and wrongly signed requests.
    #[arg(long)]
    no_verify_signatures: bool,
    /// HTTP worker threads [default: one per core].
    #[arg(long)]
    workers: Option<usize>,
}

impl SimArgs {
    fn settings(&self) -> anyhow::Result<SimSettings> {
        let mut s: SimSettings =
            embedgate::config::loader::load(self.config.as_deref(), "EMBEDGATE_SIM_")?;
        if let Some(v) = self.listen {
            s.listen = v;
        }
        if let Some(v) = &self.region {
            s.region.clone_from(v);
        }
        if let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
            s.credentials = vec![embedgate::sim::TestCredential {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                accounts: vec![],
            }];
        }
        if let Some(v) = &self.public_url {
            s.public_url = Some(v.clone());
        }
        if self.embed_tls_listen.is_some() {
            s.embed_tls_listen = self.embed_tls_listen;
        }
        let k = &mut s.knobs;
        if let Some(v) = self.latency_ms {
            k.latency_ms = v;
        }
        if let Some(v) = self.latency_p99_ms {
            k.latency_p99_ms = Some(v);
        }
        if let Some(v) = self.throttle_rps {
            k.throttle_rps = Some(v);
        }
        if let Some(v) = self.error_rate {
            k.error_rate = v;
        }
        if let Some(v) = self.hang_rate {
            k.hang_rate = v;
        }
        if let Some(v) = self.clock_offset_secs {
            k.clock_offset_secs = v;
        }
        if self.no_verify_signatures {
            s.verify_signatures = false;
        }
        if self.workers.is_some() {
            s.workers = self.workers;
        }
        s.validate()
            .map_err(|e| anyhow::anyhow!("invalid simulator settings: {e}"))?;
        Ok(s)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Sim(args) => run_sim(args).await,
            Command::Serve(args) => run_serve(args).await,
            Command::Dev(args) => run_dev(args).await,
            Command::HashKey { key } => {
                if let Some(key) = &key {
                    embedgate::tenant::check_api_key(key)
                        .map_err(|why| anyhow::anyhow!("hash-key: {why}"))?;
                }
                let generated = key.is_none();
                let key = key.unwrap_or_else(embedgate::dev::new_api_key);
                if generated {
                    println!("api key:        {key}");
                    println!(
                        "api_key_sha256: {}",
                        hex::encode(embedgate::tenant::hash_key(&key))
                    );
                } else {
                    println!("{}", hex::encode(embedgate::tenant::hash_key(&key)));
                }
                Ok(())
            }
            Command::TenantCredentials(args) => commands::tenant_credentials(args),
            Command::CheckConfig(args) => commands::check_config(args).await,
            Command::Probe(args) => commands::probe(args),
            Command::Top(args) => commands::top(args),
        }
    });
    // Lines still in a batch (the last requests', "embedgate stopped", a start-up failure's).
    telemetry::flush();
    result
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    // Read before the files are loaded: a change made while the gateway starts is reloaded.
    let loaded = embedgate::config::loader::contents(&args.config);
    let mut settings: Settings = embedgate::config::loader::load_files(&args.config, "EMBEDGATE_")?;
    settings.master_key =
        embedgate::config::loader::load_master_key(settings.master_key_file.as_deref())?;
    let format = match settings.log_format.as_deref() {
        Some("pretty") => LogFormat::Pretty,
        _ => LogFormat::Json,
    };
    let flush = settings
        .log_flush_ms
        .map_or(telemetry::DEFAULT_FLUSH, Duration::from_millis);
    telemetry::init(
        format,
        settings.log_level.as_deref().unwrap_or("info"),
        flush,
    );
    let offset = settings.debug.clock_offset_secs;
    let clock = if offset == 0.0 {
        Clock::System
    } else if args.unsafe_test {
        tracing::warn!(
            clock_offset_secs = offset,
            "debug.clock_offset_secs: this replica's clock is wrong on purpose (--unsafe-test)"
        );
        Clock::skewed((offset * 1000.0) as i64)
    } else {
        anyhow::bail!(
            "invalid configuration: debug.clock_offset_secs: refused without --unsafe-test (it makes this replica's clock wrong on purpose, for tests)"
        );
    };
    let app = Application::start(settings, clock).await?;
    tracing::info!(
        listen = %app.addr,
        admin = %app.admin_addr,
        compat = app.compat_addr.map(|a| a.to_string()),
        https = app.tls.is_some(),
        "embedgate serving"
    );
    reload_on_change(app.gateway.clone(), app.tls.clone(), args.config, loaded);
    app.run_until(shutdown_signal()).await?;
    tracing::info!("embedgate stopped");
    Ok(())
}

/// How often the config files are read to see whether they changed.
const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// Adds and removes tenants and puts their new keys, rules, limits, quotas and warm keys in
/// force (see `Gateway::reload`) when the config files' contents differ from `loaded` (read
/// every [`RELOAD_CHECK`]: a Kubernetes ConfigMap or Secret is updated in the running pod, whose
/// image has no shell to send a signal from) and on each `SIGHUP`; what it did, or why it
/// changed nothing, is logged. The listeners' certificate is read again on the same beat when
/// its files changed, and on each `SIGHUP` (`ListenerTls::reload`).
fn reload_on_change(
    gateway: std::sync::Arc<embedgate::gateway::Gateway>,
    tls: Option<std::sync::Arc<embedgate::tls::ListenerTls>>,
    paths: Vec<PathBuf>,
    loaded: u64,
) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: the config files are reloaded only when they change");
                None
            }
        };
        let mut seen = loaded;
        let mut every = tokio::time::interval(RELOAD_CHECK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<bool>();
            // Some(true): a signal; Some(false): no more signals will come; None: time to look.
            let woken = tokio::select! {
                s = signalled => Some(s),
                _ = every.tick() => None,
            };
            #[cfg(unix)]
            if woken == Some(false) {
                hup = None;
                continue;
            }
            if let Some(tls) = &tls {
                let _ = tls.reload(woken.is_some());
            }
            let now = embedgate::config::loader::contents(&paths);
            if woken.is_some() || now != seen {
                seen = now;
                let _ = gateway.reload_files(&paths);
            }
        }
    });
}

async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    if let Some(key) = &args.api_key {
        embedgate::tenant::check_api_key(key)
            .map_err(|why| anyhow::anyhow!("--api-key (or EMBEDGATE_DEV_API_KEY): {why}"))?;
    }
    if args.print_config {
        let key = args.api_key.unwrap_or_else(embedgate::dev::new_api_key);
        let endpoint = format!("http://{}", args.sim_listen);
        let settings = embedgate::dev::settings(args.listen, args.admin_listen, &endpoint, &key);
        print!("{}", toml::to_string(&settings)?);
        return Ok(());
    }
    telemetry::init(
        LogFormat::Pretty,
        "info,actix_server=warn",
        telemetry::DEFAULT_FLUSH,
    );
    let sim = SimServer::start(embedgate::dev::sim_settings(
        args.sim_listen,
        Some(args.sim_tls_listen),
    ))?;
    let key = args.api_key.unwrap_or_else(embedgate::dev::new_api_key);
    let mut settings =
        embedgate::dev::settings(args.listen, args.admin_listen, &sim.endpoint, &key);
    embedgate::dev::enable_compat(&mut settings, args.compat_listen);
    let app = Application::start(settings, Clock::System).await?;
    let base = format!("http://{}", app.addr);
    let portal = embedgate::demo::DemoPortal::start(embedgate::dev::portal_settings(
        args.demo_listen,
        &base,
        &key,
    ))?;
    println!(
        "embedgate dev: gateway {base}, admin http://{}/metrics, QuickSight simulator {}",
        app.admin_addr, sim.endpoint
    );
    println!(
        "demo tenant:   {}  (account {}, any dashboard, namespace default)",
        embedgate::dev::DEMO_TENANT,
        embedgate::sim::DEFAULT_ACCOUNT_ID
    );
    println!("demo API key:  {key}");
    println!();
    println!("Try it:");
    println!("  curl -s -X POST {base}/v1/embed-url/dashboard \\");
    println!("       -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\");
    println!("       -d '{{\"DashboardId\":\"sales-2024\",\"IdentityType\":\"QUICKSIGHT\",\"UserArn\":\"arn:aws:quicksight:us-east-1:{}:user/default/alice\"}}'", embedgate::sim::DEFAULT_ACCOUNT_ID);
    if let Some(compat) = app.compat_addr {
        let secret = embedgate::dev::dev_secret();
        println!();
        println!(
            "Drop-in mode: QuickSight's own API at http://{compat} for any AWS SDK (region {}):",
            embedgate::sim::DEFAULT_REGION
        );
        println!(
            "  access key id {}  secret access key {}",
            embedgate::dev::DEV_ACCESS_KEY_ID,
            secret.expose()
        );
        println!("  python3 -c 'import boto3; qs = boto3.client(\"quicksight\", region_name=\"{}\", endpoint_url=\"http://{compat}\", aws_access_key_id=\"{}\", aws_secret_access_key=\"{}\"); print(qs.get_dashboard_embed_url(AwsAccountId=\"{}\", DashboardId=\"sales-2024\", IdentityType=\"ANONYMOUS\")[\"EmbedUrl\"])'",
            embedgate::sim::DEFAULT_REGION, embedgate::dev::DEV_ACCESS_KEY_ID, secret.expose(), embedgate::sim::DEFAULT_ACCOUNT_ID);
    }
    println!();
    println!(
        "Demo portal:  http://{}/  (pick a dashboard and a viewer; embedded with the QuickSight embedding SDK)",
        portal.addr
    );
    println!(
        "  Embed URLs are https://{} with a self-signed certificate: open that address once in your browser and accept it.",
        sim.embed_base.trim_start_matches("https://")
    );
    println!("Open the EmbedUrl it returns once (a second use is refused); Ctrl-C stops.");
    let ran = app.run_until(shutdown_signal()).await;
    portal.stop().await;
    sim.stop().await;
    ran
}

async fn run_sim(args: SimArgs) -> anyhow::Result<()> {
    telemetry::init(LogFormat::Pretty, "info", telemetry::DEFAULT_FLUSH);
    let settings = args.settings()?;
    let server = SimServer::start(settings)?;
    let s = server.sim.settings();
    let cred = &s.credentials[0];
    println!(
        "embedgate QuickSight simulator listening on {}",
        server.endpoint
    );
    println!("  region:            {}", s.region);
    println!("  access key id:     {}", cred.access_key_id);
    println!("  secret access key: {}", cred.secret_access_key);
    println!(
        "  accounts:          {}",
        s.accounts
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  ledger:            {}/_sim/ledger   knobs: {}/_sim/knobs",
        server.endpoint, server.endpoint
    );
    println!("Try:  AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} aws quicksight get-dashboard-embed-url --endpoint-url {} --region {} --aws-account-id {} --dashboard-id sales-2024 --identity-type ANONYMOUS",
        cred.access_key_id, cred.secret_access_key, server.endpoint, s.region, embedgate::sim::DEFAULT_ACCOUNT_ID);
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        handle.stop(true).await;
    });
    server.wait().await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

//! The binary's small subcommands: `tenant-credentials`, `check-config`, `probe` and `top`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use embedgate::config::Settings;

#[derive(Args)]
pub struct CredentialArgs {
    /// The tenant's id.
    pub tenant: String,
    /// The gateway's TOML settings (the tenant must be in them); repeat to merge several files.
    #[arg(long, required = true)]
    pub config: Vec<PathBuf>,
    /// Print the secret of this existing key id instead of making a new one.
    #[arg(long)]
    pub key_id: Option<String>,
}

pub fn tenant_credentials(args: CredentialArgs) -> anyhow::Result<()> {
    let settings: Settings = embedgate::config::loader::load_files(&args.config, "EMBEDGATE_")?;
    let master = embedgate::config::loader::load_master_key(settings.master_key_file.as_deref())?
        .ok_or_else(|| {
        anyhow::anyhow!(
            "no master key: set {} or master_key_file in the config",
            embedgate::config::loader::MASTER_KEY_ENV,
        )
    })?;
    embedgate::config::check_master_key(&master).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tenant = settings
        .tenants
        .iter()
        .find(|t| t.id == args.tenant)
        .ok_or_else(|| anyhow::anyhow!("no tenant {:?} in the config", args.tenant))?;
    let new = args.key_id.is_none();
    let key_id = args
        .key_id
        .unwrap_or_else(embedgate::credentials::new_access_key_id);
    embedgate::config::check_access_key_id(&key_id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let secret = embedgate::credentials::derive_secret(&master, &tenant.id, &key_id);
    println!("tenant:            {}", tenant.id);
    println!("access key id:     {key_id}");
    println!("secret access key: {}", secret.expose());
    let mut ids = tenant.access_key_ids.clone();
    if !ids.contains(&key_id) {
        ids.push(key_id.clone());
    }
    let listed = ids
        .iter()
        .map(|i| format!("{i:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if new || !tenant.access_key_ids.contains(&key_id) {
        println!();
        println!(
            "Add the key id to tenant {:?}; a running gateway picks up the changed file (or SIGHUP):",
            tenant.id
        );
        println!("  access_key_ids = [{listed}]");
        println!("To rotate, hand out the new key, then remove the old id from the list.");
    }
    Ok(())
}

#[derive(Args)]
pub struct CheckArgs {
    /// TOML settings; repeat to merge several files in order, as `serve` does.
    #[arg(long, required = true)]
    pub config: Vec<PathBuf>,
}

/// Loads and checks settings as `serve` would (files, `EMBEDGATE_…` variables, the master key,
/// every tenant's warm keys against its policy) and says what they describe, without binding or
/// calling anything.
pub async fn check_config(args: CheckArgs) -> anyhow::Result<()> {
    let mut settings: Settings = embedgate::config::loader::load_files(&args.config, "EMBEDGATE_")?;
    settings.master_key =
        embedgate::config::loader::load_master_key(settings.master_key_file.as_deref())?;
    embedgate::startup::check(&settings).await?;
    // Who vouches for client certificates, when anyone does.
    let clients = match (
        &settings.tls.client_ca_file,
        &settings.api.client_cert_header,
    ) {
        (Some(_), _) => ", client certificates verified (tls.client_ca_file)".to_string(),
        (None, Some(header)) => format!(
            ", client certificate names read from {header} sent by {}",
            settings.api.client_cert_proxies.join(", ")
        ),
        (None, None) => String::new(),
    };
    println!(
        "ok: {} tenant(s) (tenant table {}), {} upstream(s), listen {}, admin {}, compatible listener {}, {}{clients}",
        settings.tenants.len(),
        embedgate::config::table_digest(&settings.tenants),
        settings.upstreams().len(),
        settings.listen,
        settings.admin_listen,
        settings
            .compat_listen
            .map_or_else(|| "off".to_string(), |a| a.to_string()),
        if settings.redis.enabled() {
            "cluster mode"
        } else {
            "single node"
        },
    );
    Ok(())
}

#[derive(Args)]
pub struct ProbeArgs {
    /// An `http://host:port/path` URL (a container health check: `http://127.0.0.1:8080/healthz`).
    pub url: String,
    /// Give up after this many seconds (0.1 to 3600).
    #[arg(long, default_value_t = 2.0, value_parser = seconds)]
    pub timeout_secs: f64,
}

/// A number of seconds from 0.1 to 3600 (a flag's; `inf` or `nan` would stop the command with a
/// panic, and a negative or zero wait means nothing).
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.1..=3600.0).contains(&s) => Ok(s),
        _ => Err(format!(
            "{text:?} is not a number of seconds from 0.1 to 3600"
        )),
    }
}

/// GETs `url` and succeeds on a 2xx answer: a health check for images without a shell or curl.
pub fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout_secs);
    let (status, _) = embedgate::http1::get(&args.url, timeout)?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        anyhow::bail!("probe: {} answered {status}", args.url)
    }
}

#[derive(Args)]
pub struct TopArgs {
    /// The gateway's admin listener.
    #[arg(long, default_value = "http://127.0.0.1:9464")]
    pub admin: String,
    /// Seconds between refreshes (0.1 to 3600).
    #[arg(long, default_value_t = 1.0, value_parser = seconds)]
    pub interval_secs: f64,
    /// Print one screen (two scrapes one interval apart) and exit, without clearing the terminal.
    #[arg(long)]
    pub once: bool,
}

/// A terminal view of one gateway, refreshed every interval, from `/metrics` and `/state`.
pub fn top(args: TopArgs) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(args.interval_secs);
    let admin = args.admin.trim_end_matches('/').to_string();
    let scrape = || -> anyhow::Result<embedgate::top::Scrape> {
        let (status, metrics) =
            embedgate::http1::get(&format!("{admin}/metrics"), Duration::from_secs(5))?;
        anyhow::ensure!(status == 200, "{admin}/metrics answered {status}");
        let (status, state) =
            embedgate::http1::get(&format!("{admin}/state"), Duration::from_secs(5))?;
        anyhow::ensure!(status == 200, "{admin}/state answered {status}");
        Ok(embedgate::top::Scrape::parse(
            &metrics,
            serde_json::from_str(&state)?,
        ))
    };
    let mut prev = scrape()?;
    let mut at = std::time::Instant::now();
    loop {
        std::thread::sleep(interval);
        let cur = scrape()?;
        let secs = at.elapsed().as_secs_f64();
        at = std::time::Instant::now();
        let screen = embedgate::top::render(&prev, &cur, secs, &admin);
        if args.once {
            print!("{screen}");
            return Ok(());
        }
        // Clear the screen and home the cursor, then draw.
        print!("\x1b[2J\x1b[H{screen}");
        std::io::stdout().flush()?;
        prev = cur;
    }
}

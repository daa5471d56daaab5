//! Loading typed settings: defaults, then a TOML file, then `EMBEDGATE_…` environment variables
//! (`__` separates nesting levels, e.g. `EMBEDGATE_SIM_KNOBS__LATENCY_MS=20`). Loaded once at
//! start-up; nothing reads the environment afterwards.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{de::DeserializeOwned, Serialize};

/// Loads `T` from its defaults, an optional TOML file and environment variables with `env_prefix`.
///
/// # Errors
/// A message naming the offending key and why it is wrong (unknown key, wrong type, unreadable
/// file).
pub fn load<T: Serialize + DeserializeOwned + Default>(
    file: Option<&Path>,
    env_prefix: &str,
) -> anyhow::Result<T> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            anyhow::bail!("config file {} does not exist", path.display());
        }
        figment = figment.merge(Toml::file(path));
    }
    figment = figment.merge(Env::prefixed(env_prefix).split("__"));
    figment.extract().map_err(|e| {
        let mut msgs = Vec::new();
        for err in e {
            let key = err.path.join(".");
            if key.is_empty() {
                msgs.push(err.kind.to_string());
            } else {
                msgs.push(format!("{key}: {}", err.kind));
            }
        }
        anyhow::anyhow!("invalid configuration: {}", msgs.join("; "))
    })
}

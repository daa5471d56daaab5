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
    load_files(file.as_slice(), env_prefix)
}

/// [`load`] with several TOML files, merged in order (a later file's keys win; e.g. settings
/// from a ConfigMap, then the tenant table from a Secret).
///
/// # Errors
/// See [`load`].
pub fn load_files<T: Serialize + DeserializeOwned + Default, P: AsRef<Path>>(
    files: &[P],
    env_prefix: &str,
) -> anyhow::Result<T> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    for path in files {
        let path = path.as_ref();
        if !path.exists() {
            anyhow::bail!("config file {} does not exist", path.display());
        }
        figment = figment.merge(Toml::file(path));
    }
    // Only variables naming one of T's top-level keys are settings: other EMBEDGATE_… variables
    // (EMBEDGATE_LOG, the simulator's EMBEDGATE_SIM_…) must not read as unknown keys.
    let top_level: Vec<String> = match serde_json::to_value(T::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => vec![],
    };
    let env = Env::prefixed(env_prefix).split("__").filter(move |key| {
        let first = key.as_str().split('.').next().unwrap_or_default();
        let first = first.split("__").next().unwrap_or_default();
        top_level.iter().any(|k| k.eq_ignore_ascii_case(first))
    });
    let vars: Vec<(String, String)> = env
        .iter()
        .map(|(key, value)| (key.as_str().to_owned(), value))
        .collect();
    figment = figment.merge(env);
    let invalid = |e: figment::Error| {
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
    };
    // figment reads a variable's text as a number, a boolean or a list where it looks like one, so
    // `EMBEDGATE_UPSTREAM__ACCOUNT=111122223333` would be refused as "found unsigned int" (and
    // `…=011122223333` shown without its zero). Where the key is text, its text is taken as
    // written: one key at a time, as serde stops at the first error.
    let mut verbatim: Vec<&str> = Vec::new();
    let settings: T = loop {
        match figment.extract() {
            Ok(settings) => break settings,
            Err(e) => match text_read_as_other(&e, &vars, &verbatim) {
                Some((key, text)) => {
                    verbatim.push(key);
                    figment = figment.merge(Serialized::default(key, text.trim()));
                }
                None => return Err(array_for_table::<T>(&figment).unwrap_or_else(|| invalid(e))),
            },
        }
    };
    // serde's derived structures also read a table from an array of its values in order:
    // `pool = [5]` would set `pool.min_remaining_secs` to 5. Refused, naming the key.
    let merged: serde_json::Value = figment.extract().map_err(invalid)?;
    if let Err(b) = crate::model::shape::objects_in_place_value(&merged, &settings) {
        let key = b.field.unwrap_or_default();
        anyhow::bail!("invalid configuration: {key}: must be a table, not an array");
    }
    Ok(settings)
}

/// A table written as an array whose values do not read as the table's keys in order
/// (`pool = ["x"]`): serde then names a key `pool.0`, which is not one; the table is named. Asked
/// only when the settings failed to load.
fn array_for_table<T: DeserializeOwned>(figment: &Figment) -> Option<anyhow::Error> {
    let merged: serde_json::Value = figment.extract().ok()?;
    let failed = serde_path_to_error::deserialize::<_, T>(&merged).err()?;
    let key = crate::model::shape::array_read_as_structure::<T>(&merged, failed.path())?;
    Some(anyhow::anyhow!(
        "invalid configuration: {}: must be a table, not an array",
        key.unwrap_or_default()
    ))
}

/// The variable (its dotted key and text) whose text figment read as a number, a boolean or a list
/// where its key wants text, unless it is already taken `verbatim`.
fn text_read_as_other<'v>(
    e: &figment::Error,
    vars: &'v [(String, String)],
    verbatim: &[&str],
) -> Option<(&'v str, &'v str)> {
    let figment::error::Kind::InvalidType(_, expected) = &e.kind else {
        return None;
    };
    // `PathBuf` says "path string".
    if expected != "a string" && expected != "path string" {
        return None;
    }
    let path = e.path.join(".");
    vars.iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(&path) && !verbatim.contains(&key.as_str()))
        .map(|(key, text)| (key.as_str(), text.as_str()))
}

/// The environment variable holding the master key (it wins over `master_key_file`).
pub const MASTER_KEY_ENV: &str = "EMBEDGATE_MASTER_KEY";

/// A digest of files' contents (a missing or unreadable file reads as none): what the reload
/// watch compares to see whether they changed.
pub fn contents<P: AsRef<Path>>(paths: &[P]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in paths {
        std::fs::read(path).ok().hash(&mut h);
    }
    h.finish()
}

/// Reads the master key from `EMBEDGATE_MASTER_KEY`, else from `file` (surrounding whitespace
/// trimmed), else none.
///
/// # Errors
/// The file cannot be read.
pub fn load_master_key(file: Option<&Path>) -> anyhow::Result<Option<super::Secret>> {
    if let Ok(key) = std::env::var(MASTER_KEY_ENV) {
        return Ok(Some(super::Secret::new(key.trim())));
    }
    let Some(path) = file else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("master_key_file: cannot read {}: {e}", path.display()))?;
    Ok(Some(super::Secret::new(text.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    /// Why settings from `file` and variables with `prefix` do not load.
    fn refusal(file: Option<&std::path::Path>, prefix: &str) -> String {
        load::<Settings>(file, prefix).unwrap_err().to_string()
    }

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("embedgate-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_file_overrides_defaults_and_the_environment_overrides_the_file() {
        let path = write(
            "layers",
            "[upstream]\nregion = \"eu-west-1\"\ntimeout_ms = 1234\n",
        );
        // A prefix of its own, so parallel tests cannot see it.
        std::env::set_var("EGTEST_LAYERS_UPSTREAM__TIMEOUT_MS", "999");
        std::env::set_var("EGTEST_LAYERS_NOT_A_SETTING", "ignored");
        let s: Settings = load(Some(&path), "EGTEST_LAYERS_").unwrap();
        assert_eq!(s.upstream.region, "eu-west-1");
        assert_eq!(s.upstream.timeout_ms, 999);
        assert_eq!(s.pool.min_remaining_secs, 60, "untouched defaults stay");
    }

    #[test]
    fn later_files_win_and_tables_merge() {
        let base = write(
            "base",
            "listen = \"0.0.0.0:8080\"\n[upstream]\nregion = \"eu-west-1\"\n",
        );
        let secret = write(
            "secret",
            "[upstream]\ntimeout_ms = 777\n[[tenants]]\nid = \"a\"\napi_key_sha256 = []\n",
        );
        let s: Settings = load_files(&[base, secret], "EGTEST_MERGE_").unwrap();
        assert_eq!(s.listen.port(), 8080);
        assert_eq!(
            (s.upstream.region.as_str(), s.upstream.timeout_ms),
            ("eu-west-1", 777)
        );
        assert_eq!(s.tenants.len(), 1);
    }

    #[test]
    fn a_variable_for_a_text_key_is_taken_as_written_even_when_it_looks_like_a_number() {
        let path = write("digits", "[upstream]\nregion = \"eu-west-1\"\n");
        for (key, value) in [
            ("EGTEST_DIGITS_UPSTREAM__ACCOUNT", "011122223333"),
            ("EGTEST_DIGITS_UPSTREAM__SESSION_NAME", "007"),
            ("EGTEST_DIGITS_UPSTREAM__ACCESS_KEY_ID", "true"),
            ("EGTEST_DIGITS_REDIS__PREFIX", "2024"),
            ("EGTEST_DIGITS_REDIS__TLS_CA_FILE", "2025"),
            ("EGTEST_DIGITS_UPSTREAM__TIMEOUT_MS", "999"),
        ] {
            std::env::set_var(key, value);
        }
        let s: Settings = load(Some(&path), "EGTEST_DIGITS_").unwrap();
        assert_eq!(s.upstream.account.as_deref(), Some("011122223333"));
        assert_eq!(s.upstream.session_name.as_deref(), Some("007"));
        assert_eq!(s.upstream.access_key_id.as_deref(), Some("true"));
        assert_eq!(s.redis.prefix, "2024");
        assert_eq!(
            s.redis.tls_ca_file,
            Some("2025".into()),
            "a path is text too"
        );
        assert_eq!(
            s.upstream.timeout_ms, 999,
            "a number key still reads a number"
        );

        // A number key given text is still refused naming it, and so is a number in a file
        // where the key wants text: TOML has types of its own.
        std::env::set_var("EGTEST_SOON_UPSTREAM__TIMEOUT_MS", "soon");
        let err = refusal(None, "EGTEST_SOON_");
        assert!(err.contains("upstream.timeout_ms"), "{err}");
        let path = write("number", "[upstream]\naccount = 111122223333\n");
        let err = refusal(Some(&path), "EGTEST_NUMBER_");
        assert!(err.contains("upstream.account"), "{err}");
    }

    #[test]
    fn a_table_written_as_an_array_is_named_whatever_its_values() {
        for (i, (text, key)) in [
            ("pool = [5]", "pool"),
            ("pool = [\"x\"]", "pool"),
            ("pool = [5, \"x\"]", "pool"),
            ("pool = [[5]]", "pool"),
            (
                "[[tenants]]\nid = \"a\"\napi_key_sha256 = []\npolicy = [[5]]",
                "tenants[0].policy",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let path = write(&format!("array-{i}"), &format!("{text}\n"));
            let err = refusal(Some(&path), "EGTEST_ARRAY_");
            assert_eq!(
                err,
                format!("invalid configuration: {key}: must be a table, not an array"),
                "{text}"
            );
        }
        // A list's own values are named as before.
        let path = write("list", "[redis]\ncluster_urls = [5]\n");
        let err = refusal(Some(&path), "EGTEST_LIST_");
        assert!(err.contains("redis.cluster_urls.0"), "{err}");
    }

    #[test]
    fn an_unknown_or_mistyped_key_is_named_in_the_error() {
        let path = write("unknown", "[pool]\nmax_urlz = 5\n");
        let err = refusal(Some(&path), "EGTEST_UNKNOWN_");
        assert!(err.contains("max_urlz"), "{err}");
        let path = write("mistyped", "[upstream]\ntimeout_ms = \"soon\"\n");
        let err = refusal(Some(&path), "EGTEST_MISTYPED_");
        assert!(err.contains("upstream.timeout_ms"), "{err}");
    }
}

//! Fault and timing knobs, settable from flags, config and at run time (`POST /_sim/knobs`).

use serde::{Deserialize, Serialize};

/// Everything a test can turn. A partial JSON object updates only the members it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
    /// Median added latency of an API call, in milliseconds.
    pub latency_ms: f64,
    /// 99th percentile of the latency. Unset (or ≤ median): every call takes exactly `latency_ms`;
    /// set: latency is log-normal with that median and p99.
    pub latency_p99_ms: Option<f64>,
    /// Spend the latency *after* the URL is minted rather than before: the URL is dated
    /// earlier than the answer arrives, the worst case for a gateway that dates URLs from when
    /// it sent the request.
    pub latency_after_mint: bool,
    /// Throttle each account above this many calls per second (ThrottlingException, HTTP 429).
    pub throttle_rps: Option<u32>,
    /// Burst allowed above `throttle_rps`; defaults to one second's worth.
    pub throttle_burst: Option<u32>,
    /// Apply the rate-based faults (`throttle_rps`, `error_rate`, `hang_rate`) only to calls for
    /// these accounts (empty: every account). The `*_next` counters apply to any call.
    pub fault_accounts: Vec<String>,
    /// Answer the next N calls with ThrottlingException, whatever the rate.
    pub throttle_next: u32,
    /// Send `x-amz-retry-after: <ms>` with throttling errors.
    pub retry_after_ms: Option<u64>,
    /// Fraction (0–1) of calls answered with InternalFailureException (HTTP 500).
    pub error_rate: f64,
    /// Answer the next N calls with InternalFailureException.
    pub fail_next: u32,
    /// Answer the next N calls with a bare `408 Request Timeout` and close the connection, as an
    /// HTTP front end does on a keep-alive connection it timed out just as a request arrived. The
    /// call is not read: no signature check, not counted as a call.
    pub idle_timeout_next: u32,
    /// Fraction (0–1) of calls held for `hang_ms` before a 500 (a hung upstream).
    pub hang_rate: f64,
    /// How long a hung call is held.
    pub hang_ms: u64,
    /// Seconds added to the simulator's clock (negative: behind). Moving it forward past 300 s
    /// makes issued URLs late; it also shifts the signature clock-skew check.
    pub clock_offset_secs: f64,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            latency_ms: 0.0,
            latency_p99_ms: None,
            latency_after_mint: false,
            throttle_rps: None,
            throttle_burst: None,
            fault_accounts: vec![],
            throttle_next: 0,
            retry_after_ms: None,
            error_rate: 0.0,
            fail_next: 0,
            idle_timeout_next: 0,
            hang_rate: 0.0,
            hang_ms: 3_600_000,
            clock_offset_secs: 0.0,
        }
    }
}

impl Knobs {
    /// Whether the rate-based faults apply to a call for `account`.
    pub fn faults_apply_to(&self, account: &str) -> bool {
        self.fault_accounts.is_empty() || self.fault_accounts.iter().any(|a| a == account)
    }

    /// Applies a partial update given as a JSON object, validating the result.
    ///
    /// # Errors
    /// A message naming the member that is unknown, mistyped or out of range.
    pub fn merged(&self, patch: &serde_json::Value) -> Result<Knobs, String> {
        let serde_json::Value::Object(patch) = patch else {
            return Err("knobs must be a JSON object".into());
        };
        let mut current = serde_json::to_value(self).map_err(|e| e.to_string())?;
        if let serde_json::Value::Object(map) = &mut current {
            for (k, v) in patch {
                map.insert(k.clone(), v.clone());
            }
        }
        let knobs: Knobs = serde_json::from_value(current).map_err(|e| e.to_string())?;
        knobs.validate()?;
        Ok(knobs)
    }

    /// # Errors
    /// The first member outside its range.
    pub fn validate(&self) -> Result<(), String> {
        let frac = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be between 0 and 1"))
            }
        };
        frac("error_rate", self.error_rate)?;
        frac("hang_rate", self.hang_rate)?;
        let latency = |p: f64| (0.0..=MAX_LATENCY_MS).contains(&p);
        if !latency(self.latency_ms) {
            return Err(format!(
                "latency_ms must be from 0 to {MAX_LATENCY_MS} (an hour)"
            ));
        }
        if self.latency_p99_ms.is_some_and(|p| !latency(p)) {
            return Err(format!(
                "latency_p99_ms must be from 0 to {MAX_LATENCY_MS} (an hour)"
            ));
        }
        if self.throttle_rps == Some(0) {
            return Err("throttle_rps must be at least 1 (omit it to disable throttling)".into());
        }
        if !(-MAX_CLOCK_OFFSET_SECS..=MAX_CLOCK_OFFSET_SECS).contains(&self.clock_offset_secs) {
            return Err(format!(
                "clock_offset_secs must be a number of seconds from -{MAX_CLOCK_OFFSET_SECS} to {MAX_CLOCK_OFFSET_SECS} (ten years)"
            ));
        }
        Ok(())
    }

    /// One latency sample, at most [`MAX_LATENCY_MS`] (a log-normal's tail has no end).
    pub fn sample_latency(&self, rng: &mut impl rand::Rng) -> std::time::Duration {
        use rand_distr::Distribution;
        let median = self.latency_ms;
        let ms = match self.latency_p99_ms {
            Some(p99) if p99 > median && median > 0.0 => {
                // log-normal: median = e^mu, p99 = e^(mu + 2.326 sigma)
                let sigma = (p99 / median).ln() / 2.326_348;
                rand_distr::LogNormal::new(median.ln(), sigma)
                    .map(|d| d.sample(rng))
                    .unwrap_or(median)
            }
            _ => median,
        };
        std::time::Duration::from_secs_f64(ms.clamp(0.0, MAX_LATENCY_MS) / 1000.0)
    }
}

/// The longest latency a knob may ask for, or a sample take, in milliseconds (an hour).
pub const MAX_LATENCY_MS: f64 = 3_600_000.0;
/// The largest shift of the simulator's clock, in seconds (ten years).
pub const MAX_CLOCK_OFFSET_SECS: f64 = 315_360_000.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_update_changes_only_what_it_names() {
        let k = Knobs::default()
            .merged(&serde_json::json!({"throttle_rps": 10, "error_rate": 0.5}))
            .unwrap();
        assert_eq!(k.throttle_rps, Some(10));
        assert_eq!(k.error_rate, 0.5);
        assert_eq!(k.hang_ms, Knobs::default().hang_ms);
    }

    #[test]
    fn out_of_range_or_unknown_knobs_are_refused() {
        assert!(Knobs::default()
            .merged(&serde_json::json!({"error_rate": 2}))
            .is_err());
        assert!(Knobs::default()
            .merged(&serde_json::json!({"nope": 1}))
            .is_err());
        assert!(Knobs::default()
            .merged(&serde_json::json!({"throttle_rps": 0}))
            .is_err());
        // Values whose delays no clock can hold (they stopped a call with a panic).
        for (knob, v) in [
            ("latency_ms", 1e300),
            ("latency_p99_ms", 1e300),
            ("clock_offset_secs", 1e300),
            ("clock_offset_secs", -1e300),
        ] {
            let e = Knobs::default()
                .merged(&serde_json::json!({ knob: v }))
                .unwrap_err();
            assert!(
                e.starts_with(&format!("{knob} must be")),
                "{knob} = {v}: {e}"
            );
        }
    }

    #[test]
    fn a_latency_sample_stays_within_an_hour_however_long_the_tail() {
        let k = Knobs {
            latency_ms: 0.001,
            latency_p99_ms: Some(MAX_LATENCY_MS),
            ..Knobs::default()
        };
        let mut rng = rand::rng();
        for _ in 0..10_000 {
            assert!(k.sample_latency(&mut rng).as_secs_f64() <= MAX_LATENCY_MS / 1000.0);
        }
    }

    #[test]
    fn log_normal_latency_has_the_requested_median_and_tail() {
        let k = Knobs {
            latency_ms: 50.0,
            latency_p99_ms: Some(400.0),
            ..Knobs::default()
        };
        let mut rng = rand::rng();
        let mut v: Vec<f64> = (0..20_000)
            .map(|_| k.sample_latency(&mut rng).as_secs_f64() * 1e3)
            .collect();
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        let p99 = v[v.len() * 99 / 100];
        assert!((40.0..60.0).contains(&median), "median {median}");
        assert!((300.0..530.0).contains(&p99), "p99 {p99}");
    }
}

//! `embedgate top`: a terminal view of one gateway for operators without Grafana at hand, from
//! its admin listener's `/metrics` and `/state`. This module turns two scrapes into one screen;
//! the binary fetches them once a second.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::metrics::Fetch;

/// A sample's labels.
type Labels = BTreeMap<String, String>;

/// One scrape: every sample of `/metrics` by name and labels, and `/state`.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: BTreeMap<String, Vec<(Labels, f64)>>,
    state: serde_json::Value,
}

impl Scrape {
    /// Parses Prometheus text format (the subset the gateway writes) and the `/state` JSON.
    pub fn parse(metrics: &str, state: serde_json::Value) -> Scrape {
        let mut samples: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for line in metrics.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples
                .entry(name.to_string())
                .or_default()
                .push((labels, value));
        }
        Scrape { samples, state }
    }

    /// The sum of `name`'s samples whose labels include every pair of `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .get(name)
            .into_iter()
            .flatten()
            .filter(|(labels, _)| {
                with.iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// The distinct values of `label` among `name`'s samples.
    fn values_of(&self, name: &str, label: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .samples
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|(labels, _)| labels.get(label).cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

fn parse_labels(text: &str) -> Labels {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        // Label values here never contain quotes (tenant ids, outcomes, operations).
        let Some((value, tail)) = after.split_once('"') else {
            break;
        };
        labels.insert(key.trim_start_matches(',').to_string(), value.to_string());
        rest = tail;
    }
    labels
}

/// Per-second rate of a counter between two scrapes.
fn rate(prev: &Scrape, cur: &Scrape, secs: f64, name: &str, with: &[(&str, &str)]) -> f64 {
    ((cur.sum(name, with) - prev.sum(name, with)) / secs).max(0.0)
}

/// For each reason the planner stocks URLs for, the share of those fetched since the gateway
/// started that nobody used (`follower 45% of 1297`): how well its predictions hold.
fn unused_by_reason(cur: &Scrape) -> String {
    Fetch::ALL
        .into_iter()
        .filter(|f| *f != Fetch::Miss)
        .filter_map(|f| {
            let fetched = cur.sum("embedgate_urls_fetched_total", &[("reason", f.as_str())]);
            let wasted = cur.sum(
                "embedgate_urls_wasted_total",
                &[("fetched_for", f.as_str())],
            );
            (fetched > 0.0).then(|| {
                format!(
                    "{} {:.0}% of {fetched:.0}",
                    f.as_str(),
                    100.0 * wasted / fetched
                )
            })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One screen from two scrapes `secs` apart.
pub fn render(prev: &Scrape, cur: &Scrape, secs: f64, source: &str) -> String {
    let secs = secs.max(0.001);
    let r = |name: &str, with: &[(&str, &str)]| rate(prev, cur, secs, name, with);
    let req = "embedgate_requests_total";
    let mut out = String::new();
    let state = &cur.state;
    let _ = writeln!(
        out,
        "embedgate top · {source} · mode {} · replicas {} · tenant table {} · every {secs:.1}s",
        state["mode"].as_str().unwrap_or("?"),
        state["replicas"],
        state["tenant_table"]["digest"].as_str().unwrap_or("?"),
    );
    let hits = r(req, &[("outcome", "hit")]);
    let misses = r(req, &[("outcome", "miss")]);
    let served = hits + misses;
    let _ = writeln!(
        out,
        "requests/s  hit {hits:>8.1}  miss {misses:>7.1}  hit ratio {}  error {:>5.1}  cancelled {:>5.1}",
        if served > 0.0 {
            format!("{:.1}%", 100.0 * hits / served)
        } else {
            "-".into()
        },
        r(req, &[("outcome", "error")]),
        r(req, &[("outcome", "cancelled")]),
    );
    let _ = writeln!(
        out,
        "refused/s   throttled {:>6.1}  denied {:>6.1}  invalid {:>6.1}  unauthenticated {:>5.1}",
        r(req, &[("outcome", "throttled")]),
        r(req, &[("outcome", "denied")]),
        r(req, &[("outcome", "invalid")]),
        r(req, &[("outcome", "unauthenticated")]),
    );
    let fetched = r("embedgate_urls_fetched_total", &[]);
    let wasted = r("embedgate_urls_wasted_total", &[]);
    let _ = writeln!(
        out,
        "pool        {} URLs, {} keys  fetched/s {fetched:.1}  wasted/s {wasted:.1} (expired {:.1}, cancelled {:.1})",
        cur.sum("embedgate_pool_urls", &[]),
        cur.sum("embedgate_pool_keys", &[]),
        r("embedgate_urls_wasted_total", &[("reason", "expired")]),
        r("embedgate_urls_wasted_total", &[("reason", "cancelled")]),
    );
    let unused = unused_by_reason(cur);
    if !unused.is_empty() {
        let _ = writeln!(out, "stocked, unused since start  {unused}");
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:>9} {:>9} {:>10} {:>10} {:>8}",
        "upstream", "calls/s", "ok/s", "throttled", "errors/s", "budget"
    );
    let ids = cur.values_of("embedgate_upstream_calls_total", "upstream");
    let budgets = state["budgets"].as_array().cloned().unwrap_or_default();
    for id in &ids {
        let u = [("upstream", id.as_str())];
        let calls = r("embedgate_upstream_calls_total", &u);
        let ok = r(
            "embedgate_upstream_calls_total",
            &[("upstream", id.as_str()), ("result", "ok")],
        );
        let throttled = r(
            "embedgate_upstream_calls_total",
            &[("upstream", id.as_str()), ("result", "throttled")],
        );
        let errors = r(
            "embedgate_upstream_calls_total",
            &[("upstream", id.as_str()), ("result", "error")],
        ) + r(
            "embedgate_upstream_calls_total",
            &[("upstream", id.as_str()), ("result", "timeout")],
        );
        // The upstream's budgets: those of its region and account (every account for the
        // single [upstream] table, whose account is null).
        let upstream = state["upstreams"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["id"] == id.as_str())
            .cloned()
            .unwrap_or_default();
        let budget: f64 = budgets
            .iter()
            .filter(|b| b["region"] == upstream["region"])
            .filter(|b| upstream["account"].is_null() || b["account"] == upstream["account"])
            // What this replica may spend: its share of the rate (all of it but while degraded).
            .filter_map(|b| Some(b["rate_per_sec"].as_f64()? * b["share"].as_f64().unwrap_or(1.0)))
            .sum();
        let _ = writeln!(
            out,
            "{id:<16} {calls:>9.1} {ok:>9.1} {throttled:>10.1} {errors:>10.1} {budget:>7.1}/s",
        );
    }
    let _ = writeln!(
        out,
        "QuickSight throttling events/s {:.2}",
        r("embedgate_upstream_throttle_events_total", &[])
    );
    let _ = writeln!(
        out,
        "\n{:<20} {:>9} {:>9} {:>10} {:>9}",
        "tenant", "hits/s", "misses/s", "rejected/s", "limit"
    );
    let tenants = state["tenants"].as_array().cloned().unwrap_or_default();
    for t in &tenants {
        let id = t["id"].as_str().unwrap_or("?");
        let _ = writeln!(
            out,
            "{id:<20} {:>9.1} {:>9.1} {:>10.1} {:>8}/s",
            r(req, &[("tenant", id), ("outcome", "hit")]),
            r(req, &[("tenant", id), ("outcome", "miss")]),
            r("embedgate_inbound_rejections_total", &[("tenant", id)]),
            t["rate_per_sec"],
        );
    }
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>9} {:>10.1}   (requests without a valid key)",
        "-",
        "",
        "",
        r("embedgate_inbound_rejections_total", &[("tenant", "-")]),
    );
    if cur.sum("embedgate_redis_degraded", &[]) > 0.0 {
        let _ = writeln!(
            out,
            "\nDEGRADED: this replica serves from its local pool, on 1/{} of each tenant's limit and budget (Redis unusable)",
            state["replicas"].as_u64().unwrap_or(1).max(1)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scrape(hits: u32, rejected: u32, calls: u32) -> Scrape {
        let metrics = format!(
            "# HELP x\nembedgate_requests_total{{outcome=\"hit\",protocol=\"native\",tenant=\"acme\"}} {hits}\n\
             embedgate_requests_total{{outcome=\"miss\",protocol=\"native\",tenant=\"acme\"}} 10\n\
             embedgate_requests_total{{outcome=\"cancelled\",protocol=\"native\",tenant=\"acme\"}} {rejected}\n\
             embedgate_inbound_rejections_total{{tenant=\"acme\"}} {rejected}\n\
             embedgate_upstream_calls_total{{operation=\"GetDashboardEmbedUrl\",result=\"ok\",upstream=\"us\"}} {calls}\n\
             embedgate_pool_urls 42\n\
             embedgate_urls_fetched_total{{reason=\"follower\"}} 200\n\
             embedgate_urls_fetched_total{{reason=\"hint\"}} 0\n\
             embedgate_urls_wasted_total{{fetched_for=\"follower\",reason=\"expired\"}} 80\n\
             embedgate_urls_wasted_total{{fetched_for=\"follower\",reason=\"evicted\"}} 10\n\
             embedgate_urls_wasted_total{{fetched_for=\"hint\",reason=\"cancelled\"}} {rejected}\n"
        );
        let state = json!({
            "mode": "single", "replicas": 1,
            "tenant_table": {"digest": "0123456789abcdef"},
            "upstreams": [{"id": "us", "region": "us-east-1"}],
            "budgets": [{"region": "us-east-1", "rate_per_sec": 8.5}],
            "tenants": [{"id": "acme", "rate_per_sec": 50.0}],
        });
        Scrape::parse(&metrics, state)
    }

    #[test]
    fn rates_come_from_two_scrapes_and_every_tenant_and_upstream_has_a_row() {
        let screen = render(&scrape(0, 0, 0), &scrape(90, 4, 20), 2.0, "test");
        assert!(
            screen.starts_with("embedgate top · test · mode single · replicas 1 · tenant table 0123456789abcdef · every 2.0s\n"),
            "{screen}"
        );
        assert!(screen.contains("hit     45.0"), "{screen}");
        assert!(screen.contains("hit ratio 100.0%"), "{screen}");
        // A request its client gave up on was not refused; its URL, if one was popped, is waste.
        assert!(screen.contains("cancelled   2.0\n"), "{screen}");
        let refused = screen.lines().find(|l| l.starts_with("refused/s")).unwrap();
        assert!(!refused.contains("cancelled"), "{refused}");
        assert!(screen.contains("(expired 0.0, cancelled 2.0)"), "{screen}");
        assert!(screen.contains("42 URLs"), "{screen}");
        let acme = screen.lines().find(|l| l.starts_with("acme")).unwrap();
        assert_eq!(
            acme.split_whitespace().collect::<Vec<_>>(),
            ["acme", "45.0", "0.0", "2.0", "50.0/s"]
        );
        let us = screen.lines().find(|l| l.starts_with("us ")).unwrap();
        assert!(us.contains("10.0") && us.contains("8.5/s"), "{us}");
        // What the planner stocked and nobody used, per reason, however it was lost; a reason
        // that fetched nothing is left out.
        assert!(
            screen.contains("stocked, unused since start  follower 45% of 200\n"),
            "{screen}"
        );
    }

    /// A fleet replica cut off from Redis spends its part of the budget: the screen shows that
    /// part, and says what the replica keeps to.
    #[test]
    fn a_degraded_replica_shows_its_part_of_the_budget() {
        let metrics = "embedgate_redis_degraded 1\n\
             embedgate_upstream_calls_total{operation=\"GetDashboardEmbedUrl\",result=\"ok\",upstream=\"us\"} 3\n";
        let state = json!({
            "mode": "degraded", "replicas": 3,
            "upstreams": [{"id": "us", "region": "us-east-1"}],
            "budgets": [{"region": "us-east-1", "rate_per_sec": 9.0, "share": 1.0 / 3.0}],
            "tenants": [],
        });
        let cur = Scrape::parse(metrics, state);
        let screen = render(&cur, &cur, 1.0, "test");
        let us = screen.lines().find(|l| l.starts_with("us ")).unwrap();
        assert!(us.ends_with(" 3.0/s"), "{us}");
        assert!(
            screen.contains("on 1/3 of each tenant's limit and budget"),
            "{screen}"
        );
    }
}

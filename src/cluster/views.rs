//! Session views shared through the fleet: each replica appends the views its session learner
//! saw to one stream (a batch per tick) and reads the other replicas' batches, so every replica
//! learns a tenant's paths and returning users from all of the fleet's traffic. Behind a load
//! balancer a user's views land on any replica; learning from its own alone, a replica of three
//! would see a follower only when two views of a session happen to reach it, one time in three.
//!
//! Nothing here can hand out a URL or reach past a tenant's policy: a view read from the stream
//! is only evidence for the learner, and what it predicts is admitted through the tenant's
//! policy like any request before anything is fetched. Bounded: a batch holds at most
//! [`MAX_BATCH_VIEWS`] views (a tick's further views wait for the next, as do views seen while
//! Redis is unusable, up to [`MAX_UNSENT_VIEWS`]), the stream keeps about
//! [`MAX_BATCHES`] batches, and a tick reads at most [`READ_BATCHES`] of them.

use super::{Down, Fleet, Request, Route};

/// Most views one batch carries (about 300 bytes each): 5,000 registered users' views a second
/// per replica at the default `refill.tick_ms`; a busier replica's further views wait for later
/// ticks (up to [`MAX_UNSENT_VIEWS`]).
pub const MAX_BATCH_VIEWS: usize = 500;
/// Most views a replica keeps to send while it cannot (Redis unusable, or more than a batch
/// in a tick): ten full batches, the oldest dropped first. A view older than a URL's usable life
/// is dropped too: the learner pairs views within that window.
pub const MAX_UNSENT_VIEWS: usize = 10 * MAX_BATCH_VIEWS;
/// About how many batches the stream keeps (`XADD … MAXLEN ~`): a few seconds of three replicas'
/// ticks at the default `refill.tick_ms`, enough for a replica a few ticks late, and at most about
/// 15 MB of Redis memory.
pub const MAX_BATCHES: usize = 100;
/// Most batches one tick reads.
pub const READ_BATCHES: usize = 200;
/// The stream outlives the last replica's last call by this long.
const TTL_MS: u64 = 3_600_000;

impl Fleet {
    /// Appends this replica's `batch` (none when empty) and returns the other replicas' batches
    /// appended since the last call (from the oldest kept, on the first).
    ///
    /// # Errors
    /// Redis is not usable.
    pub async fn exchange_views(&self, batch: &str) -> Result<Vec<String>, Down> {
        if !self.healthy() {
            return Err(Down::NotSent);
        }
        let mut read = self.views_read.lock().await;
        let now_ms = self.clock.now_ms();
        if read.refused_until_ms > now_ms {
            return Err(Down::NotSent);
        }
        let mut inv = self.scripts.views.prepare_invoke();
        inv.key(self.key("views", ""))
            .arg(&self.replica)
            .arg(batch)
            .arg(read.after.as_str())
            .arg(MAX_BATCHES)
            .arg(READ_BATCHES)
            .arg(TTL_MS);
        let request = Request::Script(inv);
        match self
            .send_raw::<(String, Vec<String>)>(Route::ThisThread, "views", request)
            .await
        {
            Ok((last, batches)) => {
                read.after = last;
                Ok(batches)
            }
            Err(Some(e)) if refused(&e) => {
                // Redis answered, and refuses the stream (an ACL without the stream commands, a
                // service without streams): the pool, limits and budgets are shared as before,
                // and the views are tried again later.
                self.metrics
                    .redis_errors
                    .with_label_values(&["views"])
                    .inc();
                if read.refused_until_ms == 0 {
                    tracing::warn!(error = %e, retry_secs = REFUSED_RETRY_MS / 1000, "Redis refuses the session views stream: each replica learns sessions from its own views only until it is allowed");
                }
                read.refused_until_ms = now_ms + REFUSED_RETRY_MS;
                Err(Down::NotSent)
            }
            Err(e) => self.settle("views", Err(e)),
        }
    }
}

/// Where the last read of the stream ended, and when a refused stream is tried again.
pub(super) struct ViewsRead {
    after: String,
    refused_until_ms: u64,
}

impl Default for ViewsRead {
    fn default() -> Self {
        ViewsRead {
            after: "0".into(),
            refused_until_ms: 0,
        }
    }
}

/// How long a replica whose views call Redis refused waits before it tries again.
const REFUSED_RETRY_MS: u64 = 60_000;

/// Redis answered the views call with a refusal of the commands themselves (ACL, unknown
/// command), not a failure of Redis: that must not send the replica to degraded mode.
fn refused(e: &redis::RedisError) -> bool {
    // Inside a script the refusal comes wrapped in the script's error: Redis 6 keeps `NOPERM` in
    // the text, Redis 7 words it "can't run this command".
    let detail = e.detail().unwrap_or_default();
    super::refuses_command(e)
        || detail.contains("NOPERM")
        || detail.contains("can't run this command")
}

/// One view in a batch: the tenant's id, when (ms, the seeing replica's clock) and the request
/// as a hint names one (`Operation` beside QuickSight's members).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct View {
    tenant: String,
    at: u64,
    request: serde_json::Value,
}

/// A batch of views: `(tenant id, when, request)` each.
pub fn encode<'a>(
    views: impl Iterator<Item = (&'a str, u64, &'a crate::model::EmbedRequest)>,
) -> String {
    let views: Vec<View> = views
        .map(|(tenant, at, request)| {
            let mut r = request.to_json();
            if let Some(o) = r.as_object_mut() {
                o.insert("Operation".into(), request.operation().as_str().into());
            }
            View {
                tenant: tenant.into(),
                at,
                request: r,
            }
        })
        .collect();
    serde_json::to_string(&views).unwrap_or_default()
}

/// The views of a batch, each `(tenant id, when, request)`; a view that does not parse (another
/// release's, or damaged) is left out.
pub fn decode(batch: &str) -> Vec<(String, u64, crate::model::EmbedRequest)> {
    let Ok(views) = serde_json::from_str::<Vec<View>>(batch) else {
        return vec![];
    };
    views
        .into_iter()
        .filter_map(|v| {
            let serde_json::Value::Object(obj) = v.request else {
                return None;
            };
            let request = crate::model::parse_tagged(obj).ok()?;
            Some((v.tenant, v.at, request))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{parse_value, DashboardEmbedRequest, EmbedRequest, IdentityType, Operation};

    #[test]
    fn a_batch_carries_each_view_as_it_was_asked_for_and_drops_what_does_not_parse() {
        let mut d = DashboardEmbedRequest::new("111122223333", "sales", IdentityType::Quicksight);
        d.user_arn = Some("arn:aws:quicksight:us-east-1:111122223333:user/default/alice".into());
        d.namespace = Some("default".into());
        d.region = Some("eu-west-1".into());
        d.session_lifetime_in_minutes = Some(60);
        let dashboard = EmbedRequest::Dashboard(d);
        let registered = parse_value(
            Operation::GenerateEmbedUrlForRegisteredUser,
            serde_json::json!({
                "AwsAccountId": "111122223333",
                "UserArn": "arn:aws:quicksight:us-east-1:111122223333:user/default/bob",
                "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": "finance"}},
            }),
        )
        .unwrap();
        let batch = encode(
            [("acme", 7, &dashboard), ("beta", 9, &registered)]
                .into_iter()
                .map(|(t, at, r)| (t, at as u64, r)),
        );
        assert_eq!(
            decode(&batch),
            vec![
                ("acme".to_string(), 7, dashboard.clone()),
                ("beta".to_string(), 9, registered)
            ]
        );
        // A view that does not parse (another release's, or damaged) is left out, not the batch.
        let mut views: serde_json::Value = serde_json::from_str(&batch).unwrap();
        views[1]["Request"]["Operation"] = "DeleteDashboard".into();
        views[0]["Request"]["Surprise"] = true.into();
        views.as_array_mut().unwrap().push(
            serde_json::from_str(&batch)
                .map(|v: serde_json::Value| v[0].clone())
                .unwrap(),
        );
        assert_eq!(
            decode(&views.to_string()),
            vec![("acme".to_string(), 7, dashboard)]
        );
        assert!(decode("not json").is_empty());
    }
}

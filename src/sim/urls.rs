//! Embed URLs: minting single-use URLs that point back at the simulator, and redeeming them
//! (first use within 300 s only), with the ledger kept in step.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use base64::Engine;
use rand::RngCore;

use super::{ledger::Redemption, Issued, Simulator};
use crate::model::{Experience, Operation, URL_VALIDITY_SECS};

impl Simulator {
    /// Sets the base of issued URLs once the listener's real port is known.
    pub(crate) fn set_base_url(&self, base: String) {
        *self.base_url.write() = base.trim_end_matches('/').to_string();
    }

    /// Mints a single-use embed URL for `experience` in `account` and `region` and remembers it
    /// for redemption.
    pub fn issue(
        &self,
        op: Operation,
        experience: &Experience,
        viewer: &str,
        session_minutes: i64,
        account: &str,
        region: &str,
    ) -> Issued {
        let mut rng = rand::rng();
        let mut sid = [0u8; 16];
        rng.fill_bytes(&mut sid);
        // 192 random bytes: far beyond the 128 bits an unguessable code needs, and about as long
        // as real codes (several hundred characters).
        let mut code_bytes = [0u8; 192];
        rng.fill_bytes(&mut code_bytes);
        let code = format!(
            "AYABe{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(code_bytes)
        );
        let sid = hex::encode(sid);
        let (path, title) = match experience {
            Experience::Dashboard(d) => (
                format!("/embed/{sid}/dashboards/{d}"),
                format!("dashboard {d}"),
            ),
            Experience::Visual {
                dashboard,
                sheet,
                visual,
            } => (
                format!("/embed/{sid}/dashboards/{dashboard}/sheets/{sheet}/visuals/{visual}"),
                format!("visual {visual} of dashboard {dashboard}"),
            ),
            Experience::Console(p) => (format!("/embedding/{sid}{p}"), format!("console {p}")),
            Experience::QSearch => (format!("/embedding/{sid}/q/search"), "Q search bar".into()),
            Experience::GenerativeQnA => (
                format!("/embedding/{sid}/q/search"),
                "generative Q&A".into(),
            ),
            Experience::QuickChat => (format!("/embedding/{sid}/quick-chat"), "Quick chat".into()),
        };
        let url = format!(
            "{}{path}?code={code}&identityprovider=quicksight&isauthcode=true&region={region}",
            self.base_url.read()
        );
        let entry = IssuedUrl {
            path,
            issued_at: self.now(),
            redeemed: false,
            title,
            viewer: viewer.to_string(),
            session_minutes,
        };
        {
            let mut book = self.urls.lock();
            while book.order.len() >= self.settings.max_tracked_urls {
                if let Some(old) = book.order.pop_front() {
                    book.by_code.remove(&old);
                }
            }
            book.order.push_back(code.clone());
            book.by_code.insert(code, entry);
        }
        self.ledger.issued(op, account, region);
        Issued { url }
    }

    /// Opens an embed URL: the first use within 300 s succeeds, every other use is refused.
    /// Returns the outcome and, on success, what the page names and the session length.
    pub fn redeem(&self, path: &str, code: &str) -> (Redemption, Option<Page>) {
        let now = self.now();
        let mut book = self.urls.lock();
        let outcome = match book.by_code.get_mut(code) {
            Some(e) if e.path == path => {
                let age = now.duration_since(e.issued_at).unwrap_or_default();
                if e.redeemed && self.settings.single_use {
                    (Redemption::Double, None)
                } else if age > Duration::from_secs(URL_VALIDITY_SECS) {
                    (Redemption::Late, None)
                } else {
                    let double = e.redeemed;
                    e.redeemed = true;
                    let validity_left = Duration::from_secs(URL_VALIDITY_SECS) - age;
                    let r = if double {
                        Redemption::Double
                    } else {
                        self.ledger.validity_left(validity_left.as_millis() as u64);
                        Redemption::Ok
                    };
                    let page = Page {
                        title: e.title.clone(),
                        viewer: e.viewer.clone(),
                        session_minutes: e.session_minutes,
                        validity_left_secs: validity_left.as_secs(),
                    };
                    (r, Some(page))
                }
            }
            _ => (Redemption::Unknown, None),
        };
        drop(book);
        self.ledger.redemption(outcome.0);
        outcome
    }
}

/// What a redeemed URL's page shows.
pub struct Page {
    pub title: String,
    /// Who the URL is for: a user name, `anonymous`, or `IAM caller`.
    pub viewer: String,
    pub session_minutes: i64,
    /// How much of the URL's 300 s it had left when redeemed.
    pub validity_left_secs: u64,
}

/// One issued URL, remembered for redemption.
#[derive(Debug)]
pub(super) struct IssuedUrl {
    /// The URL path it was issued with (`/embed/<sid>/dashboards/<id>`): a code only redeems there.
    path: String,
    issued_at: SystemTime,
    redeemed: bool,
    /// What the redemption page names.
    title: String,
    viewer: String,
    session_minutes: i64,
}

#[derive(Default)]
pub(super) struct UrlBook {
    by_code: HashMap<String, IssuedUrl>,
    /// Codes in issue order, so the oldest are forgotten first.
    order: VecDeque<String>,
}

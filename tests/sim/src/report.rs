//! Counting outcomes per class, the table and the JSON summary.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::client::{Outcome, Response};

/// Whether a class is traffic palisade must let through or traffic it is
/// meant to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Legitimate,
    Attack,
}

impl Kind {
    pub fn short(self) -> &'static str {
        match self {
            Kind::Legitimate => "legit",
            Kind::Attack => "attack",
        }
    }
}

/// Totals over every class, for the progress line.
#[derive(Default)]
pub struct Totals {
    pub requests: AtomicU64,
    pub allowed: AtomicU64,
    pub stopped: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Default)]
struct Tally {
    counts: Counts,
    statuses: BTreeMap<String, u64>,
    reasons: BTreeMap<String, u64>,
    error_samples: Vec<String>,
    clients: HashSet<IpAddr>,
}

/// The outcomes of one class, recorded by all its threads.
pub struct Recorder<'a> {
    tally: Mutex<Tally>,
    totals: &'a Totals,
}

impl<'a> Recorder<'a> {
    pub fn new(totals: &'a Totals) -> Recorder<'a> {
        Recorder {
            tally: Mutex::new(Tally::default()),
            totals,
        }
    }

    pub fn record(&self, client: IpAddr, resp: &Response) {
        let totals = self.totals;
        totals.requests.fetch_add(1, Ordering::Relaxed);
        match resp.outcome {
            Outcome::Allowed => totals.allowed.fetch_add(1, Ordering::Relaxed),
            Outcome::Error => totals.errors.fetch_add(1, Ordering::Relaxed),
            _ => totals.stopped.fetch_add(1, Ordering::Relaxed),
        };
        let mut t = match self.tally.lock() {
            Ok(t) => t,
            // A thread that panicked while holding the lock left whole
            // counts behind (each update is a few additions): keep counting.
            Err(poisoned) => poisoned.into_inner(),
        };
        t.counts.requests += 1;
        match resp.outcome {
            Outcome::Allowed => t.counts.allowed += 1,
            Outcome::Challenged => t.counts.challenged += 1,
            Outcome::Throttled => t.counts.throttled += 1,
            Outcome::Denied => t.counts.denied += 1,
            Outcome::Error => t.counts.errors += 1,
        }
        let status = resp
            .status
            .map_or_else(|| "transport".to_owned(), |s| s.to_string());
        *t.statuses.entry(status).or_default() += 1;
        if let Some(reason) = &resp.reason {
            *t.reasons.entry(reason.clone()).or_default() += 1;
        }
        if let Some(e) = &resp.error {
            if t.error_samples.len() < 3 && !t.error_samples.contains(e) {
                t.error_samples.push(e.clone());
            }
        }
        t.clients.insert(client);
    }

    pub fn report(
        &self,
        name: &str,
        kind: Kind,
        description: &str,
        stopped_by: &str,
    ) -> ClassReport {
        let t = match self.tally.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        let shares = t.counts.shares();
        let refused = shares.stopped;
        ClassReport {
            detection: (kind == Kind::Attack).then_some(refused),
            false_positives: (kind == Kind::Legitimate).then_some(refused),
            name: name.to_owned(),
            kind,
            description: description.to_owned(),
            stopped_by: stopped_by.to_owned(),
            clients: t.clients.len() as u64,
            requests: t.counts.requests,
            counts: t.counts.clone(),
            shares,
            statuses: t.statuses.clone(),
            reasons: t.reasons.clone(),
            error_samples: t.error_samples.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    #[serde(skip)]
    pub requests: u64,
    pub allowed: u64,
    pub challenged: u64,
    pub throttled: u64,
    pub denied: u64,
    pub errors: u64,
}

/// Fractions (0..=1) of a class's requests.
#[derive(Clone, Debug, Serialize)]
pub struct Shares {
    pub allowed: f64,
    pub challenged: f64,
    pub throttled: f64,
    pub denied: f64,
    pub errors: f64,
    /// challenged + throttled + denied.
    pub stopped: f64,
}

impl Counts {
    fn shares(&self) -> Shares {
        let n = self.requests.max(1) as f64;
        Shares {
            allowed: self.allowed as f64 / n,
            challenged: self.challenged as f64 / n,
            throttled: self.throttled as f64 / n,
            denied: self.denied as f64 / n,
            errors: self.errors as f64 / n,
            stopped: (self.challenged + self.throttled + self.denied) as f64 / n,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ClassReport {
    pub name: String,
    pub kind: Kind,
    pub description: String,
    /// The defense meant to stop the class (attack classes).
    pub stopped_by: String,
    /// Distinct client addresses used.
    pub clients: u64,
    pub requests: u64,
    pub counts: Counts,
    pub shares: Shares,
    /// Attack classes: the share of requests palisade refused (challenged,
    /// throttled or denied). None for legitimate classes.
    pub detection: Option<f64>,
    /// Legitimate classes: the share of requests palisade refused. None for
    /// attack classes.
    pub false_positives: Option<f64>,
    /// Responses by status code ("transport" for no response).
    pub statuses: BTreeMap<String, u64>,
    /// Palisade's reason codes of the refused requests.
    pub reasons: BTreeMap<String, u64>,
    /// Up to three distinct errors: transport errors, and 5xx answers that
    /// are not palisade's (status and the start of the body).
    pub error_samples: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub target: String,
    pub identity: String,
    pub seed: u64,
    /// How long traffic was sent.
    pub duration_s: f64,
    /// Until the last response came back.
    pub elapsed_s: f64,
    pub classes: Vec<ClassReport>,
}

fn pct(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

fn detection_or_fp(c: &ClassReport) -> String {
    match (c.detection, c.false_positives) {
        (Some(d), _) => format!("det {}", pct(d)),
        (_, Some(fp)) => format!("FP {}", pct(fp)),
        _ => String::new(),
    }
}

/// Detection over all attack requests and false positives over all
/// legitimate ones, each weighted by requests.
fn summary_lines(summary: &Summary) -> String {
    let mut out = String::new();
    for (kind, label) in [
        (Kind::Attack, "detection      "),
        (Kind::Legitimate, "false positives"),
    ] {
        let (mut refused, mut total) = (0u64, 0u64);
        for c in summary.classes.iter().filter(|c| c.kind == kind) {
            refused += c.counts.challenged + c.counts.throttled + c.counts.denied;
            total += c.requests;
        }
        if total > 0 {
            out.push_str(&format!(
                "{label}: {} of {total} {} requests refused ({})\n",
                refused,
                kind.short(),
                pct(refused as f64 / total as f64)
            ));
        }
    }
    out
}

/// The table printed at the end of a run.
pub fn table(summary: &Summary) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "palisade-sim: {:.0} s of traffic against {} (seed {}, client addresses: {})\n\n",
        summary.duration_s, summary.target, summary.seed, summary.identity
    ));
    out.push_str(&format!(
        "{:<19} {:<6} {:>7} {:>8} {:>8} {:>10} {:>9} {:>7} {:>7} {:>13}  {}\n",
        "class",
        "kind",
        "clients",
        "requests",
        "allowed",
        "challenged",
        "throttled",
        "denied",
        "errors",
        "detection/FP",
        "top reasons"
    ));
    for c in &summary.classes {
        let mut reasons: Vec<(&String, &u64)> = c.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let top: Vec<String> = reasons
            .iter()
            .take(2)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        out.push_str(&format!(
            "{:<19} {:<6} {:>7} {:>8} {:>8} {:>10} {:>9} {:>7} {:>7} {:>13}  {}\n",
            c.name,
            c.kind.short(),
            c.clients,
            c.requests,
            pct(c.shares.allowed),
            pct(c.shares.challenged),
            pct(c.shares.throttled),
            pct(c.shares.denied),
            pct(c.shares.errors),
            detection_or_fp(c),
            top.join(", ")
        ));
    }
    out.push_str("\nallowed: 2xx from the upstream; challenged: 403 bot.challenge (bot stage);\n");
    out.push_str("throttled: 429; denied: other 4xx (401, 403, 400, 413); errors: 5xx and transport errors.\n");
    out.push_str(
        "detection (attack classes) and false positives (FP, legitimate classes): the share of\n",
    );
    out.push_str("requests palisade refused (challenged + throttled + denied).\n\n");
    out.push_str(&summary_lines(summary));
    out.push('\n');
    out.push_str("what each attack class is meant to be stopped by:\n");
    for c in summary.classes.iter().filter(|c| c.kind == Kind::Attack) {
        out.push_str(&format!("  {:<19} {}\n", c.name, c.stopped_by));
    }
    for c in summary
        .classes
        .iter()
        .filter(|c| !c.error_samples.is_empty())
    {
        out.push_str(&format!(
            "\n{} errors, e.g.: {}",
            c.name,
            c.error_samples.join("; ")
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a failure should stop the test")]
mod tests {
    use super::*;

    fn resp(status: Option<u16>, reason: Option<&str>) -> Response {
        Response {
            status,
            reason: reason.map(str::to_owned),
            error: status.is_none().then(|| "connection refused".to_owned()),
            outcome: status.map_or(Outcome::Error, |s| crate::client::classify(s, reason)),
        }
    }

    #[test]
    fn shares_add_up_and_reasons_are_counted() {
        let totals = Totals::default();
        let rec = Recorder::new(&totals);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        rec.record(a, &resp(Some(200), None));
        rec.record(a, &resp(Some(429), Some("rl.exhausted")));
        rec.record(b, &resp(Some(403), Some("ban.active")));
        rec.record(b, &resp(None, None));
        let r = rec.report("x", Kind::Attack, "d", "s");
        assert_eq!((r.requests, r.clients), (4, 2));
        assert_eq!(
            (
                r.counts.allowed,
                r.counts.throttled,
                r.counts.denied,
                r.counts.errors
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(r.shares.stopped, 0.5);
        assert_eq!(r.reasons.get("ban.active"), Some(&1));
        assert_eq!(r.statuses.get("transport"), Some(&1));
        assert_eq!(r.error_samples, vec!["connection refused".to_owned()]);
        assert_eq!(totals.requests.load(Ordering::Relaxed), 4);
        assert_eq!(totals.stopped.load(Ordering::Relaxed), 2);

        let summary = Summary {
            target: "http://t".into(),
            identity: "bind".into(),
            seed: 1,
            duration_s: 1.0,
            elapsed_s: 1.0,
            classes: vec![r],
        };
        let text = table(&summary);
        assert!(text.contains("x                   attack"), "{text}");
        assert!(text.contains("25.0%"), "{text}");
        assert!(text.contains("det 50.0%"), "{text}");
        assert!(
            text.contains("detection      : 2 of 4 attack requests refused (50.0%)"),
            "{text}"
        );
        assert!(!text.contains("false positives:"), "{text}");
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["classes"][0]["counts"]["throttled"], 1);
        assert_eq!(json["classes"][0]["shares"]["allowed"], 0.25);
        assert_eq!(json["classes"][0]["detection"], 0.5);
        assert!(json["classes"][0]["false_positives"].is_null());
    }

    #[test]
    fn challenges_count_as_challenged_and_bot_denials_as_denied() {
        let totals = Totals::default();
        let rec = Recorder::new(&totals);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        rec.record(a, &resp(Some(403), Some("bot.challenge")));
        rec.record(a, &resp(Some(403), Some("bot.deny")));
        rec.record(a, &resp(Some(200), None));
        rec.record(a, &resp(Some(200), None));
        let r = rec.report("b", Kind::Legitimate, "d", "");
        assert_eq!((r.counts.challenged, r.counts.denied), (1, 1));
        assert_eq!(r.shares.challenged, 0.25);
        assert_eq!((r.detection, r.false_positives), (None, Some(0.5)));
        let summary = Summary {
            target: "http://t".into(),
            identity: "bind".into(),
            seed: 1,
            duration_s: 1.0,
            elapsed_s: 1.0,
            classes: vec![r],
        };
        let text = table(&summary);
        assert!(text.contains("FP 50.0%"), "{text}");
        assert!(
            text.contains("false positives: 2 of 4 legit requests refused (50.0%)"),
            "{text}"
        );
    }
}

//! What a scenario's traffic went through, as tables for the test output,
//! and the invariants every scenario asserts.
//!
//! Figures per kind of message:
//! - sent: copies that should have been handled (one per call and cast, one
//!   per server of the topic for fanout, one per listener for notify);
//! - delivered: copies a handler ran;
//! - lost: sent minus delivered (a failed call or cast counts as lost);
//! - dup-run: handler runs beyond the first for one copy (must be 0);
//! - longest stall: the longest one message kept its sender waiting (the
//!   call's reply, the cast's ack; fanout/notify return once queued).
//!
//! Per scenario: retried (client re-sends after an ack or reply timeout)
//! and duplicates suppressed (copies the servers recognised and did not run
//! again).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use anyhow::{ensure, Result};

use super::load::Kind;

/// Figures of one kind of message in one scenario.
#[derive(Debug, Clone, Default)]
pub struct KindFigures {
    /// Messages the workers sent (a fanout is one message).
    pub messages: u64,
    /// Copies that should have run.
    pub copies: u64,
    /// Copies that ran.
    pub delivered: u64,
    /// Copies that did not (or messages whose send, ack or reply failed).
    pub lost: u64,
    /// Extra runs of one copy.
    pub duplicates_executed: u64,
    /// Longest time one message kept its sender waiting.
    pub longest: Duration,
}

/// The outcome of one scenario's traffic.
#[derive(Debug, Clone)]
pub struct Report {
    /// Scenario name.
    pub name: String,
    /// How long traffic flowed.
    pub duration: Duration,
    /// Figures per kind, in [`Kind::ALL`] order.
    pub kinds: Vec<(Kind, KindFigures)>,
    /// Client re-sends.
    pub retried: u64,
    /// Copies the servers dropped as duplicates.
    pub duplicates_suppressed: u64,
    /// Failures seen by senders (sorted).
    pub errors: Vec<String>,
    /// Timeline of the scenario.
    pub notes: Vec<String>,
}

impl Report {
    fn sum(&self, pick: impl Fn(&KindFigures) -> u64, acked: Option<bool>) -> u64 {
        self.kinds
            .iter()
            .filter(|(k, _)| acked.is_none_or(|a| k.acked() == a))
            .map(|(_, f)| pick(f))
            .sum()
    }

    /// Copies sent, all kinds.
    pub fn sent(&self) -> u64 {
        self.sum(|f| f.copies, None)
    }

    /// Copies delivered, all kinds.
    pub fn delivered(&self) -> u64 {
        self.sum(|f| f.delivered, None)
    }

    /// Lost calls and casts.
    pub fn lost_acked(&self) -> u64 {
        self.sum(|f| f.lost, Some(true))
    }

    /// Lost fanout and notify copies (no acks: best effort, as in oslo).
    pub fn lost_unacked(&self) -> u64 {
        self.sum(|f| f.lost, Some(false))
    }

    /// Calls and casts sent.
    pub fn sent_acked(&self) -> u64 {
        self.sum(|f| f.copies, Some(true))
    }

    /// Handler runs beyond the first, all kinds.
    pub fn duplicates_executed(&self) -> u64 {
        self.sum(|f| f.duplicates_executed, None)
    }

    /// The longest a call or cast kept its sender waiting.
    pub fn longest_stall(&self) -> Duration {
        self.kinds
            .iter()
            .filter(|(k, _)| k.acked())
            .map(|(_, f)| f.longest)
            .max()
            .unwrap_or_default()
    }

    /// The invariants of every scenario: traffic flowed, no call or cast
    /// lost, no handler ran twice. `undisturbed`: nothing at all was lost
    /// (fanout and notify included), for scenarios that must not affect
    /// the data plane.
    pub fn check(&self, undisturbed: bool) -> Result<()> {
        ensure!(
            self.sent_acked() > 0 && self.delivered() > 0,
            "{}: no traffic flowed\n{self}",
            self.name
        );
        ensure!(
            self.lost_acked() == 0,
            "{}: {} calls/casts lost\n{self}",
            self.name,
            self.lost_acked()
        );
        ensure!(
            self.duplicates_executed() == 0,
            "{}: {} handler runs of duplicates\n{self}",
            self.name,
            self.duplicates_executed()
        );
        if undisturbed {
            ensure!(
                self.lost_unacked() == 0,
                "{}: {} fanout/notify copies lost in a scenario that must not disturb traffic\n{self}",
                self.name,
                self.lost_unacked()
            );
        }
        Ok(())
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "=== scenario: {} ({:.1} s of traffic) ===",
            self.name,
            self.duration.as_secs_f64()
        )?;
        for n in &self.notes {
            writeln!(f, "  {n}")?;
        }
        writeln!(
            f,
            "  {:<7} {:>8} {:>8} {:>9} {:>6} {:>7} {:>13}",
            "kind", "messages", "sent", "delivered", "lost", "dup-run", "longest stall"
        )?;
        for (k, x) in &self.kinds {
            writeln!(
                f,
                "  {:<7} {:>8} {:>8} {:>9} {:>6} {:>7} {:>13}",
                k.name(),
                x.messages,
                x.copies,
                x.delivered,
                x.lost,
                x.duplicates_executed,
                if k.acked() { ms(x.longest) } else { "-".into() }
            )?;
        }
        writeln!(
            f,
            "  total: sent {}, delivered {}, retried {}, duplicates suppressed {}, lost {} (calls/casts {}, fanout/notify {}), duplicates run {}, longest stall {}",
            self.sent(),
            self.delivered(),
            self.retried,
            self.duplicates_suppressed,
            self.lost_acked() + self.lost_unacked(),
            self.lost_acked(),
            self.lost_unacked(),
            self.duplicates_executed(),
            ms(self.longest_stall())
        )?;
        if !self.errors.is_empty() {
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for e in &self.errors {
                // "call 17: no ack after 6 attempts" -> "call: no ack after 6 attempts"
                let key = match e.split_once(':') {
                    Some((head, tail)) => format!(
                        "{}:{tail}",
                        head.split_whitespace().next().unwrap_or_default()
                    ),
                    None => e.clone(),
                };
                *kinds.entry(key).or_default() += 1;
            }
            for (e, n) in kinds {
                writeln!(f, "  failure x{n}: {e}")?;
            }
        }
        Ok(())
    }
}

/// One line per scenario: the figures for the closing note.
pub fn summary(title: &str, reports: &[Report]) -> String {
    let mut out = format!("=== summary: {title} ===\n");
    let header = format!(
        "| {:<34} | {:>7} | {:>9} | {:>7} | {:>10} | {:>10} | {:>10} | {:>7} | {:>13} |\n",
        "scenario",
        "sent",
        "delivered",
        "retried",
        "dups supp.",
        "lost acked",
        "lost fo/nt",
        "dup-run",
        "longest stall"
    );
    out.push_str(&header);
    out.push_str(&format!(
        "|{}|{}|{}|{}|{}|{}|{}|{}|{}|\n",
        "-".repeat(36),
        "-".repeat(9),
        "-".repeat(11),
        "-".repeat(9),
        "-".repeat(12),
        "-".repeat(12),
        "-".repeat(12),
        "-".repeat(9),
        "-".repeat(15)
    ));
    for r in reports {
        out.push_str(&format!(
            "| {:<34} | {:>7} | {:>9} | {:>7} | {:>10} | {:>10} | {:>10} | {:>7} | {:>13} |\n",
            r.name,
            r.sent(),
            r.delivered(),
            r.retried,
            r.duplicates_suppressed,
            r.lost_acked(),
            r.lost_unacked(),
            r.duplicates_executed(),
            ms(r.longest_stall())
        ));
    }
    out
}

//! Logging for the suite, and the count of duplicates the RPC servers
//! suppressed.
//!
//! The RPC library keeps no counter of suppressed duplicates; each one is a
//! debug event `duplicate dropped` of `zmq_proxy::rpc::server`. A tracing
//! layer with its own filter counts those events, so the figure is exact
//! without turning on debug output. (If the library renames the event, the
//! figure reads 0; it is reported, never asserted.)

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

static DUPLICATES: AtomicU64 = AtomicU64::new(0);

/// Target and message of the RPC server's event for a suppressed copy.
const TARGET: &str = "zmq_proxy::rpc::server";
const MESSAGE: &str = "duplicate dropped";

/// Copies the RPC servers of this process dropped as duplicates so far.
pub fn duplicates_suppressed() -> u64 {
    DUPLICATES.load(Ordering::Relaxed)
}

struct DuplicateCounter;

struct IsDuplicate(bool);

impl Visit for IsDuplicate {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "message" && format!("{value:?}") == MESSAGE {
            self.0 = true;
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" && value == MESSAGE {
            self.0 = true;
        }
    }
}

impl<S: Subscriber> Layer<S> for DuplicateCounter {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut v = IsDuplicate(false);
        event.record(&mut v);
        if v.0 {
            DUPLICATES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Installs the process's subscriber: warnings and errors to the test's
/// output (`RUST_LOG` overrides), plus the duplicate counter. Call first
/// thing in a test; the harness's own `init_logging` then finds it set.
pub fn init() {
    // kube's client logs every non-2xx answer at ERROR, also the expected
    // ones while the API server is down; the RPC servers warn about every
    // undecodable payload the bad-input scenario sends on purpose.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("warn,kube_client::client::builder=off,zmq_proxy::rpc::server=error")
    });
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(filter),
        )
        .with(DuplicateCounter.with_filter(Targets::new().with_target(TARGET, Level::DEBUG)))
        .try_init();
}

//! The cap on destination connections (`[fanout] max_connections`), shared by every worker.
//!
//! A worker takes a [`Permit`] before it connects its writer and keeps it while connected; an
//! idle one (nothing to write) disconnects after `idle_timeout`, or at once when another worker
//! waits for a permit ([`ConnectionCap::wanted`]). So 1,000 destinations with a cap of 32 all
//! make progress: the busy ones hold the connections, the idle ones hold none.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::telemetry;

pub(super) struct ConnectionCap {
    permits: Arc<Semaphore>,
    max: u32,
    /// Workers waiting for a permit right now.
    waiting: AtomicUsize,
    /// Wakes idle connected workers when one starts waiting.
    wanted: Notify,
    open: metrics::Gauge,
    waiting_gauge: metrics::Gauge,
}

/// The right to a destination's open connections (a PostgreSQL destination has
/// `apply_connections` of them); given back when dropped.
pub(super) struct Permit {
    _permit: OwnedSemaphorePermit,
    connections: u32,
    open: metrics::Gauge,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.open.decrement(f64::from(self.connections));
    }
}

/// Counts a waiter for as long as it waits, including when its wait is cancelled.
struct Waiting<'a>(&'a ConnectionCap);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.waiting_gauge.decrement(1.0);
    }
}

impl ConnectionCap {
    pub(super) fn new(max: usize) -> Arc<Self> {
        let open = metrics::gauge!(telemetry::DEST_CONNECTIONS_OPEN);
        let waiting_gauge = metrics::gauge!(telemetry::DEST_CONNECTIONS_WAITING);
        open.set(0.0);
        waiting_gauge.set(0.0);
        Arc::new(ConnectionCap {
            permits: Arc::new(Semaphore::new(max)),
            max: u32::try_from(max).unwrap_or(u32::MAX),
            waiting: AtomicUsize::new(0),
            wanted: Notify::new(),
            open,
            waiting_gauge,
        })
    }

    /// A permit for `connections` connections (at most the cap: configuration refuses more),
    /// at once when free; else after telling the idle connected workers that one is wanted, in
    /// turn (the semaphore is fair). Cancel-safe.
    pub(super) async fn acquire(&self, connections: u32) -> Permit {
        let connections = connections.clamp(1, self.max);
        let permit = match self.permits.clone().try_acquire_many_owned(connections) {
            Ok(p) => p,
            Err(_) => {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                self.waiting_gauge.increment(1.0);
                let _waiting = Waiting(self);
                self.wanted.notify_waiters();
                match self.permits.clone().acquire_many_owned(connections).await {
                    Ok(p) => p,
                    // The semaphore is never closed.
                    Err(_) => return std::future::pending().await,
                }
            }
        };
        self.open.increment(f64::from(connections));
        Permit {
            _permit: permit,
            connections,
            open: self.open.clone(),
        }
    }

    /// Whether some worker waits for a permit.
    pub(super) fn wanted(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// Resolves when a worker starts waiting for a permit. Enable it (`Notified::enable`)
    /// before checking [`wanted`](Self::wanted), so that no start of a wait falls in between.
    pub(super) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wanted.notified()
    }
}

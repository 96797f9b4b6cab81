//! The daemon's heartbeat in the state database (`state::DaemonStore`): one row per slot,
//! written every [`HEARTBEAT_EVERY`] for as long as `run` runs — retrying after a failure
//! included — and marked stopped when `run` returns, so that `pgfanout status` can say
//! whether a daemon is running at all. Not the source heartbeat (`source.heartbeat_interval`),
//! which writes WAL to move the slot.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::Config;
use crate::report::Chain;
use crate::state::{DaemonIdentity, StateDb, HEARTBEAT_EVERY};

/// How long `run` waits, at its end, to record that it stopped.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The heartbeat task; [`Liveness::stop`] ends it and records the stop.
pub(super) struct Liveness {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Liveness {
    pub(super) fn start(cfg: &Config) -> Liveness {
        let (stop, stopped) = oneshot::channel();
        let (conn, schema, slot) = (
            cfg.state.conn.clone(),
            cfg.state.schema.clone(),
            cfg.source.slot.clone(),
        );
        let task = tokio::spawn(async move {
            let me = DaemonIdentity::this_process();
            let mut state: Option<StateDb> = None;
            let mut first = true;
            let mut warned = false;
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                if state.is_none() {
                    // Connecting migrates, under the same lock as the pipeline's connect.
                    match StateDb::connect(&conn, &schema).await {
                        Ok(s) => state = Some(s),
                        Err(e) => {
                            if !std::mem::replace(&mut warned, true) {
                                warn!(error = %Chain(&e), "cannot write the daemon heartbeat to the state database; `status` may say no daemon runs");
                            }
                            continue;
                        }
                    }
                }
                if let Some(s) = &state {
                    match s.daemon().beat(&slot, &me, HEARTBEAT_EVERY, first).await {
                        Ok(()) => {
                            first = false;
                            warned = false;
                            debug!("daemon heartbeat written");
                        }
                        Err(e) => {
                            if !std::mem::replace(&mut warned, true) {
                                warn!(error = %Chain(&e), "cannot write the daemon heartbeat to the state database; `status` may say no daemon runs");
                            }
                            state = None;
                        }
                    }
                }
            }
            if let Some(s) = &state {
                if let Err(e) = s.daemon().stopped(&slot, &me).await {
                    debug!(error = %Chain(&e), "could not record the daemon's stop");
                }
            }
        });
        Liveness {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Ends the heartbeat and records the stop (best effort, bounded by [`STOP_WAIT`]).
    pub(super) async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(STOP_WAIT, t).await;
        }
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

//! Leadership among coordinators that share a PostgreSQL store.
//!
//! One row (`muster_leader`) holds the current leader, its address, an epoch and a lease expiry.
//! A standby takes the row when the lease has expired, incrementing the epoch; the leader renews it
//! every third of the lease. Both sides use the database clock, so process clocks never have to
//! agree. Locally, a leader trusts its lease only until the renewal it last saw succeed would
//! expire, measured from *before* that renewal was sent, on the monotonic clock: a leader that was
//! frozen (SIGSTOP, a long pause) knows on waking that it may have been replaced and refuses work,
//! and the store's epoch check (see [`crate::store::open_postgres`]) refuses any write it still tries.
//!
//! A coordinator with a single-node store (SQLite, memory) is always the leader.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

/// What this coordinator is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Another coordinator leads (at `leader`, when known).
    Standby {
        /// The leader's advertised URL.
        leader: Option<String>,
    },
    /// This coordinator leads with this fencing epoch.
    Leader {
        /// Epoch every store write is checked against.
        epoch: i64,
    },
    /// It led, and lost the lease: it must stop.
    Deposed,
}

#[derive(Debug)]
struct Lease {
    role: Role,
    /// Until when a leader may act without a further renewal.
    valid_until: Option<Instant>,
}

/// A handle on this coordinator's role, cheap to clone.
#[derive(Debug, Clone)]
pub struct Leadership {
    lease: Option<Arc<Mutex<Lease>>>,
    changes: watch::Receiver<Role>,
}

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// PostgreSQL URL.
    pub url: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// This coordinator's URL, published to standbys, workers and clients.
    pub address: String,
}

impl Leadership {
    /// A lone coordinator: always the leader, epoch 0.
    pub fn solo() -> Self {
        let (tx, rx) = watch::channel(Role::Leader { epoch: 0 });
        // Keep the sender alive for ever so receivers never see a closed channel.
        std::mem::forget(tx);
        Self {
            lease: None,
            changes: rx,
        }
    }

    /// Starts competing for the lease on a thread of its own.
    pub fn compete(config: LeaseConfig) -> Self {
        let lease = Arc::new(Mutex::new(Lease {
            role: Role::Standby { leader: None },
            valid_until: None,
        }));
        let (tx, rx) = watch::channel(Role::Standby { leader: None });
        let shared = lease.clone();
        let spawned = std::thread::Builder::new()
            .name("muster-lease".into())
            .spawn(move || lease_loop(config, shared, tx));
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the lease thread: staying a standby");
        }
        Self {
            lease: Some(lease),
            changes: rx,
        }
    }

    /// The role now. A leader whose lease may have run out is reported as a standby.
    pub fn role(&self) -> Role {
        let Some(lease) = &self.lease else {
            return Role::Leader { epoch: 0 };
        };
        let lease = lease.lock().unwrap_or_else(|p| p.into_inner());
        match (&lease.role, lease.valid_until) {
            (Role::Leader { .. }, Some(until)) if Instant::now() >= until => {
                Role::Standby { leader: None }
            }
            (role, _) => role.clone(),
        }
    }

    /// Waits until this coordinator leads; returns its epoch.
    pub async fn until_leader(&self) -> i64 {
        let mut changes = self.changes.clone();
        loop {
            if let Role::Leader { epoch } = *changes.borrow_and_update() {
                return epoch;
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until this coordinator loses the lease.
    pub async fn until_deposed(&self) {
        let mut changes = self.changes.clone();
        let _ = changes.wait_for(|r| *r == Role::Deposed).await;
    }
}

/// How often a standby tries to take an expired lease, as a fraction of the lease.
const STANDBY_POLLS_PER_LEASE: u32 = 6;
/// How often a leader renews, as a fraction of the lease.
const RENEWALS_PER_LEASE: u32 = 3;

/// How long one lease query (or connection) may take, as a fraction of the lease: a query that
/// hangs (a partition, a frozen server) counts as failed in time for the leader to step down
/// before a standby may take over.
const QUERY_TIMEOUT_PER_LEASE: u32 = 4;

/// The lease connection: an asynchronous client on the lease thread's own runtime, so that every
/// query can have a deadline (the blocking client has none), and the task driving it.
struct LeaseClient {
    client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for LeaseClient {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Runs `query` on the lease runtime within `limit`.
fn within<T>(
    rt: &tokio::runtime::Runtime,
    limit: Duration,
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    rt.block_on(async {
        match tokio::time::timeout(limit, query).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(crate::store::StoreError::from(e).to_string()),
            Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
        }
    })
}

fn lease_loop(config: LeaseConfig, lease: Arc<Mutex<Lease>>, changes: watch::Sender<Role>) {
    let holder = uuid::Uuid::now_v7().to_string();
    let millis = config.duration.as_millis() as i64;
    let limit = config.duration / QUERY_TIMEOUT_PER_LEASE;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!(error = %e, "cannot start the lease runtime: staying a standby");
            return;
        }
    };
    let mut client: Option<LeaseClient> = None;
    let set = |role: Role, valid_until: Option<Instant>| {
        let mut l = lease.lock().unwrap_or_else(|p| p.into_inner());
        l.role = role.clone();
        l.valid_until = valid_until;
        drop(l);
        changes.send_if_modified(|r| {
            let changed = *r != role;
            *r = role;
            changed
        });
    };
    let mut epoch: Option<i64> = None;
    loop {
        let sent_at = Instant::now();
        if client.is_none() {
            let connected = rt.block_on(async {
                match tokio::time::timeout(limit, crate::store::postgres_connect_async(&config.url))
                    .await
                {
                    Ok(connected) => connected.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no connection within {} ms", limit.as_millis())),
                }
            });
            match connected {
                Ok((c, connection)) => {
                    let driver = rt.spawn(async move {
                        let _ = connection.await;
                    });
                    let c = LeaseClient { client: c, driver };
                    let setup = crate::store::postgres_setup_sql();
                    match within(&rt, limit, c.client.batch_execute(&setup)) {
                        Ok(()) => client = Some(c),
                        Err(e) => warn!(error = %e, "lease: cannot set up the postgres session"),
                    }
                }
                Err(e) => warn!(error = %e, "lease: cannot reach postgres"),
            }
        }
        let outcome = client.as_ref().map(|c| match epoch {
            None => within(
                &rt,
                limit,
                c.client.query_opt(
                    "UPDATE muster_leader SET holder = $1, address = $2, epoch = epoch + 1, \
                     expires_at = now() + make_interval(secs => $3::bigint / 1000.0) \
                     WHERE id = 1 AND expires_at < now() RETURNING epoch",
                    &[&holder, &config.address, &millis],
                ),
            )
            .map(|row| row.map(|r| r.get::<_, i64>(0))),
            Some(held) => within(
                &rt,
                limit,
                c.client.query_opt(
                    "UPDATE muster_leader SET expires_at = now() + make_interval(secs => $3::bigint / 1000.0) \
                     WHERE id = 1 AND holder = $1 AND epoch = $2 RETURNING epoch",
                    &[&holder, &held, &millis],
                ),
            )
            .map(|row| row.map(|r| r.get::<_, i64>(0))),
        });
        let valid_until = sent_at + config.duration.mul_f64(0.9);
        match (epoch, outcome) {
            (None, Some(Ok(Some(won)))) => {
                info!(epoch = won, address = %config.address, "took the lease: this coordinator leads");
                epoch = Some(won);
                set(Role::Leader { epoch: won }, Some(valid_until));
            }
            (None, Some(Ok(None))) => {
                let leader = client
                    .as_ref()
                    .and_then(|c| {
                        within(
                            &rt,
                            limit,
                            c.client
                                .query_one("SELECT address FROM muster_leader WHERE id = 1", &[]),
                        )
                        .ok()
                    })
                    .map(|r| r.get::<_, String>(0))
                    .filter(|a| !a.is_empty());
                set(Role::Standby { leader }, None);
            }
            (Some(held), Some(Ok(Some(_)))) => set(Role::Leader { epoch: held }, Some(valid_until)),
            (Some(held), Some(Ok(None))) => {
                warn!(
                    epoch = held,
                    "lease taken by another coordinator: stepping down"
                );
                set(Role::Deposed, None);
                return;
            }
            (held, Some(Err(e))) => {
                warn!(error = %e, "lease query failed");
                client = None;
                if held.is_some()
                    && lease
                        .lock()
                        .map_or(true, |l| l.valid_until.is_some_and(|u| Instant::now() >= u))
                {
                    warn!("lease expired without a renewal: stepping down");
                    set(Role::Deposed, None);
                    return;
                }
            }
            (held, None) => {
                if held.is_some()
                    && lease
                        .lock()
                        .map_or(true, |l| l.valid_until.is_some_and(|u| Instant::now() >= u))
                {
                    warn!("lease expired without a renewal: stepping down");
                    set(Role::Deposed, None);
                    return;
                }
            }
        }
        let every = if epoch.is_some() {
            RENEWALS_PER_LEASE
        } else {
            STANDBY_POLLS_PER_LEASE
        };
        std::thread::sleep((config.duration / every).saturating_sub(sent_at.elapsed()));
    }
}

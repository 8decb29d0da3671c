//! `/metrics`: the coordinator's counters and sizes in Prometheus' text format (version 0.0.4),
//! for a client token. A standby shows only that it is one.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use super::jobs::STATUSES;
use super::{mailbox, AppState};
use crate::auth::{require, Role};
use crate::coordinator::{Observe, Observed};
use crate::error::ApiError;
use crate::state::job::FailReason;
use crate::state::{TimeHistogram, TIME_BUCKETS};
use prometheus::proto::{self, Bucket, LabelPair, Metric, MetricFamily, MetricType};

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "cluster",
    responses((status = 200, description = "Metrics in Prometheus' text format", body = String, content_type = "text/plain; version=0.0.4")))]
pub(super) async fn metrics(
    req: HttpRequest,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(app.tokens.as_ref(), &req, Role::Client)?;
    let observed = match app.coordinator(&req) {
        Ok(coordinator) => Some(coordinator.send(Observe).await.map_err(mailbox)?),
        Err(_) => None,
    };
    let text = render(observed.as_ref())
        .map_err(|e| ApiError::Unavailable(format!("cannot render the metrics: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type(prometheus::TEXT_FORMAT)
        .body(text))
}

/// The exposition: a fresh registry filled from what the coordinator observed.
fn render(observed: Option<&Observed>) -> prometheus::Result<String> {
    let registry = Registry::new();
    let metrics = Metrics {
        registry: &registry,
    };
    metrics.one(
        Kind::Gauge,
        "muster_leader",
        "1 when this coordinator leads, 0 when it stands by",
        u64::from(observed.is_some()),
    )?;
    if let Some(o) = observed {
        let (c, g) = (&o.counters, &o.gauges);
        let since = "since this coordinator started leading";
        for (kind, name, help, value) in [
            (
                Kind::Gauge,
                "muster_chunks_pending",
                "Chunks of unfinished jobs waiting for a worker",
                g.chunks_pending,
            ),
            (
                Kind::Gauge,
                "muster_chunks_running",
                "Chunks running on a worker or queued there",
                g.chunks_running,
            ),
            (
                Kind::Gauge,
                "muster_workers",
                "Connected workers",
                g.workers,
            ),
            (
                Kind::Gauge,
                "muster_worker_slots",
                "Connected workers' slots",
                g.slots,
            ),
            (
                Kind::Gauge,
                "muster_worker_slots_busy",
                "Connected workers' slots running a chunk",
                g.busy_slots,
            ),
            (
                Kind::Gauge,
                "muster_workers_quarantined",
                "Connected workers given no new chunks for a while: they lost or corrupted chunks again and again",
                g.quarantined,
            ),
            (
                Kind::Counter,
                "muster_jobs_submitted_total",
                &format!("New jobs accepted {since}"),
                c.jobs_submitted,
            ),
            (
                Kind::Counter,
                "muster_chunk_attempts_started_total",
                &format!("Chunk attempts handed to workers {since}"),
                c.attempts_started,
            ),
            (
                Kind::Counter,
                "muster_chunk_attempts_succeeded_total",
                &format!("Chunk attempts whose result counted {since}"),
                c.attempts_succeeded,
            ),
            (
                Kind::Counter,
                "muster_outcomes_ignored_total",
                &format!("Late or duplicate chunk outcomes ignored {since}"),
                c.outcomes_ignored,
            ),
            (
                Kind::Counter,
                "muster_backups_started_total",
                &format!("Speculative backups of stragglers started {since}"),
                c.backups_started,
            ),
            (
                Kind::Counter,
                "muster_backups_won_total",
                &format!("Speculative backups that finished first {since}"),
                c.backups_won,
            ),
        ] {
            metrics.one(kind, name, help, value)?;
        }
        let count = |counts: &BTreeMap<&str, u64>, key: &str| counts.get(key).copied().unwrap_or(0);
        metrics.family(
            Kind::Gauge,
            (
                "muster_store_info",
                "The store this coordinator writes to (always 1)",
                "store",
            ),
            [(o.store, 1)],
        )?;
        metrics.family(
            Kind::Gauge,
            ("muster_jobs", "Jobs held, by status", "status"),
            STATUSES.map(|s| (s, count(&g.jobs, s))),
        )?;
        metrics.family(
            Kind::Counter,
            (
                "muster_jobs_finished_total",
                &format!("Jobs that reached a terminal state {since}, by status"),
                "status",
            ),
            // The terminal statuses.
            STATUSES[2..]
                .iter()
                .map(|&s| (s, count(&c.jobs_finished, s))),
        )?;
        metrics.family(
            Kind::Counter,
            (
                "muster_chunk_attempts_failed_total",
                &format!("Chunk attempts that ended without a result {since}, by reason"),
                "reason",
            ),
            FailReason::CLASSES.map(|r| (r, count(&c.attempts_failed, r))),
        )?;
    }
    if let Some(histogram) = observed.and_then(|o| o.commit_seconds.clone()) {
        registry.register(Box::new(histogram))?;
    }
    let mut families = registry.gather();
    if let Some(o) = observed {
        let times = &o.counters.times;
        let mut tasks: Vec<(&String, &TimeHistogram)> = times.run.iter().collect();
        tasks.sort_by_key(|(task, _)| task.as_str());
        families.push(histogram_family(
            "muster_chunk_run_seconds",
            "How long chunk attempts ran, from assigned to their outcome, by task",
            tasks
                .into_iter()
                .map(|(task, h)| (Some(("task", task.as_str())), h)),
        ));
        families.push(histogram_family(
            "muster_chunk_queue_seconds",
            "How long chunks waited, from ready (queued or due for a retry) to assigned",
            [(None, &times.queue)],
        ));
    }
    let mut text = String::new();
    TextEncoder::new().encode_utf8(&families, &mut text)?;
    Ok(text)
}

/// A histogram family of [`TIME_BUCKETS`]: one series for each (label, histogram).
fn histogram_family<'h>(
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Option<(&'h str, &'h str)>, &'h TimeHistogram)>,
) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(MetricType::HISTOGRAM);
    let metrics = series
        .into_iter()
        .map(|(label, h)| {
            let mut cumulative = 0;
            let buckets = TIME_BUCKETS
                .iter()
                .zip(h.counts)
                .map(|(&bound, count)| {
                    cumulative += count;
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(bound);
                    bucket.set_cumulative_count(cumulative);
                    bucket
                })
                .collect();
            let mut histogram = proto::Histogram::default();
            histogram.set_bucket(buckets);
            histogram.set_sample_count(h.counts.iter().sum());
            histogram.set_sample_sum(h.sum);
            let mut metric = Metric::default();
            if let Some((key, value)) = label {
                let mut pair = LabelPair::default();
                pair.set_name(key.to_owned());
                pair.set_value(value.to_owned());
                metric.set_label(vec![pair]);
            }
            metric.set_histogram(histogram);
            metric
        })
        .collect();
    family.set_metric(metrics);
    family
}

/// Registers metrics with their values in one registry.
struct Metrics<'a> {
    registry: &'a Registry,
}

/// What a metric is to Prometheus.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Metrics<'_> {
    /// One metric of one value.
    fn one(&self, kind: Kind, name: &str, help: &str, value: u64) -> prometheus::Result<()> {
        match kind {
            Kind::Gauge => {
                let gauge = IntGauge::new(name, help)?;
                gauge.set(signed(value));
                self.registry.register(Box::new(gauge))
            }
            Kind::Counter => {
                let counter = IntCounter::new(name, help)?;
                counter.inc_by(value);
                self.registry.register(Box::new(counter))
            }
        }
    }

    /// A family of one label, with a value for each of the label's values.
    fn family<'v>(
        &self,
        kind: Kind,
        (name, help, label): (&str, &str, &str),
        values: impl IntoIterator<Item = (&'v str, u64)>,
    ) -> prometheus::Result<()> {
        let opts = Opts::new(name, help);
        match kind {
            Kind::Gauge => {
                let gauges = IntGaugeVec::new(opts, &[label])?;
                for (key, value) in values {
                    gauges
                        .get_metric_with_label_values(&[key])?
                        .set(signed(value));
                }
                self.registry.register(Box::new(gauges))
            }
            Kind::Counter => {
                let counters = IntCounterVec::new(opts, &[label])?;
                for (key, value) in values {
                    counters.get_metric_with_label_values(&[key])?.inc_by(value);
                }
                self.registry.register(Box::new(counters))
            }
        }
    }
}

/// A gauge's value (counts never come near `i64::MAX`).
fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Counters, Gauges};

    #[test]
    fn a_standby_shows_only_that_it_stands_by() {
        let text = render(None).expect("rendered");
        assert!(text.contains("\nmuster_leader 0\n"), "{text}");
        assert!(!text.contains("muster_jobs"), "{text}");
    }

    #[test]
    fn every_status_and_reason_is_shown_with_its_count() {
        let mut counters = Counters {
            jobs_submitted: 4,
            attempts_started: 9,
            ..Counters::default()
        };
        counters.jobs_finished.insert("failed", 2);
        counters.attempts_failed.insert("heartbeat_timeout", 3);
        counters
            .times
            .ran("sum", std::time::Duration::from_millis(3));
        counters.times.waited(std::time::Duration::from_micros(200));
        let mut gauges = Gauges {
            chunks_pending: 7,
            ..Gauges::default()
        };
        gauges.jobs.insert("queued", 1);
        let text = render(Some(&Observed {
            counters,
            gauges,
            store: "memory",
            commit_seconds: None,
        }))
        .expect("rendered");
        for line in [
            "muster_leader 1",
            "muster_store_info{store=\"memory\"} 1",
            "muster_jobs{status=\"queued\"} 1",
            "muster_jobs{status=\"cancelled\"} 0",
            "muster_jobs_submitted_total 4",
            "muster_jobs_finished_total{status=\"failed\"} 2",
            "muster_jobs_finished_total{status=\"succeeded\"} 0",
            "muster_chunk_attempts_started_total 9",
            "muster_chunk_attempts_failed_total{reason=\"heartbeat_timeout\"} 3",
            "muster_chunk_attempts_failed_total{reason=\"coordinator_restarted\"} 0",
            "muster_chunks_pending 7",
            "muster_chunk_run_seconds_bucket{task=\"sum\",le=\"0.0025\"} 0",
            "muster_chunk_run_seconds_bucket{task=\"sum\",le=\"0.005\"} 1",
            "muster_chunk_run_seconds_count{task=\"sum\"} 1",
            "muster_chunk_queue_seconds_bucket{le=\"0.0005\"} 1",
            "muster_chunk_queue_seconds_count 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "`{line}` missing from:\n{text}"
            );
        }
    }
}

//! OpenTelemetry: traces and metrics over OTLP/HTTP (protobuf) to a
//! collector, Azure Monitor's OTLP ingestion or any OTLP receiver.
//!
//! Configured the way every OpenTelemetry SDK is, by the environment, so an
//! AKS manifest or a systemd unit sets it without a config change:
//!
//! | variable | meaning |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL; traces go to `<base>/v1/traces`, metrics to `<base>/v1/metrics` |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `…_METRICS_ENDPOINT` | full URL of one signal (wins over the base) |
//! | `OTEL_EXPORTER_OTLP_HEADERS` | `key=value,…` sent with every export (API keys: never logged) |
//! | `OTEL_SERVICE_NAME` | `service.name` (default `hubflow`) |
//! | `OTEL_RESOURCE_ATTRIBUTES` | more resource attributes, `key=value,…` |
//! | `OTEL_METRIC_EXPORT_INTERVAL` | milliseconds between metric exports (default 60000) |
//! | `OTEL_SDK_DISABLED` | `true`: export nothing |
//!
//! Nothing is exported when no endpoint is set. Only `hubflow run` exports.
//!
//! - Traces: the `tracing` spans of the data path (one per published page
//!   group, raw blob written and raw blob curated: `fetch.publish`,
//!   `raw.write`, `curate`; they carry the source, hub partition, sequence
//!   range and raw blob name, so a batch can be followed from fetch to
//!   curated commit) go through `tracing-opentelemetry` to the SDK's batch
//!   span processor, which exports on its own thread.
//! - Metrics: the Prometheus registry `/metrics` serves, converted to OTLP
//!   ([`to_otlp`]: counters as cumulative monotonic sums, gauges, histograms
//!   with their buckets) and posted every interval by [`MetricsExport`], so
//!   both paths report the same numbers.
//!
//! A bad value (an endpoint that is not an http(s) URL, a header without
//! `=`, an interval that is not a number) is a typed [`OtelError`] that
//! refuses the start.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue as ProtoKeyValue, any_value,
};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use prost::Message;
use tokio::sync::watch;
use tracing::{info, warn};

/// Default `OTEL_METRIC_EXPORT_INTERVAL`.
const DEFAULT_METRIC_INTERVAL: Duration = Duration::from_secs(60);
/// Each export's time limit.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OtelError {
    #[error("{var}: {value:?} is not an http:// or https:// URL")]
    BadEndpoint { var: &'static str, value: String },
    #[error("{var}: entry {index} has no '=' (expected key=value,key=value)")]
    BadPair { var: &'static str, index: usize },
    #[error("{var}: {value:?} is not a number of milliseconds from 1 to 86400000")]
    BadInterval { var: &'static str, value: String },
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(String),
}

/// What the environment asks for (see the module doc).
#[derive(Clone, PartialEq)]
pub struct OtlpSettings {
    pub traces_endpoint: Option<String>,
    pub metrics_endpoint: Option<String>,
    /// Sent with every export; values are secret (API keys).
    pub headers: Vec<(String, String)>,
    pub service_name: String,
    pub resource: Vec<(String, String)>,
    pub metric_interval: Duration,
}

impl std::fmt::Debug for OtlpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("OtlpSettings")
            .field("traces_endpoint", &self.traces_endpoint)
            .field("metrics_endpoint", &self.metrics_endpoint)
            .field("headers", &header_names)
            .field("service_name", &self.service_name)
            .field("resource", &self.resource)
            .field("metric_interval", &self.metric_interval)
            .finish()
    }
}

impl OtlpSettings {
    /// From the process environment.
    pub fn from_env() -> Result<Option<OtlpSettings>, OtelError> {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// From `var` (the environment, or a map in tests); `None` when nothing
    /// is to be exported.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpSettings>, OtelError> {
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let base = endpoint(&var, "OTEL_EXPORTER_OTLP_ENDPOINT")?;
        let signal = |name: &'static str, path: &str| -> Result<Option<String>, OtelError> {
            Ok(endpoint(&var, name)?.or_else(|| {
                base.as_ref()
                    .map(|b| format!("{}{path}", b.trim_end_matches('/')))
            }))
        };
        let traces_endpoint = signal("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "/v1/traces")?;
        let metrics_endpoint = signal("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "/v1/metrics")?;
        if traces_endpoint.is_none() && metrics_endpoint.is_none() {
            return Ok(None);
        }
        let headers = pairs(&var, "OTEL_EXPORTER_OTLP_HEADERS")?;
        let resource = pairs(&var, "OTEL_RESOURCE_ATTRIBUTES")?;
        let metric_interval = match var("OTEL_METRIC_EXPORT_INTERVAL") {
            None => DEFAULT_METRIC_INTERVAL,
            Some(value) => match value.trim().parse::<u64>() {
                Ok(ms) if (1..=86_400_000).contains(&ms) => Duration::from_millis(ms),
                _ => {
                    return Err(OtelError::BadInterval {
                        var: "OTEL_METRIC_EXPORT_INTERVAL",
                        value,
                    });
                }
            },
        };
        Ok(Some(OtlpSettings {
            traces_endpoint,
            metrics_endpoint,
            headers,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| "hubflow".to_string()),
            resource,
            metric_interval,
        }))
    }

    /// `service.name`, `service.version`, then `OTEL_RESOURCE_ATTRIBUTES`.
    fn resource_pairs(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("service.name".to_string(), self.service_name.clone()),
            (
                "service.version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
        ];
        out.extend(
            self.resource
                .iter()
                .filter(|(k, _)| k != "service.name" && k != "service.version")
                .cloned(),
        );
        out
    }

    fn header_map(&self) -> HashMap<String, String> {
        self.headers.iter().cloned().collect()
    }
}

fn endpoint(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<String>, OtelError> {
    let Some(value) = var(name) else {
        return Ok(None);
    };
    match url::Url::parse(value.trim()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(Some(value.trim().to_string()))
        }
        _ => Err(OtelError::BadEndpoint { var: name, value }),
    }
}

/// `key=value,key=value` with percent-encoded values (the OTel format).
fn pairs(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Vec<(String, String)>, OtelError> {
    let Some(text) = var(name) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (index, entry) in text.split(',').enumerate() {
        if entry.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = entry.split_once('=') else {
            return Err(OtelError::BadPair { var: name, index });
        };
        let value: String = url::form_urlencoded::parse(format!("v={}", value.trim()).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        out.push((key.trim().to_string(), value));
    }
    Ok(out)
}

/// The span pipeline: the provider (flushed by [`Traces::shutdown`]) and
/// the tracer the `tracing` layer records into.
pub struct Traces {
    provider: SdkTracerProvider,
    pub tracer: SdkTracer,
}

impl Traces {
    /// Build the OTLP span exporter and its batch processor (a thread of
    /// its own; callable before or inside the tokio runtime).
    pub fn start(settings: &OtlpSettings) -> Result<Option<Traces>, OtelError> {
        let Some(endpoint) = &settings.traces_endpoint else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(settings.header_map())
            .build()
            .map_err(|e| OtelError::Exporter(e.to_string()))?;
        let resource = Resource::builder_empty()
            .with_attributes(
                settings
                    .resource_pairs()
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v)),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("hubflow");
        Ok(Some(Traces { provider, tracer }))
    }

    /// Export what is buffered and stop the processor (blocks up to the
    /// export timeout; call outside the runtime or from a blocking task).
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("warning: flushing traces to the OTLP endpoint failed: {error}");
        }
    }
}

/// Posts the Prometheus registry as OTLP metrics every interval, and once
/// more on [`MetricsExport::finish`].
pub struct MetricsExport {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsExport {
    /// Start exporting (`None` when no metrics endpoint is configured).
    pub fn start(settings: &OtlpSettings, handle: PrometheusHandle) -> Option<MetricsExport> {
        let endpoint = settings.metrics_endpoint.clone()?;
        let resource = settings.resource_pairs();
        let headers = settings.headers.clone();
        let interval = settings.metric_interval;
        let (stop, mut stopped) = watch::channel(false);
        let client = match reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build() {
            Ok(client) => client,
            Err(error) => {
                warn!(%error, "cannot build the OTLP metrics client; metrics are not exported");
                return None;
            }
        };
        let start_ns = unix_nanos(SystemTime::now());
        let task = tokio::spawn(async move {
            info!(%endpoint, interval_ms = interval.as_millis() as u64, "exporting metrics over otlp");
            loop {
                let last = tokio::select! {
                    _ = tokio::time::sleep(interval) => false,
                    _ = stopped.changed() => true,
                };
                let text = crate::telemetry::render_metrics(&handle);
                let request = to_otlp(&text, &resource, start_ns, unix_nanos(SystemTime::now()));
                let mut post = client
                    .post(&endpoint)
                    .header("content-type", "application/x-protobuf")
                    .body(request.encode_to_vec());
                for (k, v) in &headers {
                    post = post.header(k.as_str(), v.as_str());
                }
                let outcome = match post.send().await {
                    Ok(resp) if resp.status().is_success() => "ok",
                    Ok(resp) => {
                        warn!(status = resp.status().as_u16(), %endpoint, "otlp metrics export refused");
                        "error"
                    }
                    Err(error) => {
                        warn!(error = %error.without_url(), %endpoint, "otlp metrics export failed");
                        "error"
                    }
                };
                metrics::counter!("hubflow_otel_exports_total", "signal" => "metrics", "outcome" => outcome)
                    .increment(1);
                if last {
                    return;
                }
            }
        });
        Some(MetricsExport { stop, task })
    }

    /// Export once more (the final values) and stop.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(EXPORT_TIMEOUT, self.task).await;
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn attr(key: &str, value: &str) -> ProtoKeyValue {
    ProtoKeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// One sample line of the Prometheus text format.
#[derive(Debug, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample {
            name: series.to_string(),
            labels: Vec::new(),
            value,
        });
    };
    let body = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_string(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The Prometheus text exposition `text` as one OTLP metrics request:
/// counters become cumulative monotonic sums, gauges gauges, histograms
/// cumulative histograms with their bucket bounds (summaries are skipped:
/// the recorder renders none, every histogram has buckets).
pub fn to_otlp(
    text: &str,
    resource: &[(String, String)],
    start_ns: u64,
    now_ns: u64,
) -> ExportMetricsServiceRequest {
    // The text lists each family's samples right after its `# TYPE` line.
    let mut help: HashMap<&str, &str> = HashMap::new();
    let mut families: Vec<(&str, &str, Vec<Sample>)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                families.push((name, kind.trim(), Vec::new()));
            }
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = rest.split_once(' ') {
                help.insert(name, text);
            }
        } else if !line.starts_with('#')
            && let Some((family, _, samples)) = families.last_mut()
            && let Some(sample) = parse_sample(line)
            && sample
                .name
                .strip_prefix(*family)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('_'))
        {
            samples.push(sample);
        }
    }
    let point = |labels: &[(String, String)], value: f64| NumberDataPoint {
        attributes: labels.iter().map(|(k, v)| attr(k, v)).collect(),
        start_time_unix_nano: start_ns,
        time_unix_nano: now_ns,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let mut metrics = Vec::new();
    for (family, kind, family_samples) in &families {
        if family_samples.is_empty() {
            continue;
        }
        let data = match *kind {
            "counter" => metric::Data::Sum(Sum {
                data_points: family_samples
                    .iter()
                    .map(|s| point(&s.labels, s.value))
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            "gauge" => metric::Data::Gauge(Gauge {
                data_points: family_samples
                    .iter()
                    .map(|s| point(&s.labels, s.value))
                    .collect(),
            }),
            "histogram" => metric::Data::Histogram(Histogram {
                data_points: histogram_points(family, family_samples, start_ns, now_ns),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
            _ => continue,
        };
        metrics.push(Metric {
            name: family.to_string(),
            description: help.get(family).unwrap_or(&"").to_string(),
            data: Some(data),
            ..Default::default()
        });
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(ProtoResource {
                attributes: resource.iter().map(|(k, v)| attr(k, v)).collect(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "hubflow".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The `_bucket`, `_sum` and `_count` samples of one histogram family,
/// grouped by their labels (without `le`), as OTLP points.
fn histogram_points(
    family: &str,
    samples: &[Sample],
    start_ns: u64,
    now_ns: u64,
) -> Vec<HistogramDataPoint> {
    #[derive(Default)]
    struct Series {
        buckets: Vec<(f64, f64)>,
        sum: f64,
        count: f64,
    }
    let mut series: Vec<(Vec<(String, String)>, Series)> = Vec::new();
    for sample in samples {
        let suffix = &sample.name[family.len()..];
        let labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect();
        let at = match series.iter().position(|(l, _)| *l == labels) {
            Some(at) => at,
            None => {
                series.push((labels, Series::default()));
                series.len() - 1
            }
        };
        let entry = &mut series[at].1;
        match suffix {
            "_bucket" => {
                let le = sample
                    .labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .and_then(|(_, v)| match v.as_str() {
                        "+Inf" => Some(f64::INFINITY),
                        v => v.parse().ok(),
                    });
                if let Some(le) = le {
                    entry.buckets.push((le, sample.value));
                }
            }
            "_sum" => entry.sum = sample.value,
            "_count" => entry.count = sample.value,
            _ => {}
        }
    }
    series
        .into_iter()
        .map(|(labels, mut s)| {
            s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let explicit_bounds: Vec<f64> = s
                .buckets
                .iter()
                .map(|(le, _)| *le)
                .filter(|le| le.is_finite())
                .collect();
            // Prometheus buckets are cumulative; OTLP's are per bucket, plus
            // the overflow bucket above the last bound.
            let mut bucket_counts = Vec::with_capacity(explicit_bounds.len() + 1);
            let mut below = 0.0;
            for (_, cumulative) in s.buckets.iter().filter(|(le, _)| le.is_finite()) {
                bucket_counts.push((cumulative - below).max(0.0) as u64);
                below = *cumulative;
            }
            bucket_counts.push((s.count - below).max(0.0) as u64);
            HistogramDataPoint {
                attributes: labels.iter().map(|(k, v)| attr(k, v)).collect(),
                start_time_unix_nano: start_ns,
                time_unix_nano: now_ns,
                count: s.count as u64,
                sum: Some(s.sum),
                bucket_counts,
                explicit_bounds,
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn from(vars: &[(&str, &str)]) -> Result<Option<OtlpSettings>, OtelError> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OtlpSettings::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint_or_when_disabled() {
        assert_eq!(from(&[]), Ok(None));
        assert_eq!(from(&[("OTEL_SERVICE_NAME", "x")]), Ok(None));
        assert_eq!(
            from(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ]),
            Ok(None)
        );
    }

    #[test]
    fn the_base_endpoint_gets_signal_paths_and_signal_endpoints_win() {
        let s = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "https://ingest.example/otlp/metrics",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=s3cr%3Dt,x-tenant = ops",
            ),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=dev"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            s.traces_endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            s.metrics_endpoint.as_deref(),
            Some("https://ingest.example/otlp/metrics")
        );
        assert_eq!(
            s.headers,
            vec![
                ("api-key".to_string(), "s3cr=t".to_string()),
                ("x-tenant".to_string(), "ops".to_string())
            ]
        );
        assert_eq!(s.metric_interval, Duration::from_millis(1500));
        assert_eq!(s.resource_pairs()[0].1, "hubflow");
        assert!(
            s.resource_pairs()
                .contains(&("deployment.environment".to_string(), "dev".to_string()))
        );
        // Header values are secrets: Debug shows the names only.
        let debug = format!("{s:?}");
        assert!(
            debug.contains("api-key") && !debug.contains("s3cr"),
            "{debug}"
        );
    }

    #[test]
    fn bad_values_are_typed_errors() {
        assert_eq!(
            from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4318")]),
            Err(OtelError::BadEndpoint {
                var: "OTEL_EXPORTER_OTLP_ENDPOINT",
                value: "127.0.0.1:4318".into()
            })
        );
        assert_eq!(
            from(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://x/")]),
            Err(OtelError::BadEndpoint {
                var: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                value: "ftp://x/".into()
            })
        );
        assert_eq!(
            from(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:1"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b")
            ]),
            Err(OtelError::BadPair {
                var: "OTEL_EXPORTER_OTLP_HEADERS",
                index: 1
            })
        );
        assert_eq!(
            from(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:1"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "soon")
            ]),
            Err(OtelError::BadInterval {
                var: "OTEL_METRIC_EXPORT_INTERVAL",
                value: "soon".into()
            })
        );
        let message = OtelError::BadPair {
            var: "OTEL_EXPORTER_OTLP_HEADERS",
            index: 1,
        }
        .to_string();
        assert!(message.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{message}");
    }

    #[test]
    fn samples_parse_with_escaped_labels() {
        assert_eq!(
            parse_sample(r#"m{a="x\"y",b="p\\q"} 2.5"#),
            Some(Sample {
                name: "m".into(),
                labels: vec![("a".into(), "x\"y".into()), ("b".into(), "p\\q".into())],
                value: 2.5
            })
        );
        assert_eq!(parse_sample("m 3").unwrap().value, 3.0);
        assert_eq!(parse_sample("m{a=\"x\"} nope"), None);
    }

    #[test]
    fn the_prometheus_registry_becomes_otlp_sums_gauges_and_histograms() {
        let text = r#"# HELP hubflow_fetcher_records_total records published
# TYPE hubflow_fetcher_records_total counter
hubflow_fetcher_records_total{source="demo"} 1200
hubflow_fetcher_records_total{source="orders"} 7

# TYPE hubflow_writer_lag_events gauge
hubflow_writer_lag_events{partition="0"} 3

# TYPE hubflow_end_to_end_latency_seconds histogram
hubflow_end_to_end_latency_seconds_bucket{le="0.5"} 2
hubflow_end_to_end_latency_seconds_bucket{le="1"} 5
hubflow_end_to_end_latency_seconds_bucket{le="+Inf"} 6
hubflow_end_to_end_latency_seconds_sum 4.5
hubflow_end_to_end_latency_seconds_count 6
"#;
        let resource = [("service.name".to_string(), "hubflow".to_string())];
        let request = to_otlp(text, &resource, 10, 20);
        let scope = &request.resource_metrics[0].scope_metrics[0];
        let by_name: HashMap<&str, &Metric> =
            scope.metrics.iter().map(|m| (m.name.as_str(), m)).collect();
        assert_eq!(by_name.len(), 3);

        let counter = by_name["hubflow_fetcher_records_total"];
        assert_eq!(counter.description, "records published");
        let Some(metric::Data::Sum(sum)) = &counter.data else {
            panic!("{counter:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(sum.data_points.len(), 2);
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsDouble(1200.0))
        );
        assert_eq!(sum.data_points[0].attributes, vec![attr("source", "demo")]);
        assert_eq!(sum.data_points[0].start_time_unix_nano, 10);

        let Some(metric::Data::Gauge(gauge)) = &by_name["hubflow_writer_lag_events"].data else {
            panic!()
        };
        assert_eq!(
            gauge.data_points[0].value,
            Some(number_data_point::Value::AsDouble(3.0))
        );

        let Some(metric::Data::Histogram(h)) = &by_name["hubflow_end_to_end_latency_seconds"].data
        else {
            panic!()
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, vec![0.5, 1.0]);
        assert_eq!(p.bucket_counts, vec![2, 3, 1]);
        assert_eq!((p.count, p.sum), (6, Some(4.5)));
        assert!(p.attributes.is_empty());

        // It encodes and decodes as the collector's message.
        let bytes = request.encode_to_vec();
        assert_eq!(
            ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap(),
            request
        );
    }
}

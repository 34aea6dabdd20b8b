//! Logging and tracing: log lines on stderr (text or JSON), and, when an OTLP endpoint is given
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `--otlp`), every span exported over OTLP/HTTP (Jaeger listens
//! on 4318), flushed on shutdown.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("a global tracing subscriber is already installed")]
    AlreadySet,
}

/// Flushes and stops span export when dropped (or on `shutdown`).
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A tracer provider exporting to `endpoint` (the OTLP/HTTP base URL, e.g. `http://localhost:4318`).
/// Must be called inside a tokio runtime.
pub fn otlp_provider(endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces)
        .build()
        .map_err(|source| TelemetryError::Exporter { endpoint: endpoint.to_string(), source })?;
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(Resource::builder().with_service_name("rafter").build())
        .build())
}

/// Installs the global subscriber: log lines filtered by `RUST_LOG` (default `info`), plus span
/// export when `otlp` is given.
pub fn init(json: bool, otlp: Option<&str>) -> Result<TelemetryGuard, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() };
    let mut guard = TelemetryGuard::default();
    let otel = match otlp {
        Some(endpoint) => {
            let provider = otlp_provider(endpoint)?;
            // Rafter's own spans only: the HTTP stacks underneath would drown each trace.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("rafter"))
                .with_filter(tracing_subscriber::EnvFilter::new("warn,rafter_actors=info,rafter=info"));
            guard.provider = Some(provider);
            Some(layer)
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadySet)?;
    Ok(guard)
}

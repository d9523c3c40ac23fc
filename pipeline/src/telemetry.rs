//! OpenTelemetry tracing (G7): one trace per order across dispatch, status checks and the
//! sink, carried from stage to stage in W3C `traceparent` headers on the Kafka messages.
//!
//! Off unless an OTLP endpoint is configured by the standard variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, and
//! `OTEL_SDK_DISABLED` not `true`); off, no tracer exists, nothing is injected and the
//! cost is a header lookup per message. On, spans go to the endpoint over OTLP/HTTP
//! (protobuf) in batches; the service name comes from `OTEL_SERVICE_NAME` (default
//! `orderflow-<command>`). Spans carry the order id, never a PIN or a credential (G5).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[derive(Debug, thiserror::Error)]
#[error("cannot set up OpenTelemetry tracing ({0})")]
pub struct TelemetryError(String);

/// Whether the environment asks for traces.
pub fn enabled_by_env(env: impl Fn(&str) -> Option<String>) -> bool {
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let endpoint = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| env(k).is_some_and(|v| !v.trim().is_empty()));
    endpoint && !disabled
}

/// The tracer behind the `tracing` layer; flushes its last spans when dropped.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Drop for Tracing {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

static ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether traces are exported (an OTLP endpoint is configured): per-message spans are
/// only made then.
pub fn is_on() -> bool {
    ON.load(std::sync::atomic::Ordering::Relaxed)
}

/// The `tracing` layer that turns spans into OpenTelemetry spans.
pub type Layer<S> = tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>;

/// Builds the OTLP exporter and returns the layer to add to the subscriber, if the
/// environment asks for traces.
pub fn layer<S>(command: &str) -> Result<Option<(Layer<S>, Tracing)>, TelemetryError>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    if !enabled_by_env(|k| std::env::var(k).ok()) {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let service =
        std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| format!("orderflow-{command}"));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer("orderflow");
    ON.store(true, std::sync::atomic::Ordering::Relaxed);
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok(Some((layer, Tracing { provider })))
}

struct HeaderReader<'a, H: Headers>(&'a H);

impl<H: Headers> Extractor for HeaderReader<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(key))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

struct HeaderWriter(Vec<(String, String)>);

impl Injector for HeaderWriter {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// Makes the trace context in `headers` (a `traceparent` from the shop or an earlier
/// stage) the parent of `span`. Nothing happens when tracing is off or there is none.
pub fn continue_trace<H: Headers>(span: &tracing::Span, headers: Option<&H>) {
    let Some(headers) = headers else {
        return;
    };
    let propagator = TraceContextPropagator::new();
    let parent = propagator.extract(&HeaderReader(headers));
    use opentelemetry::trace::TraceContextExt;
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The trace id of `span` (when tracing is on), else the one in the message's
/// `traceparent`, so that log lines about an order name its trace either way.
pub fn trace_id<H: Headers>(span: &tracing::Span, headers: Option<&H>) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    let own = context.span().span_context().clone();
    if own.is_valid() {
        return Some(own.trace_id().to_string());
    }
    let header = HeaderReader(headers?).get("traceparent")?.to_owned();
    let id = header.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

/// Adds the current span's trace context (`traceparent`, `tracestate`) to `headers`, so
/// the next stage continues the order's trace. Nothing is added when tracing is off.
pub fn inject(headers: OwnedHeaders) -> OwnedHeaders {
    let context = tracing::Span::current().context();
    use opentelemetry::trace::TraceContextExt;
    if !context.span().span_context().is_valid() {
        return headers;
    }
    let mut writer = HeaderWriter(Vec::new());
    TraceContextPropagator::new().inject_context(&context, &mut writer);
    writer.0.iter().fold(headers, |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value.as_str()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_endpoint_turns_tracing_on() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(!enabled_by_env(env(&[])));
        assert!(enabled_by_env(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4318"
        )])));
        assert!(enabled_by_env(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://x:4318/v1/traces"
        )])));
        assert!(!enabled_by_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SDK_DISABLED", "true")
        ])));
    }

    #[test]
    fn without_a_tracer_nothing_is_injected() {
        let headers = inject(OwnedHeaders::new());
        assert_eq!(headers.count(), 0);
    }
}

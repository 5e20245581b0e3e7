//! The agent's Prometheus endpoint: every counter and gauge the agent records through the
//! `metrics` facade, in the text format at `http://<metrics.listen>/metrics` (any path
//! answers the same). Served by the exporter crate's own small HTTP listener, so the agent
//! links no web framework.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;

#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error(
        "cannot serve metrics on {addr}: {reason}; choose a free address for metrics.listen, or leave it out"
    )]
    Listen { addr: SocketAddr, reason: String },
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
}

/// Binds `addr`, installs the process-wide recorder and serves it on the current tokio
/// runtime until the process ends. Call it once, before the agent starts.
pub fn serve(addr: SocketAddr) -> Result<(), ExporterError> {
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(addr)
        .build()
        .map_err(|e| ExporterError::Listen {
            addr,
            reason: e.to_string(),
        })?;
    metrics::set_global_recorder(recorder).map_err(|e| ExporterError::Recorder(e.to_string()))?;
    tokio::spawn(async move {
        if exporter.await.is_err() {
            tracing::error!(%addr, "metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "metrics at /metrics");
    Ok(())
}

//! The log set-up of the agent's binary (also used by the server's): the `RUST_LOG` filter,
//! and a [`KnownNoise`] layer that leaves out messages libraries log as warnings or errors for
//! what is a normal event, each listed with the reason it is safe to leave out.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// A library's message about a normal event, logged at warning or error level.
#[derive(Debug, Clone, Copy)]
pub struct Noise {
    /// The module that logs it (the event's target), exactly.
    pub target: &'static str,
    /// Whether an event is this one, given its message followed by its other fields as
    /// ` name=value` (values in their `Debug` form), in the order the event gives them:
    /// `router-drop error=Recv(Disconnected)`.
    pub message: fn(&str) -> bool,
}

/// async-opcua's client warns `Transport disconnected: Good` whenever a session's channel
/// closes, also when the agent closed the session itself (at a stop, or to start a new one).
/// A channel lost to a fault carries a bad status code and still shows; a channel the server
/// closed cleanly is reported by the agent itself ("connection lost; the client reconnects").
pub const OPCUA_CLOSED_CLEANLY: Noise = Noise {
    target: "opcua_client::session::event_loop",
    message: |m| m.ends_with("Transport disconnected: Good"),
};

/// Installs the global subscriber: human-readable lines on standard error, filtered by
/// `RUST_LOG` (or `default_filter` when it is unset or invalid), without `noise`.
pub fn init(default_filter: &str, noise: Vec<Noise>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .finish()
        .with(KnownNoise(noise))
        .init();
}

/// A layer that disables the events matching any of its [`Noise`] entries, so that no other
/// layer records them.
#[derive(Debug, Clone)]
pub struct KnownNoise(pub Vec<Noise>);

impl KnownNoise {
    /// Whether an event of `target` with `message` is one of the known ones.
    pub fn is_noise(&self, target: &str, message: &str) -> bool {
        self.0
            .iter()
            .any(|n| n.target == target && (n.message)(message))
    }
}

impl<S: Subscriber> Layer<S> for KnownNoise {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let target = event.metadata().target();
        if !self.0.iter().any(|n| n.target == target) {
            return true;
        }
        !self.is_noise(target, &Line::of(event))
    }
}

/// An event as one line: its message, then each other field as ` name=value` (values in their
/// `Debug` form), in the order the event gives them.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Line {
    fn of(event: &Event<'_>) -> String {
        let mut line = Line::default();
        event.record(&mut line);
        line.message + &line.fields
    }
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let _ = if field.name() == "message" {
            write!(self.message, "{value:?}")
        } else {
            write!(self.fields, " {}={value:?}", field.name())
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Records the messages of the events that reach it.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            self.0.lock().unwrap().push(Line::of(event));
        }
    }

    #[test]
    fn only_the_listed_message_of_the_listed_target_is_left_out() {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(seen.clone())
            .with(KnownNoise(vec![OPCUA_CLOSED_CLEANLY]));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "opcua_client::session::event_loop", "session:1 Transport disconnected: Good");
            tracing::warn!(target: "opcua_client::session::event_loop", "session:1 Transport disconnected: BadConnectionClosed");
            tracing::warn!(target: "opcua_client::session::other", "session:1 Transport disconnected: Good");
            tracing::warn!("Transport disconnected: Good");
            tracing::error!(target: "opcua_client::session::event_loop", code = 3, "Transport disconnected: Good");
        });
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                "session:1 Transport disconnected: BadConnectionClosed",
                "session:1 Transport disconnected: Good",
                "Transport disconnected: Good",
                "Transport disconnected: Good code=3",
            ]
        );
    }
}

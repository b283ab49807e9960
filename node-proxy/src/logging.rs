//! Logging with `tracing`: the proxy's own log (text or JSON, level changeable at
//! run time through the admin `/logging` endpoint) and the access log, whose lines
//! (target `access_log`) are written raw to the path each log names.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{EnvFilter, FilterFn};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

pub const ACCESS_LOG_TARGET: &str = "access_log";

/// Changes the log level while running.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl LogControl {
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(level)
            .map_err(|e| format!("invalid level {level:?}: {e} (use trace, debug, info, warn, error, or a filter like node_proxy=debug)"))?;
        self.handle.reload(filter).map_err(|e| e.to_string())?;
        if let Ok(mut c) = self.current.lock() {
            *c = level.to_owned();
        }
        Ok(())
    }

    pub fn level(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Installs the global subscriber. `json`: the proxy log as JSON lines.
pub fn init(level: &str, json: bool) -> Result<LogControl, String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid --log-level {level:?}: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let not_access_log = FilterFn::new(|m| m.target() != ACCESS_LOG_TARGET);
    let fmt = if json {
        tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(not_access_log).boxed()
    } else {
        use std::io::IsTerminal;
        tracing_subscriber::fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).with_filter(not_access_log).boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(AccessLogWriter::default().with_filter(FilterFn::new(|m| m.target() == ACCESS_LOG_TARGET)))
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(LogControl { handle, current: Mutex::new(level.to_owned()) })
}

/// Writes `access_log` events' messages, unadorned, to their `path`.
#[derive(Default)]
struct AccessLogWriter {
    files: Mutex<HashMap<String, std::fs::File>>,
}

#[derive(Default)]
struct LineVisitor {
    message: String,
    path: String,
}

impl Visit for LineVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "path" => self.path = format!("{value:?}"),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "path" => self.path = value.to_owned(),
            _ => {}
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for AccessLogWriter {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut v = LineVisitor::default();
        event.record(&mut v);
        v.message.push('\n');
        match v.path.as_str() {
            "" | "/dev/stdout" => {
                let _ = std::io::stdout().lock().write_all(v.message.as_bytes());
            }
            "/dev/stderr" => {
                let _ = std::io::stderr().lock().write_all(v.message.as_bytes());
            }
            path => {
                let Ok(mut files) = self.files.lock() else { return };
                if !files.contains_key(path) {
                    match OpenOptions::new().create(true).append(true).open(path) {
                        Ok(f) => {
                            files.insert(path.to_owned(), f);
                        }
                        Err(e) => {
                            drop(files);
                            tracing::error!("cannot open access log {path}: {e}: check the directory exists and is writable");
                            return;
                        }
                    }
                }
                if let Some(f) = files.get_mut(path) {
                    let _ = f.write_all(v.message.as_bytes());
                }
            }
        }
    }
}

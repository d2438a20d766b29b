//! natd's log: `tracing` events on stderr, one line each, `natd: ` first and
//! the level spelled out where it is not plain information (`natd: warning:
//! ...`), so the lines read the same to a person and to a grep. The level is
//! `log_level` (`--log-level`), `info` unless set; it can change while natd
//! runs.

use std::fmt;

use anyhow::{Result, anyhow};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter, Registry,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt as _,
    registry::LookupSpan,
    reload,
    util::SubscriberInitExt as _,
};

/// Changes the level of the log `init` installed.
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogLevel {
    pub fn set(&self, level: &str) -> Result<()> {
        self.handle.reload(EnvFilter::new(level)).map_err(|e| anyhow!("changing the log level to {level}: {e}"))
    }
}

/// Installs the log at `level` (one of `config::LOG_LEVELS`). `None` when a log is
/// installed already (a second natd in one process: the tests).
pub fn init(level: &str) -> Option<LogLevel> {
    let (filter, handle) = reload::Layer::new(EnvFilter::new(level));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).event_format(Line);
    tracing_subscriber::registry().with(filter).with(lines).try_init().ok()?;
    Some(LogLevel { handle })
}

/// `natd: [level: ]message key=value...`
struct Line;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let tag = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            Level::INFO => "",
            Level::DEBUG => "debug: ",
            Level::TRACE => "trace: ",
        };
        write!(writer, "natd: {tag}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

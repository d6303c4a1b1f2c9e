//! Progress of long operations on stderr: indicatif bars with rate and ETA
//! when stderr is a terminal, nothing (the callers print plain lines, one
//! per change, for logs and pipes) when it is not.
//!
//! Used by `hubflow ctl replay` and `ctl transform backfill` (blobs of each
//! replay job), `hubflow query` (curated files mirrored from Azure) and
//! `hubflow run` (the backlog being worked off, see [`backlog`]).

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// A backlog this many events over what is curated gets a bar in `run`.
pub const BACKLOG_BAR_EVENTS: u64 = 10_000;

/// Whether bars are drawn: stderr is a terminal.
pub fn enabled() -> bool {
    std::io::stderr().is_terminal()
}

fn template(unit: &str) -> String {
    format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} · {{rate}} · eta {{eta}} {{wide_msg}}")
}

fn style(unit: &str) -> ProgressStyle {
    ProgressStyle::with_template(&template(unit))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1}/s", state.per_sec());
            },
        )
        .progress_chars("=> ")
}

/// A bar of `len` `unit`s named `prefix` on stderr; `None` when stderr is
/// not a terminal.
pub fn bar(len: u64, unit: &str, prefix: impl Into<String>) -> Option<ProgressBar> {
    enabled().then(|| new_bar(len, unit, prefix))
}

fn new_bar(len: u64, unit: &str, prefix: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(style(unit));
    bar.set_prefix(prefix.into());
    bar
}

/// Room for several bars at once (one line each, added with [`add`]);
/// `None` when stderr is not a terminal.
pub fn multi() -> Option<MultiProgress> {
    enabled().then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// A bar in `multi` (added once its length is known, so no empty bar is
/// ever drawn).
pub fn add(multi: &MultiProgress, len: u64, unit: &str, prefix: impl Into<String>) -> ProgressBar {
    multi.add(new_bar(len, unit, prefix))
}

/// The backlog `run` shows a bar for: `(curated, in hub)` when the hub
/// holds more than [`BACKLOG_BAR_EVENTS`] events not yet curated.
pub fn backlog(in_hub: u64, curated: u64) -> Option<(u64, u64)> {
    (in_hub.saturating_sub(curated) > BACKLOG_BAR_EVENTS).then_some((curated, in_hub))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_large_backlog_gets_a_bar() {
        assert_eq!(backlog(5_000, 0), None);
        assert_eq!(backlog(50_000, 40_000), None);
        assert_eq!(backlog(50_000, 10_000), Some((10_000, 50_000)));
        // A checkpoint ahead of a shrinking count is no backlog.
        assert_eq!(backlog(10, 20), None);
    }

    #[test]
    fn the_bar_template_parses() {
        assert!(ProgressStyle::with_template(&template("blobs")).is_ok());
    }
}

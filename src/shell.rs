//! `hubflow query` run without SQL: an interactive session over the curated
//! tables, and how the CLI shows an error.
//!
//! A statement may span lines and ends with `;`. Each one runs on the
//! curated data as it is at that moment (new files and sources appear
//! between statements). Meta-commands, at the start of a statement:
//! `\d` lists the tables, `\d <table>` describes one, `\s` shows this
//! session's history, `\?` the help, `\q` quits (so does end of input).
//! A failed statement prints its error once and the session goes on.
//! The prompt is shown only when input is a terminal, so a script can be
//! piped in.

use std::io::{BufRead, Write};

use crate::config::CuratedLocation;
use crate::query::{self, OutputFormat};

/// An error as the user reads it: the outermost message and, when it says
/// something the outer one does not, the root cause, each once (errors
/// often repeat their source's text, so `{:#}` would print the same
/// message several times).
pub fn render_error(error: &anyhow::Error) -> String {
    let outer = error.to_string();
    let mut out = format!("error: {outer}");
    if let Some(root) = error
        .chain()
        .map(|c| c.to_string())
        .rfind(|t| !t.is_empty() && !said(&outer, t))
    {
        out.push_str("\n  caused by: ");
        out.push_str(&root);
    }
    out
}

/// Whether `outer` already says `text`: contains it, or contains what it
/// says after a leading label (`sql parser error: Expected …` is said by
/// `SQL error: ParserError("Expected …")`).
fn said(outer: &str, text: &str) -> bool {
    if outer.contains(text) {
        return true;
    }
    // Past a label, only a phrase long enough to be the same message.
    let mut rest = text;
    while let Some((_, after)) = rest.split_once(": ") {
        if after.len() >= 12 && outer.contains(after) {
            return true;
        }
        rest = after;
    }
    false
}

const HELP: &str = "\
statements end with ; and may span lines (tables: one per source)
  \\d           list the tables
  \\d <table>   describe a table
  \\s           this session's history
  \\?           this help
  \\q           quit";

/// Where a session writes: results to `out`, prompts and errors to `err`.
pub struct Session<'a, O: Write, E: Write> {
    pub location: &'a CuratedLocation,
    pub format: OutputFormat,
    pub out: O,
    pub err: E,
    /// Show prompts (input is a terminal).
    pub prompt: bool,
}

impl<O: Write, E: Write> Session<'_, O, E> {
    /// Read statements from `input` until `\q` or its end; the statements
    /// run, in order.
    pub async fn run(&mut self, input: impl BufRead) -> std::io::Result<Vec<String>> {
        let mut history = Vec::new();
        let mut statement = String::new();
        let mut lines = input.lines();
        loop {
            if self.prompt {
                let prompt = if statement.is_empty() {
                    "hubflow> "
                } else {
                    "      -> "
                };
                write!(self.err, "{prompt}")?;
                self.err.flush()?;
            }
            let Some(line) = lines.next().transpose()? else {
                break;
            };
            let trimmed = line.trim();
            if statement.is_empty() {
                if trimmed.is_empty() {
                    continue;
                }
                if let Some(command) = trimmed.strip_prefix('\\') {
                    if !self.meta(command.trim(), &history).await? {
                        break;
                    }
                    continue;
                }
            }
            if !statement.is_empty() {
                statement.push('\n');
            }
            statement.push_str(&line);
            if let Some(sql) = statement.trim_end().strip_suffix(';') {
                let sql = sql.trim().to_string();
                statement.clear();
                if !sql.is_empty() {
                    self.execute(&sql).await?;
                    history.push(sql);
                }
            }
        }
        if !statement.trim().is_empty() {
            writeln!(
                self.err,
                "error: input ended inside a statement (no closing ;)"
            )?;
        }
        Ok(history)
    }

    async fn execute(&mut self, sql: &str) -> std::io::Result<()> {
        match query::curated(self.location, sql).await {
            Ok(batches) => match query::format_batches(&batches, self.format) {
                Ok(text) => writeln!(self.out, "{text}"),
                Err(error) => writeln!(self.err, "{}", render_error(&error.into())),
            },
            Err(error) => writeln!(self.err, "{}", render_error(&error)),
        }
    }

    /// One meta-command; `false` to quit.
    async fn meta(&mut self, command: &str, history: &[String]) -> std::io::Result<bool> {
        let (name, argument) = command
            .split_once(char::is_whitespace)
            .map_or((command, ""), |(n, a)| (n, a.trim()));
        match (name, argument) {
            ("q", _) => return Ok(false),
            ("?", _) => writeln!(self.out, "{HELP}")?,
            ("s", _) => {
                for (i, sql) in history.iter().enumerate() {
                    writeln!(self.out, "{:>4}  {sql};", i + 1)?;
                }
            }
            ("d", "") => match query::curated_tables(self.location).await {
                Ok(tables) if tables.is_empty() => writeln!(self.out, "no tables yet")?,
                Ok(tables) => {
                    for (table, schema) in tables {
                        writeln!(self.out, "{table} ({} columns)", schema.fields().len())?;
                    }
                }
                Err(error) => writeln!(self.err, "{}", render_error(&error))?,
            },
            ("d", table) => match query::curated_tables(self.location).await {
                Ok(tables) => match tables.iter().find(|(t, _)| t == table) {
                    Some((_, schema)) => {
                        for field in schema.fields() {
                            let null = if field.is_nullable() { "" } else { " not null" };
                            writeln!(self.out, "{:<28} {}{null}", field.name(), field.data_type())?;
                        }
                    }
                    None => {
                        let known: Vec<&str> = tables.iter().map(|(t, _)| t.as_str()).collect();
                        writeln!(
                            self.err,
                            "error: no table {table:?} (tables: {})",
                            known.join(", ")
                        )?;
                    }
                },
                Err(error) => writeln!(self.err, "{}", render_error(&error))?,
            },
            _ => writeln!(
                self.err,
                "error: unknown command \\{command} (\\? lists them)"
            )?,
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_cause_that_repeats_the_outer_message_is_left_out() {
        #[derive(Debug, thiserror::Error)]
        #[error("sql: SQL error: ParserError(\"Expected: an SQL statement, found: X\")")]
        struct Outer(#[source] Root);
        #[derive(Debug, thiserror::Error)]
        #[error("sql parser error: Expected: an SQL statement, found: X")]
        struct Root;
        let error = anyhow::Error::new(Outer(Root));
        assert_eq!(
            render_error(&error).lines().count(),
            1,
            "{}",
            render_error(&error)
        );
        let error = anyhow::anyhow!("disk full").context("writing out.parquet");
        assert_eq!(
            render_error(&error),
            "error: writing out.parquet\n  caused by: disk full"
        );
    }
}

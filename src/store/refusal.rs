//! Rows PostgreSQL refuses for their content, found and left out so that the rest are written.
//!
//! In: a batch of rows and a function that writes a slice of them in one statement. Out: the
//! batch written, but for the rows the server refused for what they hold (a data exception, a
//! program limit such as an index row too large, an integrity violation), each returned with
//! the reason; or the first error that says nothing about the rows (the connection, a timeout,
//! the server shutting down or out of resources), for the caller to retry the whole batch.
//! A refused batch is split in halves until the refused rows are alone: `k` bad rows among
//! `n` cost about `2·k·log2(n)` statements, and good rows are never dropped with them.
//!
//! Also the escaping of refused values for logs: control characters escaped, long values cut.

use std::future::Future;
use std::ops::Range;

/// What a refused row's error says, escaped and cut for a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// SQLSTATE, when the server sent one.
    pub code: Option<String>,
    /// The server's message, escaped, at most [`MAX_MESSAGE_CHARS`] characters.
    pub message: String,
}

/// Longest server message kept for a log (messages may quote parts of a row).
const MAX_MESSAGE_CHARS: usize = 200;

/// Whether `error` is PostgreSQL refusing the statement for the values it carries: then the
/// same rows will be refused again, and only splitting the batch helps. SQLSTATE classes 21
/// (cardinality: one row twice), 22 (data exception: a NUL byte, a value out of range), 23
/// (integrity constraint) and 54 (program limit: an index row too large); and a value the
/// client could not encode. Everything else (connection, timeouts, `53` resources, `57`
/// operator intervention, `08` connection, `40` rollbacks, `42` schema and permission
/// problems) is no fault of the rows: retried as a whole.
pub fn refuses_content(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| matches!(code.get(..2), Some("21" | "22" | "23" | "54"))),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// The loggable part of a refusal error.
pub fn refusal(error: &sqlx::Error) -> Refusal {
    match error {
        sqlx::Error::Database(db) => Refusal {
            code: db.code().map(|c| escaped(&c, 8)),
            message: escaped(db.message(), MAX_MESSAGE_CHARS),
        },
        other => Refusal {
            code: None,
            message: escaped(&other.to_string(), MAX_MESSAGE_CHARS),
        },
    }
}

/// `text` with control characters, quotes and backslashes escaped (as Rust's `{:?}` does),
/// cut after `max_chars` characters with a note of its full length.
pub fn escaped(text: &str, max_chars: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max_chars)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(max_chars).is_some() {
        out.push_str(&format!("… ({} bytes)", text.len()));
    }
    out
}

/// Writes rows `0..len` with `write` (one statement per call, given the range of rows it
/// writes), splitting a refused range in halves until the refused rows are alone. Returns the
/// index of each refused row with the reason, or the first error that is not a refusal of
/// content (see [`refuses_content`]).
pub async fn write_splitting<F, Fut>(
    len: usize,
    write: F,
) -> Result<Vec<(usize, sqlx::Error)>, sqlx::Error>
where
    F: Fn(Range<usize>) -> Fut,
    Fut: Future<Output = Result<(), sqlx::Error>>,
{
    let mut refused = Vec::new();
    let mut todo: Vec<Range<usize>> = Vec::new();
    todo.push(0..len);
    while let Some(range) = todo.pop() {
        if range.is_empty() {
            continue;
        }
        match write(range.clone()).await {
            Ok(()) => {}
            Err(e) if refuses_content(&e) => {
                if range.len() == 1 {
                    refused.push((range.start, e));
                } else {
                    let middle = range.start + range.len() / 2;
                    // The first half first: pushed last.
                    todo.push(middle..range.end);
                    todo.push(range.start..middle);
                }
            }
            Err(e) => return Err(e),
        }
    }
    refused.sort_by_key(|(index, _)| *index);
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_shows_control_characters_and_cuts_long_values() {
        assert_eq!(escaped("BTC-USD", 64), "BTC-USD");
        assert_eq!(escaped("A\0B\r\n\u{1b}", 64), "A\\0B\\r\\n\\u{1b}");
        let long = "X".repeat(5000);
        assert_eq!(escaped(&long, 4), "XXXX… (5000 bytes)");
    }

    #[tokio::test]
    async fn splitting_finds_the_refused_rows_and_writes_the_rest() {
        use std::sync::Mutex;
        let written = Mutex::new(Vec::new());
        let statements = Mutex::new(0);
        let rows: Vec<u32> = (0..100).collect();
        let refused = write_splitting(rows.len(), |range| {
            let part = &rows[range];
            *statements.lock().expect("lock") += 1;
            let bad = part.iter().any(|r| *r == 17 || *r == 80);
            if !bad {
                written.lock().expect("lock").extend_from_slice(part);
            }
            async move {
                if bad {
                    Err(sqlx::Error::Encode("a value PostgreSQL refuses".into()))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .expect("no error beyond the refusals");
        let indexes: Vec<usize> = refused.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, vec![17, 80]);
        let mut written = written.into_inner().expect("lock");
        written.sort_unstable();
        assert_eq!(written.len(), 98);
        assert!(!written.contains(&17) && !written.contains(&80));
        let statements = statements.into_inner().expect("lock");
        assert!(statements <= 30, "{statements} statements");
    }

    #[tokio::test]
    async fn an_error_that_is_no_refusal_stops_the_split_for_a_retry() {
        let result = write_splitting(3, |_range| async {
            Err::<(), _>(sqlx::Error::PoolTimedOut)
        })
        .await;
        assert!(matches!(result, Err(sqlx::Error::PoolTimedOut)));
        assert!(!refuses_content(&sqlx::Error::PoolTimedOut));
        assert!(!refuses_content(&sqlx::Error::Io(std::io::Error::other(
            "connection reset"
        ))));
    }
}

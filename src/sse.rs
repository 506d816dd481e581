//! The one place every server-sent event of every stream becomes bytes.
//!
//! In: a Datastar event (`/stream`'s candles, the board's rows and health, the chart, the
//! heartbeat, development reloads). Out: its `text/event-stream` bytes, with no control
//! character in any field but the line ends the format itself writes.
//!
//! Why: an SSE parser ends a line at CR, at LF and at CRLF (Datastar's does), so a lone CR in
//! text from outside (a name in the products list, an id from NATS) would end its `data:`
//! line and let the rest write fields of its own (`retry:`, `event:`, `data: signals`). The
//! Datastar crate splits element HTML at LF into `data: elements` lines, but it keeps a lone
//! CR inside a line. Here every control character left in the event's data lines or id (CR,
//! LF, NUL, the other C0 and C1 codes, DEL; not TAB) becomes a numeric character reference
//! (`&#13;`), which means the same character in HTML text and attributes, where such text
//! lands. JSON (signals) never holds a raw control character. Each one escaped is counted in
//! [`CONTROL_CHARS_ESCAPED`]: a count above zero means some text from outside held one.

use std::fmt::Write as _;

use bytes::Bytes;
use datastar::DatastarEvent;

/// Counter of the control characters escaped in events.
pub use crate::telemetry::catalog::CONTROL_CHARS_ESCAPED;

fn is_unsafe(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// `line` with each unsafe character as `&#N;`; the count of them added to `escaped`.
fn escape_line(line: &mut String, escaped: &mut u64) {
    if !line.contains(is_unsafe) {
        return;
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if is_unsafe(c) {
            *escaped += 1;
            // Writing to a String cannot fail.
            let _ = write!(out, "&#{};", u32::from(c));
        } else {
            out.push(c);
        }
    }
    *line = out;
}

/// Renders `event` as it goes on the wire, control characters escaped.
pub fn render(mut event: DatastarEvent) -> Bytes {
    let mut escaped = 0u64;
    for line in &mut event.data {
        escape_line(line, &mut escaped);
    }
    if let Some(id) = &mut event.id {
        escape_line(id, &mut escaped);
    }
    if escaped > 0 {
        metrics::counter!(CONTROL_CHARS_ESCAPED).increment(escaped);
    }
    Bytes::from(event.to_string())
}

#[cfg(test)]
mod tests {
    use datastar::prelude::{PatchElements, PatchSignals};

    use super::*;

    /// Every line of an SSE body as Datastar's parser splits them: at CR, LF or CRLF.
    fn sse_lines(bytes: &[u8]) -> Vec<String> {
        let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
        text.replace("\r\n", "\n")
            .split(['\r', '\n'])
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_carriage_return_in_outside_text_cannot_write_fields() {
        let hostile = "<td>BTC\rretry: 0\revent: datastar-patch-signals\rdata: signals {\"x\":1}\u{0}\u{7f}\u{85}</td>";
        let bytes = render(PatchElements::new(hostile).into_datastar_event());
        assert!(
            !bytes.iter().any(|&b| b != b'\n' && (b < 0x20 || b == 0x7f)),
            "{bytes:?}"
        );
        let lines = sse_lines(&bytes);
        assert_eq!(lines[0], "event: datastar-patch-elements");
        for line in &lines[1..] {
            assert!(
                line.is_empty() || line.starts_with("data: elements "),
                "{line:?}"
            );
        }
        let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
        assert!(text.contains("BTC&#13;retry: 0&#13;event"), "{text}");
        assert!(text.contains("&#0;&#127;&#133;"), "{text}");
    }

    #[test]
    fn line_feeds_stay_inside_data_lines_and_plain_events_are_unchanged() {
        let bytes = render(PatchElements::new("<a>1</a>\n<b>2</b>").into_datastar_event());
        assert_eq!(
            &bytes[..],
            b"event: datastar-patch-elements\ndata: elements <a>1</a>\ndata: elements <b>2</b>\n\n"
        );
        let signals = render(PatchSignals::new(r#"{"_link":"live"}"#).into_datastar_event());
        assert!(signals.ends_with(b"data: signals {\"_link\":\"live\"}\n\n"));
    }
}

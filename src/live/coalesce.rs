//! Messages that wait together are coalesced before they are read whole: under load the NATS
//! loop takes every message the subscription holds at once, and per series and bucket (the
//! subject and the message's `timestamp`) only the one of the highest version is parsed and
//! applied. The others would change nothing a client sees after it: an update of a series'
//! bucket replaces the older versions of that bucket, and different buckets (a completion of
//! the last minute, the first update of the next) stay apart.
//!
//! In: the messages taken at once, in arrival order. Out: groups of message indices, one per
//! (subject, bucket), ordered by the arrival of their newest message; within a group the
//! candidates by version, newest first (the next one is read when the newest does not
//! parse, so a bad message costs itself only). A message whose bucket and version cannot be
//! peeked at is a group of its own: reading it whole counts and logs it. The full read
//! refuses a message whose `timestamp` or `version` disagrees with its bucket
//! ([`crate::bus::CandleMessage::parse`]), so a message cannot win its group on fields it
//! does not mean.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;

use crate::model::Version;

/// The two fields coalescing needs, read without parsing the rest.
#[derive(Deserialize)]
struct Peek<'a> {
    timestamp: i64,
    /// Hex of fixed width ([`crate::model::Version::to_bytes`]): strings compare as versions.
    #[serde(borrow)]
    version: Cow<'a, str>,
}

/// A group being gathered: the arrival index of its last message, and its candidates'
/// versions with their indices.
type Gathering<'m> = (usize, Vec<(Cow<'m, str>, usize)>);

/// The groups of `messages` (subject, payload), as the module doc says.
pub(super) fn groups<'m>(messages: impl Iterator<Item = (&'m str, &'m [u8])>) -> Vec<Vec<usize>> {
    // Per key, the group's position in `out` and its candidates' versions.
    let mut keys: HashMap<(&str, i64), usize> = HashMap::new();
    let mut out: Vec<Gathering<'_>> = Vec::new();
    for (index, (subject, payload)) in messages.enumerate() {
        // A version of another width cannot be compared as text: the message is read alone
        // (and refused there).
        let peek = serde_json::from_slice::<Peek<'_>>(payload)
            .ok()
            .filter(|p| p.version.len() == 2 * Version::BYTES);
        let Some(peek) = peek else {
            out.push((index, vec![(Cow::Borrowed(""), index)]));
            continue;
        };
        match keys.get(&(subject, peek.timestamp)) {
            Some(&at) => {
                let group = &mut out[at];
                group.0 = index;
                group.1.push((peek.version, index));
            }
            None => {
                keys.insert((subject, peek.timestamp), out.len());
                out.push((index, vec![(peek.version, index)]));
            }
        }
    }
    // By the arrival of each group's newest message: the order the last of them was sent in.
    out.sort_by_key(|(last, _)| *last);
    out.into_iter()
        .map(|(_, mut candidates)| {
            // Newest version first; of equal versions the later arrival.
            candidates.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
            candidates.into_iter().map(|(_, index)| index).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message with the version `version` padded to its width.
    fn message(timestamp: i64, version: &str) -> Vec<u8> {
        let version = format!("{version:0>58}");
        format!(r#"{{"schema":1,"timestamp":{timestamp},"open":"1","version":"{version}"}}"#)
            .into_bytes()
    }

    #[test]
    fn the_newest_version_of_each_bucket_leads_its_group_in_the_order_of_arrival() {
        let a = "candles.coinbase.BTC-USD.ONE_MINUTE";
        let b = "candles.coinbase.ETH-USD.ONE_MINUTE";
        let payloads = [
            (a, message(60, "0002")),                              // 0
            (b, message(60, "0005")),                              // 1
            (a, message(60, "0003")),                              // 2: newer than 0
            (a, message(120, "0001")),                             // 3: the next bucket stays apart
            (a, message(60, "0001")), // 4: older, arriving late (another producer)
            (b, b"not json".to_vec()), // 5: unreadable, alone
            (b, br#"{"timestamp":60,"version":"ffff"}"#.to_vec()), // 6: too short, alone
        ];
        let groups = groups(payloads.iter().map(|(s, p)| (*s, p.as_slice())));
        assert_eq!(
            groups,
            vec![vec![1], vec![3], vec![2, 0, 4], vec![5], vec![6]]
        );
    }

    #[test]
    fn one_message_is_one_group() {
        let payload = message(60, "0001");
        let groups = groups(std::iter::once(("candles.x", payload.as_slice())));
        assert_eq!(groups, vec![vec![0]]);
    }
}

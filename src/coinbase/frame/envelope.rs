//! A frame's envelope, read in one pass: `channel`, `type`, `message`, `timestamp`,
//! `sequence_num` and the `events`, parsed straight into the channel's event type when the
//! channel came first (as Coinbase sends it).
//!
//! In: the frame's JSON text. Out: a [`RawFrame`] borrowing from it.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::body::{RawCandlesEvent, RawHeartbeatEvent, RawSubscriptionsEvent};
use super::trades::RawTradesEvent;

/// A frame's envelope. When `channel` comes before `events` (as Coinbase sends them), the
/// events are parsed straight into the channel's type in the same pass; otherwise they are
/// kept raw and parsed once the channel is known.
#[derive(Default)]
pub(super) struct RawFrame<'a> {
    pub(super) channel: Option<Cow<'a, str>>,
    pub(super) kind: Option<Cow<'a, str>>,
    pub(super) message: Option<Cow<'a, str>>,
    pub(super) timestamp: Option<Cow<'a, str>>,
    pub(super) sequence_num: Option<u64>,
    pub(super) events: Option<RawEvents<'a>>,
}

pub(super) enum RawEvents<'a> {
    Trades(Vec<RawTradesEvent<'a>>),
    Candles(Vec<RawCandlesEvent<'a>>),
    Heartbeats(Vec<RawHeartbeatEvent<'a>>),
    Subscriptions(Vec<RawSubscriptionsEvent>),
    Skipped,
    Raw(&'a RawValue),
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Channel,
    Type,
    Message,
    Timestamp,
    SequenceNum,
    Events,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> Deserialize<'de> for RawFrame<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FrameVisitor;

        impl<'de> serde::de::Visitor<'de> for FrameVisitor {
            type Value = RawFrame<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a Coinbase frame object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut frame = RawFrame::default();
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Channel => {
                            frame.channel = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0);
                        }
                        Field::Type => {
                            frame.kind = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0)
                        }
                        Field::Message => {
                            frame.message = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0);
                        }
                        Field::Timestamp => {
                            frame.timestamp = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0);
                        }
                        Field::SequenceNum => frame.sequence_num = map.next_value()?,
                        Field::Events => {
                            frame.events = Some(match frame.channel.as_deref() {
                                Some("market_trades") => RawEvents::Trades(map.next_value()?),
                                Some("candles") => RawEvents::Candles(map.next_value()?),
                                Some("heartbeats") => RawEvents::Heartbeats(map.next_value()?),
                                Some("subscriptions") => {
                                    RawEvents::Subscriptions(map.next_value()?)
                                }
                                Some(_) => {
                                    map.next_value::<serde::de::IgnoredAny>()?;
                                    RawEvents::Skipped
                                }
                                None => RawEvents::Raw(map.next_value()?),
                            });
                        }
                        Field::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(frame)
            }
        }

        deserializer.deserialize_map(FrameVisitor)
    }
}

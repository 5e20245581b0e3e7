//! The edge -> ingest wire format: one MQTT message carries one `Batch`.
//!
//! Layout of a message: the 4-byte magic `MPRB`, one version byte (currently 1), then the batch
//! encoded with postcard (varint integers, little-endian floats). A batch names each tag once
//! in `tags` and its points refer to tags by index, so a batch of many readings of few tags
//! stays small and decodes without one allocation per reading.
//!
//! Every gateway numbers its batches with a strictly increasing `seq`; ingest uses
//! (tenant, gateway, seq) to recognise a redelivered batch.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{GatewayId, Quality, Reading, TagName, Timestamp};

pub const MAGIC: &[u8; 4] = b"MPRB";
pub const VERSION: u8 = 1;
/// Largest encoded message ingest accepts, and edge agents produce.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Most points in one batch.
pub const MAX_POINTS: usize = 50_000;
/// Most distinct tags in one batch.
pub const MAX_TAGS: usize = 10_000;

/// One value of the batch's tag number `tag`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub tag: u32,
    pub ts: Timestamp,
    pub value: f64,
    pub quality: Quality,
}

/// A gateway's numbered batch of readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub gateway: GatewayId,
    pub seq: u64,
    pub tags: Vec<TagName>,
    pub points: Vec<Point>,
}

/// Why a message is not a valid batch. Each reason is stable text stored with a dead letter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("message is {0} bytes, shorter than the 5-byte header")]
    TooShort(usize),
    #[error("message is {len} bytes; the limit is {MAX_MESSAGE_BYTES}")]
    TooLarge { len: usize },
    #[error("message does not start with the MPRB magic; it was not written by an edge agent")]
    BadMagic,
    #[error("wire version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u8),
    #[error("batch body ends before its last field: the message was cut short")]
    CutShort,
    #[error("batch body is malformed: {0}")]
    Malformed(String),
    #[error("{trailing} bytes follow the batch body")]
    TrailingBytes { trailing: usize },
    #[error("batch has {count} {what}; the limit is {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("point {index} refers to tag number {tag}, but the batch names {tags} tags")]
    TagOutOfRange { index: usize, tag: u32, tags: usize },
    #[error("point {index} has the non-finite value {value}")]
    NonFinite { index: usize, value: f64 },
}

impl WireError {
    /// A short machine-readable reason, used as a dead-letter category and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::TooShort(_) | WireError::CutShort => "truncated",
            WireError::TooLarge { .. } => "oversized",
            WireError::BadMagic => "bad_magic",
            WireError::UnsupportedVersion(_) => "unsupported_version",
            WireError::Malformed(_) | WireError::TrailingBytes { .. } => "malformed",
            WireError::TooMany { .. } => "too_many",
            WireError::TagOutOfRange { .. } => "bad_tag_index",
            WireError::NonFinite { .. } => "non_finite_value",
        }
    }
}

impl Batch {
    /// A digest of what the batch says, however it was encoded: each point's tag name, time,
    /// value and quality, in order (the first 8 bytes of their SHA-256). Two deliveries of one
    /// batch have the same; two batches a publisher numbered alike almost surely do not.
    /// Stable across versions: the ledger keeps it.
    pub fn content_digest(&self) -> i64 {
        let mut hash = Sha256::new();
        for p in &self.points {
            let name = self.tags.get(p.tag as usize).map_or("", |t| t.as_str());
            hash.update(u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes());
            hash.update(name.as_bytes());
            hash.update(p.ts.as_micros().to_le_bytes());
            hash.update(p.value.to_bits().to_le_bytes());
            hash.update([p.quality.as_u8()]);
        }
        let digest = hash.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        i64::from_le_bytes(first)
    }

    /// Builds a batch from readings, naming each distinct tag once.
    pub fn from_readings(gateway: GatewayId, seq: u64, readings: &[Reading]) -> Self {
        let mut tags: Vec<TagName> = Vec::new();
        let mut index: std::collections::HashMap<&TagName, u32> = Default::default();
        let mut points = Vec::with_capacity(readings.len());
        for r in readings {
            let tag = *index.entry(&r.tag).or_insert_with(|| {
                tags.push(r.tag.clone());
                u32::try_from(tags.len() - 1).expect("a batch holds fewer than 2^32 tags")
            });
            points.push(Point {
                tag,
                ts: r.ts,
                value: r.value,
                quality: r.quality,
            });
        }
        Batch {
            gateway,
            seq,
            tags,
            points,
        }
    }

    /// The batch's points as readings (allocates one tag name per reading).
    pub fn readings(&self) -> impl Iterator<Item = Reading> + '_ {
        self.points.iter().map(|p| Reading {
            tag: self.tags[p.tag as usize].clone(),
            ts: p.ts,
            value: p.value,
            quality: p.quality,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.points.len() * 14);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        postcard::to_io(self, &mut out).expect("writing to a Vec cannot fail");
        out
    }

    pub fn decode(message: &[u8]) -> Result<Batch, WireError> {
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(WireError::TooLarge { len: message.len() });
        }
        if message.len() < 5 {
            return Err(WireError::TooShort(message.len()));
        }
        if &message[..4] != MAGIC {
            return Err(WireError::BadMagic);
        }
        if message[4] != VERSION {
            return Err(WireError::UnsupportedVersion(message[4]));
        }
        let (batch, rest): (Batch, &[u8]) =
            postcard::take_from_bytes(&message[5..]).map_err(|e| match e {
                postcard::Error::DeserializeUnexpectedEnd => WireError::CutShort,
                e => WireError::Malformed(e.to_string()),
            })?;
        if !rest.is_empty() {
            return Err(WireError::TrailingBytes {
                trailing: rest.len(),
            });
        }
        batch.validate()?;
        Ok(batch)
    }

    fn validate(&self) -> Result<(), WireError> {
        if self.tags.len() > MAX_TAGS {
            return Err(WireError::TooMany {
                what: "tags",
                count: self.tags.len(),
                max: MAX_TAGS,
            });
        }
        if self.points.len() > MAX_POINTS {
            return Err(WireError::TooMany {
                what: "points",
                count: self.points.len(),
                max: MAX_POINTS,
            });
        }
        for (index, p) in self.points.iter().enumerate() {
            if p.tag as usize >= self.tags.len() {
                return Err(WireError::TagOutOfRange {
                    index,
                    tag: p.tag,
                    tags: self.tags.len(),
                });
            }
            if !p.value.is_finite() {
                return Err(WireError::NonFinite {
                    index,
                    value: p.value,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tag_name() -> impl Strategy<Value = TagName> {
        "[a-z][a-z0-9_.-]{0,20}".prop_map(|s| TagName::parse(s).expect("pattern is valid"))
    }

    fn quality() -> impl Strategy<Value = Quality> {
        prop_oneof![
            Just(Quality::Good),
            Just(Quality::Uncertain),
            Just(Quality::Bad)
        ]
    }

    fn readings() -> impl Strategy<Value = Vec<Reading>> {
        let tags = proptest::collection::vec(tag_name(), 1..8);
        tags.prop_flat_map(|tags| {
            let n = tags.len();
            proptest::collection::vec((0..n, any::<i64>(), -1e12f64..1e12, quality()), 0..64)
                .prop_map(move |points| {
                    points
                        .into_iter()
                        .map(|(i, ts, value, quality)| Reading {
                            tag: tags[i].clone(),
                            ts: Timestamp::from_micros(ts),
                            value,
                            quality,
                        })
                        .collect()
                })
        })
    }

    proptest! {
        #[test]
        fn batches_round_trip(readings in readings(), seq in any::<u64>()) {
            let gw = GatewayId::parse("gw-1").unwrap();
            let batch = Batch::from_readings(gw, seq, &readings);
            let decoded = Batch::decode(&batch.encode()).unwrap();
            prop_assert_eq!(&decoded, &batch);
            prop_assert_eq!(decoded.readings().collect::<Vec<_>>(), readings);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut msg = MAGIC.to_vec();
            msg.push(VERSION);
            msg.extend_from_slice(&bytes);
            let _ = Batch::decode(&msg);
        }
    }

    fn sample() -> Batch {
        let reading = Reading {
            tag: TagName::parse("t").unwrap(),
            ts: Timestamp::from_micros(1),
            value: 1.0,
            quality: Quality::Good,
        };
        Batch::from_readings(GatewayId::parse("gw").unwrap(), 7, &[reading])
    }

    #[test]
    fn bad_messages_say_why() {
        let good = sample().encode();
        assert_eq!(Batch::decode(&good[..3]), Err(WireError::TooShort(3)));
        assert_eq!(Batch::decode(b"JUNK-and-more"), Err(WireError::BadMagic));
        let mut v2 = good.clone();
        v2[4] = 2;
        assert_eq!(Batch::decode(&v2), Err(WireError::UnsupportedVersion(2)));
        for cut in [1, 2, good.len() / 2, good.len() - 5] {
            assert_eq!(
                Batch::decode(&good[..good.len() - cut]),
                Err(WireError::CutShort),
                "{cut}"
            );
        }
        assert_eq!(WireError::CutShort.reason(), "truncated");
        let mut bad_varint = good[..5].to_vec();
        bad_varint.extend_from_slice(&[0xff; 11]);
        assert_eq!(
            Batch::decode(&bad_varint).map_err(|e| e.reason()),
            Err("malformed")
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            Batch::decode(&trailing),
            Err(WireError::TrailingBytes { trailing: 1 })
        );
    }

    #[test]
    fn the_digest_follows_the_readings_not_their_encoding() {
        let a = sample();
        let digest = a.content_digest();
        // The same readings with the dictionary in another order: the same digest.
        let mut b = a.clone();
        b.tags.push(TagName::parse("spare").unwrap());
        b.tags.swap(0, 1);
        for p in &mut b.points {
            p.tag = 1;
        }
        assert_eq!(b.content_digest(), digest);
        // Any change to what the batch says changes it.
        let mut c = a.clone();
        c.points[0].value += 1.0;
        assert_ne!(c.content_digest(), digest);
        let mut d = a.clone();
        d.points[0].ts = d.points[0].ts.plus_micros(1);
        assert_ne!(d.content_digest(), digest);
        let mut e = a.clone();
        e.points.pop();
        assert_ne!(e.content_digest(), digest);
        // Fixed: the ledger keeps digests across versions (computed independently: SHA-256
        // of 01000000 74 0100000000000000 000000000000f03f 00, its first 8 bytes little-endian).
        assert_eq!(digest, -1_840_434_021_496_574_215);
    }

    #[test]
    fn non_finite_and_dangling_points_are_refused() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut b = sample();
            b.points[0].value = value;
            assert_eq!(
                Batch::decode(&b.encode()).map_err(|e| e.reason()),
                Err("non_finite_value")
            );
        }
        let mut b = sample();
        b.points[0].tag = 5;
        assert_eq!(
            Batch::decode(&b.encode()),
            Err(WireError::TagOutOfRange {
                index: 0,
                tag: 5,
                tags: 1
            })
        );
    }
}

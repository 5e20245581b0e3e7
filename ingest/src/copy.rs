//! PostgreSQL's binary COPY format for reading rows. Pure: builds bytes.
//!
//! Layout: an 11-byte signature, a 4-byte flags field and a 4-byte header-extension length;
//! then per row a 16-bit field count and, per field, a 32-bit length and the value in network
//! byte order; then a 16-bit -1 trailer. `timestamptz` is microseconds since 2000-01-01 UTC.

use model::{Quality, Timestamp};

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;
/// The range of `timestamptz`, in microseconds since PostgreSQL's epoch: from 4714-11-24 BC
/// (Julian day 0) up to, not including, 294277-01-01 (`MIN_TIMESTAMP` and `END_TIMESTAMP` in
/// PostgreSQL's `datatype/timestamp.h`). COPY refuses a value outside it.
const PG_MIN_MICROS: i64 = -211_813_488_000_000_000;
const PG_END_MICROS: i64 = 9_223_371_331_200_000_000;

/// One row of `readings`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub tag_id: i64,
    pub ts: Timestamp,
    pub value: f64,
    pub quality: Quality,
}

/// The COPY statement the encoded rows are for.
pub const COPY_READINGS: &str =
    "COPY readings (tag_id, ts, value, quality) FROM STDIN (FORMAT binary)";

/// Bytes per row: field count (2) + 4 fields with length prefixes (4 each) + 8 + 8 + 8 + 2.
const ROW_BYTES: usize = 2 + 4 * 4 + 8 + 8 + 8 + 2;

/// Whether `readings.ts` can hold `ts`. Microseconds in an `i64` reach much further back than
/// PostgreSQL's range (to about 290,000 BC), not further forward.
pub fn storable(ts: Timestamp) -> bool {
    ts.as_micros()
        .checked_sub(PG_EPOCH_OFFSET_MICROS)
        .is_some_and(|t| (PG_MIN_MICROS..PG_END_MICROS).contains(&t))
}

pub fn encode<'a>(rows: impl ExactSizeIterator<Item = &'a Row>) -> Vec<u8> {
    let mut out = Vec::with_capacity(19 + rows.len() * ROW_BYTES + 2);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    for r in rows {
        out.extend_from_slice(&4i16.to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&r.tag_id.to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        let pg_ts = r.ts.as_micros().saturating_sub(PG_EPOCH_OFFSET_MICROS);
        out.extend_from_slice(&pg_ts.to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&r.value.to_be_bytes());
        out.extend_from_slice(&2i32.to_be_bytes());
        out.extend_from_slice(&i16::from(r.quality.as_u8()).to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_one_row() {
        let bytes = encode(
            [Row {
                tag_id: 1,
                ts: Timestamp::from_micros(PG_EPOCH_OFFSET_MICROS + 5),
                value: 1.0,
                quality: Quality::Bad,
            }]
            .iter(),
        );
        assert_eq!(&bytes[..11], SIGNATURE);
        assert_eq!(bytes.len(), 19 + ROW_BYTES + 2);
        let row = &bytes[19..19 + ROW_BYTES];
        assert_eq!(&row[..2], &[0, 4]);
        assert_eq!(&row[6..14], &1i64.to_be_bytes());
        assert_eq!(&row[18..26], &5i64.to_be_bytes());
        assert_eq!(&row[30..38], &1.0f64.to_be_bytes());
        assert_eq!(&row[42..44], &2i16.to_be_bytes());
        assert_eq!(&bytes[bytes.len() - 2..], &[0xFF, 0xFF]);
    }

    #[test]
    fn storable_times_are_postgresql_s_range() {
        let at = |pg: i64| Timestamp::from_micros(pg + PG_EPOCH_OFFSET_MICROS);
        assert!(storable(Timestamp::from_micros(0)));
        assert!(storable(at(PG_MIN_MICROS)));
        assert!(!storable(at(PG_MIN_MICROS - 1)));
        assert!(storable(Timestamp::from_micros(i64::MAX)));
        assert!(!storable(Timestamp::from_micros(i64::MIN)));
    }
}

//! The simulated PLC's register map: how a value becomes two 16-bit registers and which reads
//! the PLC accepts. Pure: the Modbus server maps [`ReadError`] to exception codes in one place.

/// The highest register address the simulated PLC has. Reads reaching past it are refused.
pub const LAST_REGISTER: u16 = 1000;

/// The most registers one Modbus read may ask for (the protocol's own limit for function
/// codes 3 and 4, set by the 253-byte PDU).
pub const MAX_READ_COUNT: u16 = 125;

/// Registers one signal occupies.
pub const REGISTERS_PER_SIGNAL: u16 = 2;

/// Why a read was refused; each variant is one Modbus exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Modbus exception 3 (illegal data value).
    #[error("a read must ask for 1 to {MAX_READ_COUNT} registers, not {count}")]
    BadCount { count: u16 },
    /// Modbus exception 2 (illegal data address).
    #[error(
        "registers {start}..={} reach past the last register ({LAST_REGISTER})",
        u32::from(*start) + u32::from(*count) - 1
    )]
    OutOfRange { start: u16, count: u16 },
}

/// Checks a read of `count` registers from `start` the way a PLC would: the count first (the
/// Modbus specification orders the checks so), then the address range.
pub fn check_read(start: u16, count: u16) -> Result<(), ReadError> {
    if count == 0 || count > MAX_READ_COUNT {
        return Err(ReadError::BadCount { count });
    }
    if u32::from(start) + u32::from(count) - 1 > u32::from(LAST_REGISTER) {
        return Err(ReadError::OutOfRange { start, count });
    }
    Ok(())
}

/// A value as an IEEE-754 `f32` in two registers, high word first (byte order ABCD), the
/// layout most PLCs use.
pub fn encode_f32(value: f32) -> [u16; 2] {
    let [a, b, c, d] = value.to_be_bytes();
    [u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])]
}

/// The inverse of [`encode_f32`].
pub fn decode_f32(words: [u16; 2]) -> f32 {
    let [a, b] = words[0].to_be_bytes();
    let [c, d] = words[1].to_be_bytes();
    f32::from_be_bytes([a, b, c, d])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_is_encoded_high_word_first() {
        let table: [(f32, [u16; 2]); 6] = [
            (1.0, [0x3F80, 0x0000]),
            (0.0, [0x0000, 0x0000]),
            (-2.5, [0xC020, 0x0000]),
            (62.0, [0x4278, 0x0000]),
            (92.0, [0x42B8, 0x0000]),
            (0.1, [0x3DCC, 0xCCCD]),
        ];
        for (value, words) in table {
            assert_eq!(encode_f32(value), words, "{value}");
            assert_eq!(decode_f32(words), value);
        }
    }

    #[test]
    fn encoding_round_trips_every_bit_pattern_tried() {
        for bits in (0..u32::MAX).step_by(65_537) {
            let words = encode_f32(f32::from_bits(bits));
            assert_eq!(decode_f32(words).to_bits(), bits);
        }
    }

    #[test]
    fn reads_are_checked_like_a_plc() {
        assert_eq!(check_read(0, 1), Ok(()));
        assert_eq!(check_read(0, 125), Ok(()));
        assert_eq!(check_read(1000, 1), Ok(()));
        assert_eq!(check_read(876, 125), Ok(()));
        assert_eq!(check_read(0, 0), Err(ReadError::BadCount { count: 0 }));
        assert_eq!(check_read(0, 126), Err(ReadError::BadCount { count: 126 }));
        assert_eq!(
            check_read(999, 3),
            Err(ReadError::OutOfRange {
                start: 999,
                count: 3
            })
        );
        assert_eq!(
            check_read(u16::MAX, 125),
            Err(ReadError::OutOfRange {
                start: u16::MAX,
                count: 125
            })
        );
        assert_eq!(
            ReadError::OutOfRange {
                start: 999,
                count: 3
            }
            .to_string(),
            "registers 999..=1001 reach past the last register (1000)"
        );
        // A bad count wins over a bad address, as the specification orders the checks.
        assert_eq!(check_read(5000, 0), Err(ReadError::BadCount { count: 0 }));
    }
}

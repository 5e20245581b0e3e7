//! Decoding Modbus register words into values. Pure: no I/O.
//!
//! Modbus registers are 16-bit words sent big-endian, but devices disagree about how a
//! 32- or 64-bit value is spread over several words. Naming the bytes of a value A (most
//! significant) to D (least significant), the four layouts in the field are:
//!
//! | order | registers (32-bit) | seen in |
//! |-------|--------------------|---------|
//! | ABCD  | `AB CD`            | the Modbus convention, most PLCs |
//! | CDAB  | `CD AB`            | word-swapped: many meters and drives |
//! | BADC  | `BA DC`            | byte-swapped within words |
//! | DCBA  | `DC BA`            | little-endian devices |
//!
//! For 64-bit values the same rule holds over four words (CDAB reverses the word order).
//!
//! Text (`string`) is two ASCII characters per register, in register order. Only the byte
//! order within a word matters for text: `ABCD` and `CDAB` put the first character in the high
//! byte, `BADC` and `DCBA` in the low byte.
//!
//! [`Scaling`] turns a decoded number into an engineering value.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
    /// ASCII text over a configured number of registers; see [`decode_text`].
    String,
}

impl DataType {
    /// Registers the type occupies; `None` for `String`, whose length is configured per tag.
    pub fn registers(self) -> Option<u16> {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => Some(1),
            DataType::U32 | DataType::I32 | DataType::F32 => Some(2),
            DataType::U64 | DataType::I64 | DataType::F64 => Some(4),
            DataType::String => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum ByteOrder {
    #[default]
    #[serde(rename = "ABCD")]
    Abcd,
    #[serde(rename = "CDAB")]
    Cdab,
    #[serde(rename = "BADC")]
    Badc,
    #[serde(rename = "DCBA")]
    Dcba,
}

/// Why words could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{data_type:?} needs {needed} registers, got {got}")]
    WrongLength {
        data_type: DataType,
        needed: usize,
        got: usize,
    },
    #[error("a string is text, not a number")]
    NotANumber,
}

/// The bytes of the value, most significant first, after undoing the device's order.
fn normalized_bytes(words: &[u16], order: ByteOrder) -> Vec<u8> {
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    match order {
        ByteOrder::Abcd => {}
        ByteOrder::Dcba => bytes.reverse(),
        ByteOrder::Badc => bytes.chunks_exact_mut(2).for_each(|c| c.swap(0, 1)),
        ByteOrder::Cdab => {
            let mut swapped: Vec<u8> = bytes.chunks_exact(2).rev().flatten().copied().collect();
            std::mem::swap(&mut bytes, &mut swapped);
        }
    }
    bytes
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// Decodes the raw value of a register tag (before scale and offset). For `Bool`, `bit`
/// selects the bit of the single word (0 = least significant).
pub fn decode_registers(
    words: &[u16],
    data_type: DataType,
    order: ByteOrder,
    bit: Option<u8>,
) -> Result<f64, DecodeError> {
    let needed = usize::from(data_type.registers().ok_or(DecodeError::NotANumber)?);
    if words.len() != needed {
        return Err(DecodeError::WrongLength {
            data_type,
            needed,
            got: words.len(),
        });
    }
    // A 16-bit value in a byte-swapping device is still swapped within its word.
    let b = normalized_bytes(words, order);
    Ok(match data_type {
        DataType::Bool => f64::from(u8::from(words[0] >> bit.unwrap_or(0) & 1 == 1)),
        DataType::U16 => f64::from(u16::from_be_bytes(array(&b))),
        DataType::I16 => f64::from(i16::from_be_bytes(array(&b))),
        DataType::U32 => f64::from(u32::from_be_bytes(array(&b))),
        DataType::I32 => f64::from(i32::from_be_bytes(array(&b))),
        DataType::F32 => f64::from(f32::from_be_bytes(array(&b))),
        // 64-bit integers beyond 2^53 lose precision as f64; readings are f64 by design.
        DataType::U64 => u64::from_be_bytes(array(&b)) as f64,
        DataType::I64 => i64::from_be_bytes(array(&b)) as f64,
        DataType::F64 => f64::from_be_bytes(array(&b)),
        DataType::String => return Err(DecodeError::NotANumber),
    })
}

/// Decodes the text of a `string` tag: two characters per word, the first in the high byte
/// unless `order` swaps bytes within words (`BADC`, `DCBA`). The text ends at the first NUL;
/// trailing spaces are trimmed (devices pad with either). A byte outside printable ASCII
/// becomes U+FFFD, so the text is always safe to print.
pub fn decode_text(words: &[u16], order: ByteOrder) -> String {
    let swapped = matches!(order, ByteOrder::Badc | ByteOrder::Dcba);
    let text: String = words
        .iter()
        .flat_map(|w| {
            let [high, low] = w.to_be_bytes();
            if swapped { [low, high] } else { [high, low] }
        })
        .take_while(|&b| b != 0)
        .map(|b| {
            if b == b' ' || b.is_ascii_graphic() {
                char::from(b)
            } else {
                char::REPLACEMENT_CHARACTER
            }
        })
        .collect();
    text.trim_end_matches(' ').to_owned()
}

/// How a decoded number becomes an engineering value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scaling {
    /// `raw * scale + offset`.
    Linear { scale: f64, offset: f64 },
    /// The straight line through (`raw_min`, `eng_min`) and (`raw_max`, `eng_max`), for
    /// example a 4-20 mA input counted 0..27648 shown as 0..100 %. Raw values outside the
    /// raw range extrapolate along the same line; nothing is clamped.
    Range {
        raw_min: f64,
        raw_max: f64,
        eng_min: f64,
        eng_max: f64,
    },
}

impl Scaling {
    /// The engineering value of `raw`. Not finite when the configuration is (the
    /// configuration check refuses that) or when the result overflows.
    pub fn apply(self, raw: f64) -> f64 {
        match self {
            Scaling::Linear { scale, offset } => raw * scale + offset,
            Scaling::Range {
                raw_min,
                raw_max,
                eng_min,
                eng_max,
            } => eng_min + (raw - raw_min) * (eng_max - eng_min) / (raw_max - raw_min),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ByteOrder::*;
    use DataType::*;

    /// The inverse of [`decode_registers`].
    fn encode_be_bytes(bytes: &[u8], order: ByteOrder) -> Vec<u16> {
        let mut b = bytes.to_vec();
        match order {
            ByteOrder::Abcd => {}
            ByteOrder::Dcba => b.reverse(),
            ByteOrder::Badc => b.chunks_exact_mut(2).for_each(|c| c.swap(0, 1)),
            ByteOrder::Cdab => b = b.chunks_exact(2).rev().flatten().copied().collect(),
        }
        b.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn every_type_and_order_from_a_table() {
        // 0x41200000 is 10.0f32; 0x3FF0000000000000 is 1.0f64.
        let table: &[(DataType, ByteOrder, &[u16], f64)] = &[
            (U16, Abcd, &[0x1234], 4660.0),
            (U16, Badc, &[0x3412], 4660.0),
            (I16, Abcd, &[0xFFFE], -2.0),
            (U32, Abcd, &[0x0001, 0x0002], 65538.0),
            (U32, Cdab, &[0x0002, 0x0001], 65538.0),
            (U32, Badc, &[0x0100, 0x0200], 65538.0),
            (U32, Dcba, &[0x0200, 0x0100], 65538.0),
            (I32, Abcd, &[0xFFFF, 0xFFFF], -1.0),
            (I32, Cdab, &[0xFFFE, 0xFFFF], -2.0),
            (F32, Abcd, &[0x4120, 0x0000], 10.0),
            (F32, Cdab, &[0x0000, 0x4120], 10.0),
            (F32, Badc, &[0x2041, 0x0000], 10.0),
            (F32, Dcba, &[0x0000, 0x2041], 10.0),
            (U64, Abcd, &[0, 0, 0, 7], 7.0),
            (U64, Cdab, &[7, 0, 0, 0], 7.0),
            (I64, Abcd, &[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], -1.0),
            (F64, Abcd, &[0x3FF0, 0, 0, 0], 1.0),
            (F64, Cdab, &[0, 0, 0, 0x3FF0], 1.0),
            (F64, Badc, &[0xF03F, 0, 0, 0], 1.0),
            (F64, Dcba, &[0, 0, 0, 0xF03F], 1.0),
        ];
        for &(ty, order, words, want) in table {
            assert_eq!(
                decode_registers(words, ty, order, None),
                Ok(want),
                "{ty:?} {order:?} {words:04X?}"
            );
        }
    }

    #[test]
    fn bits_of_a_register() {
        assert_eq!(decode_registers(&[0b0100], Bool, Abcd, Some(2)), Ok(1.0));
        assert_eq!(decode_registers(&[0b0100], Bool, Abcd, Some(1)), Ok(0.0));
        assert_eq!(decode_registers(&[0x8000], Bool, Abcd, Some(15)), Ok(1.0));
    }

    #[test]
    fn wrong_length_is_an_error_not_a_panic() {
        assert!(decode_registers(&[1], F32, Abcd, None).is_err());
        assert_eq!(
            decode_registers(&[1], String, Abcd, None),
            Err(DecodeError::NotANumber)
        );
    }

    #[test]
    fn text_from_a_table() {
        // "PUMP-7" is 0x5055 0x4D50 0x2D37 in the high-byte-first layout.
        let table: &[(&[u16], ByteOrder, &str)] = &[
            (&[0x5055, 0x4D50, 0x2D37], Abcd, "PUMP-7"),
            (&[0x5055, 0x4D50, 0x2D37], Cdab, "PUMP-7"),
            (&[0x5550, 0x504D, 0x372D], Badc, "PUMP-7"),
            (&[0x5550, 0x504D, 0x372D], Dcba, "PUMP-7"),
            // Padding: NULs and trailing spaces go, inner spaces stay.
            (&[0x4120, 0x4200, 0x0000], Abcd, "A B"),
            (&[0x4142, 0x2020, 0x2020], Abcd, "AB"),
            (&[0x4100, 0x4243], Abcd, "A"),
            (&[0x0000, 0x4142], Abcd, ""),
            (&[0x2020], Abcd, ""),
            // An odd length: the last register holds one character and a NUL.
            (&[0x4142, 0x4300], Abcd, "ABC"),
            (&[0x4241, 0x0043], Badc, "ABC"),
            // Control characters and bytes above 0x7F cannot reach a terminal as they are.
            (&[0x410A, 0xC342], Abcd, "A\u{FFFD}\u{FFFD}B"),
        ];
        for &(words, order, want) in table {
            assert_eq!(decode_text(words, order), want, "{words:04X?} {order:?}");
        }
    }

    #[test]
    fn scaling_from_a_table() {
        let linear = |scale, offset| Scaling::Linear { scale, offset };
        let range = |raw_min, raw_max, eng_min, eng_max| Scaling::Range {
            raw_min,
            raw_max,
            eng_min,
            eng_max,
        };
        let table = [
            (linear(1.0, 0.0), 42.0, 42.0),
            (linear(0.1, -40.0), 650.0, 25.0),
            (range(0.0, 27648.0, 0.0, 100.0), 13824.0, 50.0),
            (range(0.0, 27648.0, 0.0, 100.0), 0.0, 0.0),
            (range(0.0, 27648.0, 0.0, 100.0), 27648.0, 100.0),
            // 4-20 mA in µA onto -50..150 °C, and beyond the raw range.
            (range(4000.0, 20000.0, -50.0, 150.0), 12000.0, 50.0),
            (range(4000.0, 20000.0, -50.0, 150.0), 2000.0, -75.0),
            // A falling line.
            (range(0.0, 10.0, 100.0, 0.0), 2.5, 75.0),
        ];
        for (scaling, raw, want) in table {
            assert_eq!(scaling.apply(raw), want, "{scaling:?} {raw}");
        }
    }

    #[test]
    fn encode_inverts_decode_for_every_order() {
        for order in [Abcd, Cdab, Badc, Dcba] {
            let words = encode_be_bytes(&(-1234.5f64).to_be_bytes(), order);
            assert_eq!(decode_registers(&words, F64, order, None), Ok(-1234.5));
            let words = encode_be_bytes(&(3.25f32).to_be_bytes(), order);
            assert_eq!(decode_registers(&words, F32, order, None), Ok(3.25));
        }
    }
}

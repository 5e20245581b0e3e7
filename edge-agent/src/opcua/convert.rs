//! OPC-UA data values to samples: the number, its quality and its time. Pure.
//!
//! - Booleans read 1 or 0 and are not scaled; integers and floats are scaled to engineering
//!   units; text is shown by `edge-agent read` but is not a reading. Any other type (arrays,
//!   structures, dates) is a bad sample that names the type.
//! - Quality follows the status code's severity: good, uncertain or bad. A value that is not
//!   finite is bad.
//! - The time is the source timestamp, else the server's, else the moment of receipt.

use model::{Quality, TagName, Timestamp};
use opcua::types::{DataValue, DateTime, StatusCode, Variant};

use crate::modbus::decode::Scaling;
use crate::modbus::line::{Sample, Value};

/// What became of one data value.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    pub sample: Sample,
    /// Why the value could not be read, when it could not (the sample is then bad).
    pub problem: Option<String>,
}

/// The quality a status code stands for; no status code means good.
pub fn quality(status: Option<StatusCode>) -> Quality {
    match status {
        None => Quality::Good,
        Some(s) if s.is_good() => Quality::Good,
        Some(s) if s.is_uncertain() => Quality::Uncertain,
        Some(_) => Quality::Bad,
    }
}

fn timestamp(at: Option<&DateTime>) -> Option<Timestamp> {
    at.filter(|t| !t.is_null())
        .map(|t| Timestamp::from_datetime(t.as_chrono()))
}

/// The sample of `tag` that `value` gives.
pub fn sample(
    tag: &TagName,
    scaling: Scaling,
    value: &DataValue,
    received: Timestamp,
) -> Converted {
    let ts = timestamp(value.source_timestamp.as_ref())
        .or_else(|| timestamp(value.server_timestamp.as_ref()))
        .unwrap_or(received);
    let mut quality = quality(value.status);
    let (number, problem) = match &value.value {
        None | Some(Variant::Empty) => {
            // A bad status explains itself; a good one without a value is a server's fault.
            let problem = (quality != Quality::Bad).then(|| "the server sent no value".to_owned());
            (None, problem)
        }
        Some(v) => match number(v) {
            Ok(Some(raw)) => {
                let engineering = if matches!(v, Variant::Boolean(_)) {
                    raw
                } else {
                    scaling.apply(raw)
                };
                if engineering.is_finite() {
                    (Some(Value::Number(engineering)), None)
                } else {
                    (None, Some(format!("{engineering} is not a finite number")))
                }
            }
            Ok(None) => (Some(Value::Text(text(v))), None),
            Err(kind) => (
                None,
                Some(format!(
                    "{kind} values are not readings; map a numeric, boolean or text variable"
                )),
            ),
        },
    };
    if problem.is_some() {
        quality = Quality::Bad;
    }
    let value = if quality == Quality::Bad {
        None
    } else {
        number
    };
    Converted {
        sample: Sample {
            tag: tag.clone(),
            value,
            ts,
            quality,
        },
        problem,
    }
}

/// The number a variant holds; `None` for text; the type's name for anything else.
fn number(v: &Variant) -> Result<Option<f64>, &'static str> {
    Ok(Some(match v {
        Variant::Boolean(b) => f64::from(u8::from(*b)),
        Variant::SByte(n) => f64::from(*n),
        Variant::Byte(n) => f64::from(*n),
        Variant::Int16(n) => f64::from(*n),
        Variant::UInt16(n) => f64::from(*n),
        Variant::Int32(n) => f64::from(*n),
        Variant::UInt32(n) => f64::from(*n),
        // Beyond 2^53 the nearest double, as for Modbus 64-bit registers.
        Variant::Int64(n) => *n as f64,
        Variant::UInt64(n) => *n as f64,
        Variant::Float(n) => f64::from(*n),
        Variant::Double(n) => *n,
        Variant::String(_) | Variant::LocalizedText(_) => return Ok(None),
        Variant::Array(_) => return Err("array"),
        Variant::DateTime(_) => return Err("date-time"),
        Variant::ExtensionObject(_) => return Err("structure"),
        _ => return Err("non-numeric"),
    }))
}

fn text(v: &Variant) -> String {
    match v {
        Variant::String(s) => s.as_ref().to_owned(),
        Variant::LocalizedText(t) => t.text.as_ref().to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> TagName {
        TagName::parse("oven.temp").unwrap()
    }

    const UNSCALED: Scaling = Scaling::Linear {
        scale: 1.0,
        offset: 0.0,
    };

    fn value(v: impl Into<Variant>) -> DataValue {
        DataValue {
            value: Some(v.into()),
            ..DataValue::null()
        }
    }

    fn received() -> Timestamp {
        Timestamp::from_micros(1_700_000_000_000_000)
    }

    #[test]
    fn every_numeric_type_becomes_a_scaled_number() {
        let tenfold = Scaling::Linear {
            scale: 10.0,
            offset: 1.0,
        };
        let cases: Vec<(Variant, f64)> = vec![
            (Variant::SByte(-3), -29.0),
            (Variant::Byte(3), 31.0),
            (Variant::Int16(-300), -2999.0),
            (Variant::UInt16(300), 3001.0),
            (Variant::Int32(-70_000), -699_999.0),
            (Variant::UInt32(70_000), 700_001.0),
            (Variant::Int64(-5_000_000_000), -49_999_999_999.0),
            (Variant::UInt64(5_000_000_000), 50_000_000_001.0),
            (Variant::Float(1.5), 16.0),
            (Variant::Double(-2.25), -21.5),
            // Booleans are states, not quantities: never scaled.
            (Variant::Boolean(true), 1.0),
            (Variant::Boolean(false), 0.0),
        ];
        for (v, expected) in cases {
            let c = sample(&tag(), tenfold, &value(v.clone()), received());
            assert_eq!(c.problem, None, "{v:?}");
            assert_eq!(c.sample.value, Some(Value::Number(expected)), "{v:?}");
            assert_eq!(c.sample.quality, Quality::Good);
        }
    }

    #[test]
    fn status_codes_set_the_quality() {
        let mut v = value(1.0f64);
        v.status = Some(StatusCode::UncertainLastUsableValue);
        assert_eq!(
            sample(&tag(), UNSCALED, &v, received()).sample.quality,
            Quality::Uncertain
        );
        v.status = Some(StatusCode::BadSensorFailure);
        let c = sample(&tag(), UNSCALED, &v, received());
        assert_eq!(c.sample.quality, Quality::Bad);
        assert_eq!(c.sample.value, None, "a bad sample carries no value");
        assert_eq!(c.problem, None, "the status explains a bad sample");
        v.status = Some(StatusCode::Good);
        assert_eq!(
            sample(&tag(), UNSCALED, &v, received()).sample.quality,
            Quality::Good
        );
    }

    #[test]
    fn the_source_timestamp_wins_then_the_servers_then_receipt() {
        let source = DateTime::from(chrono::DateTime::from_timestamp(1_600_000_000, 0).unwrap());
        let server = DateTime::from(chrono::DateTime::from_timestamp(1_650_000_000, 0).unwrap());
        let mut v = value(1.0f64);
        assert_eq!(
            sample(&tag(), UNSCALED, &v, received()).sample.ts,
            received()
        );
        v.server_timestamp = Some(server);
        assert_eq!(
            sample(&tag(), UNSCALED, &v, received()).sample.ts,
            Timestamp::from_micros(1_650_000_000_000_000)
        );
        v.source_timestamp = Some(source);
        assert_eq!(
            sample(&tag(), UNSCALED, &v, received()).sample.ts,
            Timestamp::from_micros(1_600_000_000_000_000)
        );
        // A null source timestamp is no timestamp.
        v.source_timestamp = Some(DateTime::null());
        assert_eq!(
            sample(&tag(), UNSCALED, &v, received()).sample.ts,
            Timestamp::from_micros(1_650_000_000_000_000)
        );
    }

    #[test]
    fn text_is_shown_but_other_types_are_bad_samples_that_say_why() {
        let c = sample(&tag(), UNSCALED, &value("RUNNING"), received());
        assert_eq!(c.sample.value, Some(Value::Text("RUNNING".into())));
        assert_eq!(c.sample.to_reading(), None, "text is not published");

        let c = sample(&tag(), UNSCALED, &value(vec![1i32, 2]), received());
        assert_eq!(c.sample.quality, Quality::Bad);
        assert!(c.problem.unwrap().contains("array"));

        let c = sample(&tag(), UNSCALED, &value(DateTime::now()), received());
        assert!(c.problem.unwrap().contains("date-time"));

        let c = sample(&tag(), UNSCALED, &value(f64::NAN), received());
        assert_eq!(c.sample.quality, Quality::Bad);
        assert!(c.problem.unwrap().contains("finite"));

        let c = sample(&tag(), UNSCALED, &DataValue::null(), received());
        assert_eq!(c.sample.quality, Quality::Bad);
        assert!(c.problem.unwrap().contains("no value"));
    }
}

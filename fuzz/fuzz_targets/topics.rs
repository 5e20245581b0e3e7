//! Topic names (`model::topic`, `model::sparkplug::Topic`): any text parses to a topic or an
//! error, never a panic, and a readings topic that parses is rebuilt to a topic that parses
//! to the same tenant, gateway and format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::topic::Format;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((tenant, gateway, format)) = model::topic::parse_readings_topic(text) {
        let rebuilt = match format {
            Format::Wire => model::topic::readings(tenant, &gateway),
            Format::Json => model::topic::json_readings(tenant, &gateway),
        };
        assert_eq!(
            model::topic::parse_readings_topic(&rebuilt).ok(),
            Some((tenant, gateway, format))
        );
    }
    let _ = model::sparkplug::Topic::parse(text);
});

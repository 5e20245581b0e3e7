//! JSON batches of other publishers (`model::json_batch`): any bytes decode to a batch or an
//! error, never a panic; a batch holds finite values and tag numbers it names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::GatewayId;

fuzz_target!(|data: &[u8]| {
    let gateway = GatewayId::parse("gw-1").expect("a gateway id");
    if let Ok(batch) = model::json_batch::decode(&gateway, data) {
        assert!(batch.points.iter().all(|p| p.value.is_finite()));
        assert!(
            batch
                .points
                .iter()
                .all(|p| (p.tag as usize) < batch.tags.len())
        );
    }
});

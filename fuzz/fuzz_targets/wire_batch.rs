//! Edge agents' binary batches (`model::wire`): any bytes decode to a batch or an error, never
//! a panic, and a batch that decodes encodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::wire::Batch;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = Batch::decode(data) {
        assert_eq!(Batch::decode(&batch.encode()), Ok(batch));
    }
});

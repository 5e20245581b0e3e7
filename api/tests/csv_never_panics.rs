//! Robustness of the CSV register parsers, which read what users upload: any bytes give rows
//! and problems, never a panic, and every problem names a line that exists.

use api::registry_csv::{parse_assets, parse_tags};
use proptest::prelude::*;

const ASSETS: &str = "name,site,area,parent,criticality,status,asset_class,manufacturer,model,serial_number,installed_on,warranty_until,labels\nPress 1,Main,,,4,operational,press,Schuler,MSP 400,SN-1,2020-01-01,,line=1\n";
const TAGS: &str = "gateway,name,asset,unit,description,range_min,range_max,labels\nline-1-gw,press-1.oil_temp,Press 1,C,Oil,0,120,\n";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let (_, problems) = parse_assets(&bytes);
        let lines = bytes.iter().filter(|b| **b == b'\n').count() as u64 + 2;
        prop_assert!(problems.iter().all(|p| p.line <= lines));
        let _ = parse_tags(&bytes);
    }

    #[test]
    fn csv_shaped_text(text in "([A-Za-z0-9 =+@\"',.;-]{0,12}(,|\n|\r\n)){0,40}") {
        let _ = parse_assets(text.as_bytes());
        let _ = parse_tags(text.as_bytes());
    }

    #[test]
    fn damaged_registers(flips in prop::collection::vec((0..ASSETS.len(), any::<u8>()), 1..8)) {
        let mut assets = ASSETS.as_bytes().to_vec();
        let mut tags = TAGS.as_bytes().to_vec();
        for (at, b) in flips {
            assets[at] = b;
            let t = at % tags.len();
            tags[t] = b;
        }
        let _ = parse_assets(&assets);
        let _ = parse_tags(&tags);
    }

}

#[test]
fn the_unharmed_registers_parse() {
    let (rows, problems) = parse_assets(ASSETS.as_bytes());
    assert!(problems.is_empty() && rows.len() == 1, "{problems:?}");
    let (rows, problems) = parse_tags(TAGS.as_bytes());
    assert!(problems.is_empty() && rows.len() == 1, "{problems:?}");
}

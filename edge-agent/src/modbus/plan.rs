//! Read coalescing: the fewest requests that cover a device's tags. Pure: no I/O.
//!
//! Tags of one table are sorted by address and merged into one request while the merged span
//! stays within the protocol limit (125 registers, 2000 bits) and the hole between two tags is
//! at most `max_gap` registers (reading a few unused registers is cheaper than a round trip,
//! but some devices answer an exception for addresses they do not implement, so the gap is
//! configurable).

use crate::config::{Table, TagConfig};

pub const MAX_REGISTERS: u16 = 125;
pub const MAX_BITS: u16 = 2000;

/// One read request and the tags it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    /// Indexes into the device's tag list.
    pub tags: Vec<usize>,
}

/// Plans the requests for `tags`. Every tag is covered by exactly one request.
pub fn plan(tags: &[TagConfig], max_gap: u16) -> Vec<Request> {
    let mut order: Vec<usize> = (0..tags.len()).collect();
    order.sort_by_key(|&i| (tags[i].table, tags[i].address, tags[i].width()));
    let mut out: Vec<Request> = Vec::new();
    for i in order {
        let t = &tags[i];
        let limit = if t.table.is_bits() {
            MAX_BITS
        } else {
            MAX_REGISTERS
        };
        let start = u32::from(t.address);
        let end = start + u32::from(t.width());
        if let Some(last) = out.last_mut()
            && last.table == t.table
        {
            let last_end = u32::from(last.start) + u32::from(last.count);
            let gap_ok = start <= last_end + u32::from(max_gap);
            let new_end = end.max(last_end);
            if gap_ok && new_end - u32::from(last.start) <= u32::from(limit) {
                last.count = u16::try_from(new_end - u32::from(last.start))
                    .expect("bounded by the protocol limit");
                last.tags.push(i);
                continue;
            }
        }
        out.push(Request {
            table: t.table,
            start: t.address,
            count: t.width(),
            tags: vec![i],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::decode::{ByteOrder, DataType};
    use model::TagName;
    use proptest::prelude::*;

    fn tag(n: usize, table: Table, address: u16, data_type: DataType) -> TagConfig {
        TagConfig {
            name: TagName::parse(format!("t{n}")).unwrap(),
            table,
            address,
            data_type,
            byte_order: ByteOrder::Abcd,
            bit: None,
            length: None,
            scale: 1.0,
            offset: 0.0,
            raw_min: None,
            raw_max: None,
            eng_min: None,
            eng_max: None,
            deadband: None,
            heartbeat: None,
            unit: None,
        }
    }

    #[test]
    fn neighbours_merge_and_distant_tags_do_not() {
        let tags = vec![
            tag(0, Table::Holding, 0, DataType::F32),
            tag(1, Table::Holding, 2, DataType::F32),
            tag(2, Table::Holding, 10, DataType::U16),
            tag(3, Table::Holding, 100, DataType::U16),
            tag(4, Table::Input, 0, DataType::U16),
            tag(5, Table::Coil, 3, DataType::Bool),
        ];
        let p = plan(&tags, 8);
        let shape: Vec<_> = p.iter().map(|r| (r.table, r.start, r.count)).collect();
        assert_eq!(
            shape,
            [
                (Table::Coil, 3, 1),
                (Table::Holding, 0, 11),
                (Table::Holding, 100, 1),
                (Table::Input, 0, 1)
            ]
        );
    }

    #[test]
    fn a_request_never_exceeds_125_registers() {
        let tags: Vec<_> = (0..100)
            .map(|i| tag(i, Table::Holding, (i * 2) as u16, DataType::F32))
            .collect();
        let p = plan(&tags, 0);
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|r| r.count <= MAX_REGISTERS));
    }

    fn arb_tags() -> impl Strategy<Value = Vec<TagConfig>> {
        let one = (
            prop_oneof![Just(Table::Holding), Just(Table::Input), Just(Table::Coil)],
            0u16..3000,
            prop_oneof![
                Just(DataType::U16),
                Just(DataType::F32),
                Just(DataType::F64)
            ],
        );
        proptest::collection::vec(one, 0..80).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(n, (table, addr, ty))| {
                    let ty = if table.is_bits() { DataType::Bool } else { ty };
                    tag(n, table, addr, ty)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn plans_cover_each_tag_once_within_limits(tags in arb_tags(), gap in 0u16..20) {
            let p = plan(&tags, gap);
            let mut seen = vec![0; tags.len()];
            for r in &p {
                let limit = if r.table.is_bits() { MAX_BITS } else { MAX_REGISTERS };
                prop_assert!(r.count >= 1 && r.count <= limit);
                for &i in &r.tags {
                    seen[i] += 1;
                    let t = &tags[i];
                    prop_assert_eq!(t.table, r.table);
                    prop_assert!(t.address >= r.start);
                    prop_assert!(u32::from(t.address) + u32::from(t.width()) <= u32::from(r.start) + u32::from(r.count));
                }
            }
            prop_assert!(seen.iter().all(|&n| n == 1));
            // Minimality for gap 0 on one table: no two consecutive requests could have merged.
            for w in p.windows(2) {
                if w[0].table == w[1].table {
                    let end = u32::from(w[0].start) + u32::from(w[0].count);
                    let merged = u32::from(w[1].start) + u32::from(w[1].count) - u32::from(w[0].start);
                    let limit = if w[0].table.is_bits() { MAX_BITS } else { MAX_REGISTERS };
                    prop_assert!(u32::from(w[1].start) > end + u32::from(gap) || merged > u32::from(limit));
                }
            }
        }
    }
}

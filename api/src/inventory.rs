//! The parts ledger: what each stock movement does to a part's stock at one location, and the
//! rules it must keep. Pure: the routes lock the stock row, ask here, then write the new stock
//! and the movement in one transaction.
//!
//! Quantities are whole numbers of the part's unit (pieces, or `ml` for oil): no rounding.
//! A location's stock has `on_hand` (physically there) and `reserved` (planned on open work
//! orders); `available = on_hand - reserved` is what can still be planned. Invariants, kept by
//! [`apply`] and property-tested:
//! - `reserved` is never negative, and never more than `on_hand` unless the part allows
//!   negative stock;
//! - `on_hand` is never negative unless the part allows negative stock;
//! - the sum of the movements' deltas equals the stock (`on_hand` and `reserved` alike).

use serde::Serialize;

/// A part's stock at one location.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stock {
    pub on_hand: i64,
    pub reserved: i64,
}

impl Stock {
    pub fn available(self) -> i64 {
        self.on_hand - self.reserved
    }
}

/// A change of stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movement {
    /// Goods received: on hand up.
    Receipt(i64),
    /// A count corrected, by a signed amount (never zero).
    Adjustment(i64),
    /// Planned on a work order: reserved up.
    Reservation(i64),
    /// A reservation given back (a plan reduced, or its work order closed).
    Release(i64),
    /// Used on a work order: on hand down, and its reservation down by `reserved` of it.
    Consumption { quantity: i64, reserved: i64 },
}

impl Movement {
    /// The name stored in `stock_movements.kind`.
    pub fn kind(self) -> &'static str {
        match self {
            Movement::Receipt(_) => "receipt",
            Movement::Adjustment(_) => "adjustment",
            Movement::Reservation(_) => "reservation",
            Movement::Release(_) => "release",
            Movement::Consumption { .. } => "consumption",
        }
    }
}

/// What a movement changes: the deltas the ledger row records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Delta {
    pub on_hand: i64,
    pub reserved: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("quantity must be a positive whole number")]
    NotPositive,
    #[error("an adjustment must change the count (a non-zero amount)")]
    ZeroAdjustment,
    #[error("quantity is too large")]
    TooLarge,
    #[error(
        "not enough stock: {available} available at this location (on hand {on_hand}, reserved {reserved}), {asked} asked"
    )]
    NotEnough {
        available: i64,
        on_hand: i64,
        reserved: i64,
        asked: i64,
    },
    #[error("the count would go below zero ({on_hand} on hand, {reserved} reserved)")]
    BelowZero { on_hand: i64, reserved: i64 },
    #[error("only {reserved} are reserved; cannot release {asked}")]
    ReleaseMoreThanReserved { reserved: i64, asked: i64 },
}

/// The largest quantity one movement may carry: far beyond any stock, far from overflow.
pub const MAX_QUANTITY: i64 = 1_000_000_000_000;

fn positive(q: i64) -> Result<i64, InventoryError> {
    if q <= 0 {
        Err(InventoryError::NotPositive)
    } else if q > MAX_QUANTITY {
        Err(InventoryError::TooLarge)
    } else {
        Ok(q)
    }
}

/// The stock after `movement`, and the deltas to record; refused when it would break an
/// invariant. `allow_negative`: the part may go below zero (e.g. consumed before the receipt
/// is booked).
pub fn apply(
    stock: Stock,
    movement: Movement,
    allow_negative: bool,
) -> Result<(Stock, Delta), InventoryError> {
    let delta = match movement {
        Movement::Receipt(q) => Delta {
            on_hand: positive(q)?,
            reserved: 0,
        },
        Movement::Adjustment(0) => return Err(InventoryError::ZeroAdjustment),
        Movement::Adjustment(q) => {
            if q.abs() > MAX_QUANTITY {
                return Err(InventoryError::TooLarge);
            }
            Delta {
                on_hand: q,
                reserved: 0,
            }
        }
        Movement::Reservation(q) => {
            let q = positive(q)?;
            if !allow_negative && stock.available() < q {
                return Err(not_enough(stock, q));
            }
            Delta {
                on_hand: 0,
                reserved: q,
            }
        }
        Movement::Release(q) => {
            let q = positive(q)?;
            if q > stock.reserved {
                return Err(InventoryError::ReleaseMoreThanReserved {
                    reserved: stock.reserved,
                    asked: q,
                });
            }
            Delta {
                on_hand: 0,
                reserved: -q,
            }
        }
        Movement::Consumption { quantity, reserved } => {
            let quantity = positive(quantity)?;
            if reserved < 0 || reserved > quantity || reserved > stock.reserved {
                return Err(InventoryError::ReleaseMoreThanReserved {
                    reserved: stock.reserved,
                    asked: reserved,
                });
            }
            // What is used beyond its reservation must be available.
            let unplanned = quantity - reserved;
            if !allow_negative && stock.available() < unplanned {
                return Err(not_enough(stock, unplanned));
            }
            Delta {
                on_hand: -quantity,
                reserved: -reserved,
            }
        }
    };
    let after = Stock {
        on_hand: stock.on_hand + delta.on_hand,
        reserved: stock.reserved + delta.reserved,
    };
    if !allow_negative && (after.on_hand < 0 || after.reserved > after.on_hand) {
        return Err(InventoryError::BelowZero {
            on_hand: stock.on_hand,
            reserved: stock.reserved,
        });
    }
    Ok((after, delta))
}

fn not_enough(stock: Stock, asked: i64) -> InventoryError {
    InventoryError::NotEnough {
        available: stock.available(),
        on_hand: stock.on_hand,
        reserved: stock.reserved,
        asked,
    }
}

/// Whether a change from `before` to `after` crosses the reorder point downwards: what is
/// available drops to or below it from above. Reported once per crossing, not at every
/// movement below it.
pub fn crosses_reorder_point(before: Stock, after: Stock, reorder_point: Option<i64>) -> bool {
    reorder_point.is_some_and(|point| before.available() > point && after.available() <= point)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn movement() -> impl Strategy<Value = Movement> {
        prop_oneof![
            (1i64..50).prop_map(Movement::Receipt),
            (-30i64..30).prop_map(Movement::Adjustment),
            (1i64..40).prop_map(Movement::Reservation),
            (1i64..40).prop_map(Movement::Release),
            (1i64..40, 0i64..40).prop_map(|(quantity, reserved)| Movement::Consumption {
                quantity,
                reserved: reserved.min(quantity),
            }),
        ]
    }

    proptest! {
        /// Whatever sequence of movements is attempted, the accepted ones keep every invariant
        /// and the ledger of their deltas sums to the stock.
        #[test]
        fn the_ledger_sums_to_the_stock_and_stock_stays_valid(
            moves in proptest::collection::vec(movement(), 0..200),
            allow_negative in any::<bool>(),
        ) {
            let mut stock = Stock::default();
            let mut ledger = Vec::new();
            for m in moves {
                if let Ok((after, delta)) = apply(stock, m, allow_negative) {
                    prop_assert_eq!(after.on_hand, stock.on_hand + delta.on_hand);
                    ledger.push(delta);
                    stock = after;
                }
                prop_assert!(stock.reserved >= 0);
                if !allow_negative {
                    prop_assert!(stock.on_hand >= 0, "{:?}", stock);
                    prop_assert!(stock.reserved <= stock.on_hand, "{:?}", stock);
                }
            }
            let on_hand: i64 = ledger.iter().map(|d| d.on_hand).sum();
            let reserved: i64 = ledger.iter().map(|d| d.reserved).sum();
            prop_assert_eq!(Stock { on_hand, reserved }, stock);
        }

        /// A refused movement changes nothing: `apply` is all or nothing.
        #[test]
        fn a_refused_movement_changes_nothing(
            on_hand in 0i64..100, reserved in 0i64..100, m in movement(),
        ) {
            let stock = Stock { on_hand: on_hand.max(reserved), reserved };
            if let Err(e) = apply(stock, m, false) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    #[test]
    fn reservations_need_available_stock_unless_negative_is_allowed() {
        let stock = Stock {
            on_hand: 5,
            reserved: 3,
        };
        assert_eq!(
            apply(stock, Movement::Reservation(3), false),
            Err(InventoryError::NotEnough {
                available: 2,
                on_hand: 5,
                reserved: 3,
                asked: 3
            })
        );
        let (after, _) = apply(stock, Movement::Reservation(3), true).unwrap();
        assert_eq!(after.available(), -1);
    }

    #[test]
    fn consumption_uses_its_reservation_first() {
        let stock = Stock {
            on_hand: 10,
            reserved: 4,
        };
        let (after, delta) = apply(
            stock,
            Movement::Consumption {
                quantity: 6,
                reserved: 4,
            },
            false,
        )
        .unwrap();
        assert_eq!(
            after,
            Stock {
                on_hand: 4,
                reserved: 0
            }
        );
        assert_eq!(
            delta,
            Delta {
                on_hand: -6,
                reserved: -4
            }
        );
        // Beyond what is available without a reservation: refused.
        assert!(
            apply(
                after,
                Movement::Consumption {
                    quantity: 5,
                    reserved: 0
                },
                false
            )
            .is_err()
        );
    }

    #[test]
    fn an_adjustment_may_not_count_below_the_reservations() {
        let stock = Stock {
            on_hand: 5,
            reserved: 4,
        };
        assert!(matches!(
            apply(stock, Movement::Adjustment(-2), false),
            Err(InventoryError::BelowZero { .. })
        ));
        assert_eq!(
            apply(stock, Movement::Adjustment(0), false),
            Err(InventoryError::ZeroAdjustment)
        );
        assert_eq!(
            apply(stock, Movement::Receipt(0), false),
            Err(InventoryError::NotPositive)
        );
    }

    #[test]
    fn the_reorder_point_is_reported_when_crossed_not_below_it() {
        let s = |on_hand| Stock {
            on_hand,
            reserved: 0,
        };
        assert!(crosses_reorder_point(s(6), s(5), Some(5)));
        assert!(!crosses_reorder_point(s(5), s(4), Some(5)));
        assert!(!crosses_reorder_point(s(9), s(6), Some(5)));
        assert!(!crosses_reorder_point(s(6), s(0), None));
    }
}

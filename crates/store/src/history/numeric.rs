//! A `Decimal` written as Postgres `NUMERIC` (binary format) without allocating.
//!
//! sqlx encodes a `Decimal` by dividing its 128-bit mantissa by 10 000 repeatedly into a fresh
//! `Vec` of base-10 000 digits: two allocations and a handful of 128-bit divisions per value,
//! which made encoding the trade writer's two decimals per row the largest cost of a node at
//! 400 k trades/s. Prices and quantities from an exchange have mantissas far below 2^64, so
//! [`FastNumeric`] splits those with 64-bit arithmetic straight into the argument buffer (the
//! exact same bytes), and falls back to sqlx's encoder for anything larger.

use rust_decimal::Decimal;
use sqlx::encode::{Encode, IsNull};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, Postgres};

/// A `Decimal` bound as `NUMERIC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastNumeric(pub Decimal);

impl sqlx::Type<Postgres> for FastNumeric {
    fn type_info() -> PgTypeInfo {
        <Decimal as sqlx::Type<Postgres>>::type_info()
    }
}

impl PgHasArrayType for FastNumeric {
    fn array_type_info() -> PgTypeInfo {
        <Decimal as PgHasArrayType>::array_type_info()
    }
}

impl Encode<'_, Postgres> for FastNumeric {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        let d = self.0;
        let m = d.mantissa().unsigned_abs();
        let scale = d.scale();
        // 10^3 × mantissa must fit u64 (the fractional digits are padded to a multiple of 4).
        if d.is_zero() || m > u128::from(u64::MAX / 1000) {
            return <Decimal as Encode<'_, Postgres>>::encode_by_ref(&d, buf);
        }
        let pad = (4 - scale % 4) % 4;
        let mut v = (m as u64) * 10u64.pow(pad);
        // At most 20 decimal digits → 5 base-10 000 digits; least significant first.
        let mut digits = [0i16; 5];
        let mut n = 0;
        while v != 0 {
            digits[n] = (v % 10_000) as i16;
            v /= 10_000;
            n += 1;
        }
        let frac_groups = scale.div_ceil(4) as i16;
        let weight = n as i16 - frac_groups - 1;
        // Trailing zero groups (the least significant ones) are not sent, as sqlx does.
        let mut low = 0;
        while low < n && digits[low] == 0 {
            low += 1;
        }
        let count = (n - low) as i16;
        buf.extend_from_slice(&count.to_be_bytes());
        buf.extend_from_slice(&weight.to_be_bytes());
        let sign: u16 = if d.is_sign_negative() { 0x4000 } else { 0 };
        buf.extend_from_slice(&sign.to_be_bytes());
        buf.extend_from_slice(&(scale as u16).to_be_bytes());
        for g in digits[low..n].iter().rev() {
            buf.extend_from_slice(&g.to_be_bytes());
        }
        Ok(IsNull::No)
    }

    fn size_hint(&self) -> usize {
        8 + 2 * 5
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn bytes_of<T: for<'q> Encode<'q, Postgres>>(v: &T) -> Vec<u8> {
        let mut b = PgArgumentBuffer::default();
        let _ = v.encode_by_ref(&mut b).unwrap();
        b.to_vec()
    }

    #[test]
    fn same_bytes_as_sqlx_for_exchange_values() {
        for s in [
            "90000.01000000",
            "0.00123000",
            "1",
            "10000",
            "0.0001",
            "123456789.123456789",
            "-42.5",
            "0",
            "79228162514264337593543950335",
            "0.0000000000000000000000000001",
        ] {
            let d = Decimal::from_str(s).unwrap();
            assert_eq!(bytes_of(&FastNumeric(d)), bytes_of(&d), "{s}");
        }
    }

    proptest! {
        #[test]
        fn same_bytes_as_sqlx(m in any::<i64>(), scale in 0u32..=18) {
            let d = Decimal::new(m, scale);
            prop_assert_eq!(bytes_of(&FastNumeric(d)), bytes_of(&d));
        }
    }
}

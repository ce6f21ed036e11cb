//! Hand-rolled decoder for the one frame shape the exchange actually sends on the hot path.
//!
//! `serde_json` spends most of its time on generic machinery (identifier matching per key,
//! `Option` wrappers, escape scanning with UTF-8 checks): about half of the node's CPU per trade
//! at 400 k trades/s. The exchange renders trade events compactly and always the same way, so
//! this decoder recognises exactly that shape: no whitespace, no escapes, keys from the known
//! set (unknown keys with a plain scalar value are skipped, as serde skips them), non-negative
//! integer ids and times, decimal strings. On *anything* else it returns `None` and the caller
//! uses the serde path, so its answer, when it gives one, is by construction the serde answer
//! (the differential property test in `ws.rs` checks that on generated and mutated frames).

use std::str::FromStr;

use rust_decimal::Decimal;

use super::EventRef;

/// The event of a raw (`{"e":…}`) or combined (`{"stream":…,"data":{…}}`) frame, or `None`
/// when the frame is not in the canonical shape.
pub(super) fn event(frame: &str) -> Option<EventRef<'_>> {
    let mut c = Cursor {
        s: frame,
        b: frame.as_bytes(),
        i: 0,
    };
    let ev = if c.eat(b"{\"stream\":") {
        c.string()?;
        if !c.eat(b",\"data\":") {
            return None;
        }
        let ev = object(&mut c)?;
        if !c.eat(b"}") {
            return None;
        }
        ev
    } else {
        object(&mut c)?
    };
    (c.i == c.b.len()).then_some(ev)
}

struct Cursor<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn eat(&mut self, lit: &[u8]) -> bool {
        let hit = self.b[self.i..].starts_with(lit);
        if hit {
            self.i += lit.len();
        }
        hit
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        if !self.eat(b"\"") {
            return None;
        }
        let start = self.i;
        let n = self.b[start..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if self.b[start + n] != b'"' {
            return None;
        }
        self.i = start + n + 1;
        // Both ends sit next to an ASCII quote, so these are char boundaries.
        Some(&self.s[start..start + n])
    }

    /// Digits only; a leading zero ends the number (JSON forbids `01`, and the caller's next
    /// `eat` then fails, handing the frame to serde).
    fn uint(&mut self) -> Option<u64> {
        let first = *self.b.get(self.i)?;
        if !first.is_ascii_digit() {
            return None;
        }
        self.i += 1;
        let mut v = u64::from(first - b'0');
        if first == b'0' {
            return Some(0);
        }
        while let Some(&d) = self.b.get(self.i) {
            if !d.is_ascii_digit() {
                break;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.i += 1;
        }
        Some(v)
    }

    fn int(&mut self) -> Option<i64> {
        i64::try_from(self.uint()?).ok()
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.eat(b"true") {
            Some(true)
        } else if self.eat(b"false") {
            Some(false)
        } else {
            None
        }
    }

    fn decimal(&mut self) -> Option<Decimal> {
        // serde's visitor tries `from_str` first, so a success here is its answer too.
        Decimal::from_str(self.string()?).ok()
    }

    /// The value of a key `EventRef` does not read: a plain scalar, else give up.
    fn skip_scalar(&mut self) -> Option<()> {
        match *self.b.get(self.i)? {
            b'"' => self.string().map(drop),
            b'-' => {
                self.i += 1;
                self.uint().map(drop)
            }
            b't' | b'f' => self.boolean().map(drop),
            b'n' => self.eat(b"null").then_some(()),
            _ => self.uint().map(drop),
        }
    }
}

fn object<'a>(c: &mut Cursor<'a>) -> Option<EventRef<'a>> {
    if !c.eat(b"{") {
        return None;
    }
    let mut ev = EventRef::default();
    // serde rejects a repeated known field; leave that (and its message) to serde.
    let mut seen = 0u16;
    let mut mark = |bit: u16| {
        let dup = seen & (1 << bit) != 0;
        seen |= 1 << bit;
        (!dup).then_some(())
    };
    loop {
        let key = c.string()?;
        if !c.eat(b":") {
            return None;
        }
        match key {
            "e" => {
                mark(0)?;
                ev.event_type = Some(c.string()?);
            }
            "E" => {
                mark(1)?;
                ev.event_time = Some(c.int()?);
            }
            "s" => {
                mark(2)?;
                ev.symbol = Some(c.string()?);
            }
            "t" => {
                mark(3)?;
                ev.trade_id = Some(c.uint()?);
            }
            "a" => {
                mark(4)?;
                ev.agg_id = Some(c.uint()?);
            }
            "p" => {
                mark(5)?;
                ev.price = Some(c.decimal()?);
            }
            "q" => {
                mark(6)?;
                ev.qty = Some(c.decimal()?);
            }
            "T" => {
                mark(7)?;
                ev.trade_time = Some(c.int()?);
            }
            "m" => {
                mark(8)?;
                ev.buyer_is_maker = Some(c.boolean()?);
            }
            // Reply fields: rare, and their values are not scalars we skip.
            "id" | "code" | "msg" => return None,
            _ => c.skip_scalar()?,
        }
        if c.eat(b",") {
            continue;
        }
        return c.eat(b"}").then_some(ev);
    }
}

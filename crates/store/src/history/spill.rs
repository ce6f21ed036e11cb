//! The trade writer's overflow: when Postgres is slower than ingestion (or down) and the
//! in-memory queue is full, chunks of rows are appended to files in `trades.spill_dir` instead
//! of being dropped, and read back once the queue has room. Rows still queued at shutdown are
//! spilled too, and a restarted process replays whatever it finds, so a Postgres outage loses
//! nothing as long as the disk budget (`trades.spill_max_bytes`) lasts.
//!
//! Files are `spill-<seq>.bin`, each a sequence of chunks: `u32` row count, then the rows
//! (market `u8`, symbol length `u8` + bytes, trade id `u64`, ts `i64`, price and qty as the 16
//! bytes of `Decimal::serialize`, buyer-is-maker `u8`), little-endian. A file is deleted once
//! every chunk in it was handed back; a torn tail (crash while appending) ends the replay of
//! that file. Writes are plain buffered appends: a spill exists to survive a database outage,
//! not a power cut, and losing the page cache then is covered by REST reconciliation.
//!
//! The directory belongs to one cluster: a file `OWNER` names it (database address and Redis
//! key prefix, no credentials). Files found under another owner, say a directory reused after
//! the database was replaced, are moved to `foreign-<ms>/` and never replayed: writing one
//! cluster's trades into another's history would be silent corruption.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pricefeed_domain::instrument::Market;
use rust_decimal::Decimal;

use super::writer::TradeRow;

/// A file grows to this size before the next one is started.
const FILE_BYTES: u64 = 16 << 20;

/// On-disk overflow queue (used by the writer task only).
#[derive(Debug)]
pub struct Spill {
    dir: PathBuf,
    max_bytes: u64,
    /// Files in order, oldest first: (seq, bytes).
    files: VecDeque<(u64, u64)>,
    next_seq: u64,
    /// Open reader of the oldest file, while replaying it.
    reader: Option<(u64, BufReader<File>)>,
    bytes: u64,
    rows: u64,
}

/// The disk budget is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpillFull;

impl Spill {
    /// Opens `dir` (created if missing) for the cluster `owner` and picks up the files a
    /// previous run of the same cluster left behind.
    pub fn open(dir: &Path, max_bytes: u64, owner: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let owner_file = dir.join("OWNER");
        match std::fs::read_to_string(&owner_file) {
            Ok(found) if found.trim_end() == owner => {}
            Ok(found) => {
                let aside = set_aside(dir)?;
                tracing::error!(
                    found = found.trim_end(),
                    expected = owner,
                    moved_to = ?aside,
                    "the trade spill directory held another cluster's files; they are set aside, not replayed"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Files without an owner predate the OWNER file: nobody can tell whose they are.
                let aside = set_aside(dir)?;
                if aside.is_some() {
                    tracing::error!(moved_to = ?aside, "unowned trade spill files set aside, not replayed");
                }
            }
            Err(e) => return Err(e),
        }
        std::fs::write(&owner_file, format!("{owner}\n"))?;
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let Some(seq) = spill_seq(&e.file_name()) else {
                continue;
            };
            files.push((seq, e.metadata()?.len()));
        }
        files.sort();
        let bytes = files.iter().map(|f| f.1).sum();
        let next_seq = files.last().map_or(0, |f| f.0 + 1);
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            files: files.into(),
            next_seq,
            reader: None,
            bytes,
            rows: 0,
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("spill-{seq:012}.bin"))
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether anything is waiting on disk.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Rows appended by this process (metric).
    pub fn rows_spilled(&self) -> u64 {
        self.rows
    }

    /// Appends one chunk; refuses when the budget would be exceeded.
    pub fn append(&mut self, rows: &[TradeRow]) -> Result<(), SpillFull> {
        if rows.is_empty() {
            return Ok(());
        }
        let buf = encode(rows);
        if self.bytes + buf.len() as u64 > self.max_bytes {
            return Err(SpillFull);
        }
        // Never append to the file being replayed: start a new one instead.
        let reading = self.reader.as_ref().map(|r| r.0);
        let seq = match self.files.back() {
            Some(&(seq, len)) if len < FILE_BYTES && Some(seq) != reading => seq,
            _ => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.files.push_back((seq, 0));
                seq
            }
        };
        let res = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(seq))
            .and_then(|mut f| f.write_all(&buf));
        if let Err(e) = res {
            tracing::error!(error = %e, dir = %self.dir.display(), "cannot write the trade spill file");
            return Err(SpillFull);
        }
        if let Some(last) = self.files.back_mut() {
            last.1 += buf.len() as u64;
        }
        self.bytes += buf.len() as u64;
        self.rows += rows.len() as u64;
        Ok(())
    }

    /// The next chunk from disk, oldest first; a file is deleted once read to its end. Rows read
    /// here are the caller's to write (or to spill again).
    pub fn pop(&mut self) -> Option<Vec<TradeRow>> {
        loop {
            if self.reader.is_none() {
                let &(seq, _) = self.files.front()?;
                match File::open(self.path(seq)) {
                    Ok(f) => self.reader = Some((seq, BufReader::new(f))),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot open a trade spill file; skipping it");
                        self.finish_front();
                        continue;
                    }
                }
            }
            let (_, r) = self.reader.as_mut().expect("opened above");
            match decode_chunk(r) {
                Ok(Some(rows)) => return Some(rows),
                Ok(None) => self.finish_front(),
                Err(e) => {
                    tracing::warn!(error = %e, "torn trade spill file; the rest of it is skipped (reconciliation refills it)");
                    self.finish_front();
                }
            }
        }
    }

    fn finish_front(&mut self) {
        self.reader = None;
        if let Some((seq, len)) = self.files.pop_front() {
            let _ = std::fs::remove_file(self.path(seq));
            self.bytes = self.bytes.saturating_sub(len);
        }
    }
}

fn spill_seq(name: &std::ffi::OsStr) -> Option<u64> {
    name.to_str()
        .and_then(|n| n.strip_prefix("spill-"))
        .and_then(|n| n.strip_suffix(".bin"))
        .and_then(|n| n.parse::<u64>().ok())
}

/// Moves the spill files of `dir` into a fresh `foreign-<ms>/` beside them; `None` when there
/// were none.
fn set_aside(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if spill_seq(&e.file_name()).is_some() {
            found.push(e.file_name());
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let aside = dir.join(format!("foreign-{ms}"));
    std::fs::create_dir_all(&aside)?;
    for f in found {
        std::fs::rename(dir.join(&f), aside.join(&f))?;
    }
    Ok(Some(aside))
}

/// A short stable name for a cluster identity (FNV-1a, hex), for directory names.
pub fn owner_tag(owner: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in owner.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn encode(rows: &[TradeRow]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + rows.len() * 64);
    b.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for r in rows {
        b.push(match r.market {
            Market::Spot => 0,
            Market::Usdm => 1,
            Market::Options => 2,
        });
        let s = r.symbol.as_bytes();
        b.push(s.len().min(255) as u8);
        b.extend_from_slice(&s[..s.len().min(255)]);
        b.extend_from_slice(&r.trade_id.to_le_bytes());
        b.extend_from_slice(&r.ts_ms.to_le_bytes());
        b.extend_from_slice(&r.price.serialize());
        b.extend_from_slice(&r.qty.serialize());
        b.push(u8::from(r.buyer_is_maker));
    }
    b
}

fn decode_chunk(r: &mut impl Read) -> std::io::Result<Option<Vec<TradeRow>>> {
    let mut n = [0u8; 4];
    match r.read_exact(&mut n) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(n) as usize;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut rows: Vec<TradeRow> = Vec::with_capacity(n.min(1 << 20));
    let mut sym = Vec::with_capacity(32);
    let mut seen: Vec<(Market, Arc<str>)> = Vec::new();
    for _ in 0..n {
        let mut h = [0u8; 2];
        r.read_exact(&mut h)?;
        let market = match h[0] {
            0 => Market::Spot,
            1 => Market::Usdm,
            2 => Market::Options,
            _ => return Err(bad("bad market byte")),
        };
        sym.resize(h[1] as usize, 0);
        r.read_exact(&mut sym)?;
        let sym = std::str::from_utf8(&sym).map_err(|_| bad("bad symbol"))?;
        // A chunk holds the same few instruments over and over: share their symbols.
        let symbol = match seen.iter().find(|(m, s)| *m == market && **s == *sym) {
            Some((_, s)) => s.clone(),
            None => {
                let s: Arc<str> = Arc::from(sym);
                if seen.len() < 32 {
                    seen.push((market, s.clone()));
                }
                s
            }
        };
        let mut f = [0u8; 8 + 8 + 16 + 16 + 1];
        r.read_exact(&mut f)?;
        let id = u64::from_le_bytes(f[0..8].try_into().expect("8 bytes"));
        let ts = i64::from_le_bytes(f[8..16].try_into().expect("8 bytes"));
        let price = Decimal::deserialize(f[16..32].try_into().expect("16 bytes"));
        let qty = Decimal::deserialize(f[32..48].try_into().expect("16 bytes"));
        rows.push(TradeRow {
            market,
            symbol,
            trade_id: id,
            price,
            qty,
            ts_ms: ts,
            buyer_is_maker: f[48] != 0,
        });
    }
    Ok(Some(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64) -> TradeRow {
        TradeRow {
            market: if id.is_multiple_of(2) {
                Market::Spot
            } else {
                Market::Options
            },
            symbol: Arc::from(if id.is_multiple_of(2) {
                "BTCUSDT"
            } else {
                "BTC-261225-90000-C"
            }),
            trade_id: id,
            price: Decimal::new(9_000_012_345 + id as i64, 5),
            qty: Decimal::new(123, 8),
            ts_ms: 1_767_225_600_000 + id as i64,
            buyer_is_maker: id.is_multiple_of(3),
        }
    }

    const OWNER: &str = "postgres://pricefeed@127.0.0.1:5432/a#pf";

    fn spill_files(d: &Path) -> usize {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| spill_seq(&e.as_ref().unwrap().file_name()).is_some())
            .count()
    }

    #[test]
    fn another_clusters_files_are_set_aside_not_replayed() {
        let d = dir("owner");
        let mut s = Spill::open(&d, 1 << 20, OWNER).unwrap();
        s.append(&(0..10).map(row).collect::<Vec<_>>()).unwrap();
        drop(s);
        // Same directory, another database: nothing is replayed, the files are kept aside.
        let mut other =
            Spill::open(&d, 1 << 20, "postgres://pricefeed@127.0.0.1:5432/b#pf").unwrap();
        assert!(other.is_empty());
        assert!(other.pop().is_none());
        let aside: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("foreign-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(spill_files(&d.join(&aside[0])), 1);
        // Its own files are replayed by the owner.
        other.append(&(0..3).map(row).collect::<Vec<_>>()).unwrap();
        drop(other);
        let mut again =
            Spill::open(&d, 1 << 20, "postgres://pricefeed@127.0.0.1:5432/b#pf").unwrap();
        assert_eq!(again.pop().unwrap().len(), 3);
        assert_ne!(owner_tag("a"), owner_tag("b"));
        let _ = std::fs::remove_dir_all(&d);
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pf-spill-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_in_order_across_reopen_and_budget() {
        let d = dir("rt");
        let mut s = Spill::open(&d, 1 << 20, OWNER).unwrap();
        assert!(s.is_empty());
        let a: Vec<TradeRow> = (0..100).map(row).collect();
        let b: Vec<TradeRow> = (100..150).map(row).collect();
        s.append(&a).unwrap();
        s.append(&b).unwrap();
        assert!(s.bytes() > 0);
        drop(s);
        // A restarted process finds both chunks, in order.
        let mut s = Spill::open(&d, 1 << 20, OWNER).unwrap();
        let got = s.pop().unwrap();
        assert_eq!(got.len(), 100);
        assert_eq!(got[7].trade_id, 7);
        assert_eq!(got[7].price, a[7].price);
        assert_eq!(&*got[7].symbol, "BTC-261225-90000-C");
        assert!(got[6].buyer_is_maker);
        // Appending while replaying goes to a new file, read after the current one.
        s.append(&a[..3]).unwrap();
        assert_eq!(s.pop().unwrap()[0].trade_id, 100);
        assert_eq!(s.pop().unwrap().len(), 3);
        assert!(s.pop().is_none());
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        assert_eq!(spill_files(&d), 0, "files deleted");
        // The budget refuses instead of growing.
        let mut small = Spill::open(&d, 200, OWNER).unwrap();
        assert_eq!(small.append(&a), Err(SpillFull));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_tail_ends_the_file() {
        let d = dir("torn");
        let mut s = Spill::open(&d, 1 << 20, OWNER).unwrap();
        s.append(&(0..10).map(row).collect::<Vec<_>>()).unwrap();
        s.append(&(10..20).map(row).collect::<Vec<_>>()).unwrap();
        drop(s);
        let f = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| spill_seq(&e.file_name()).is_some())
            .unwrap()
            .path();
        let len = std::fs::metadata(&f).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let mut s = Spill::open(&d, 1 << 20, OWNER).unwrap();
        assert_eq!(s.pop().unwrap().len(), 10);
        assert!(s.pop().is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}

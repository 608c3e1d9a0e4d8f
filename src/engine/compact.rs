//! Compact containers for per-account and per-event state: fewer heap allocations, so fewer
//! cache misses per event and fewer bytes per account.
//!
//! Owns: [`ShortStr`] (a string kept inline when short), [`Draws`] (a charge's draws, the first
//! one inline) and [`AccountIndex`] (account id → slot, an open-addressing table of slots that
//! compares ids in the accounts themselves).
//!
//! Must never: change what they hold or how it serializes: `ShortStr` serializes as a string,
//! `Draws` as a sequence, exactly as the `Box<str>` and `Vec` they replace.
//!
//! Invariants: `ShortStr::Inline` holds valid UTF-8 of at most [`ShortStr::INLINE_MAX`] bytes;
//! `Draws::Inline` has `len <= 1`; every bucket of an [`AccountIndex`] is empty or names a slot
//! whose account id hashes to that bucket's tag.

use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::decimal::{Credits, Price};

/// Asks the CPU to start loading the cache line at `address`, so a miss overlaps other work.
/// Changes nothing: a prefetch is a hint, and never faults, whatever the address.
#[inline(always)]
pub fn prefetch<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only hints the cache; it reads nothing the program can observe and
    // cannot fault on any address. SSE is part of the x86_64 baseline.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(address.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// A string stored inline (no allocation) when at most 22 bytes long, else boxed.
#[derive(Clone)]
pub enum ShortStr {
    Inline {
        len: u8,
        bytes: [u8; ShortStr::INLINE_MAX],
    },
    Heap(Box<str>),
}

impl ShortStr {
    pub const INLINE_MAX: usize = 22;

    pub fn new(text: &str) -> ShortStr {
        if text.len() <= Self::INLINE_MAX {
            let mut bytes = [0u8; Self::INLINE_MAX];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            ShortStr::Inline {
                len: text.len() as u8,
                bytes,
            }
        } else {
            ShortStr::Heap(text.into())
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            ShortStr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            ShortStr::Heap(text) => text.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ShortStr::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)])
                .expect("an inline string is copied from a str"),
            ShortStr::Heap(text) => text,
        }
    }
}

impl From<&str> for ShortStr {
    fn from(text: &str) -> ShortStr {
        ShortStr::new(text)
    }
}

impl Deref for ShortStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for ShortStr {
    fn eq(&self, other: &ShortStr) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ShortStr {}

impl PartialOrd for ShortStr {
    fn partial_cmp(&self, other: &ShortStr) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ShortStr {
    /// The order of the strings (byte-wise, as `str`'s).
    fn cmp(&self, other: &ShortStr) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for ShortStr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ShortStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ShortStr, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(ShortStr::new(&text))
    }
}

/// One draw of a charge: (grant serial, credits drawn, that grant's cost basis).
pub type Draw = (u32, Credits, Price);

/// A charge's draws: almost always one, kept inline; more spill to a `Vec`.
#[derive(Clone)]
pub enum Draws {
    Inline { len: u8, draw: Draw },
    Heap(Vec<Draw>),
}

impl Default for Draws {
    fn default() -> Draws {
        Draws::Inline {
            len: 0,
            draw: (0, Credits::ZERO, Price::ZERO),
        }
    }
}

impl Draws {
    pub fn new() -> Draws {
        Draws::default()
    }

    pub fn push(&mut self, draw: Draw) {
        match self {
            Draws::Inline {
                len: len @ 0,
                draw: slot,
            } => {
                *slot = draw;
                *len = 1;
            }
            Draws::Inline { draw: first, .. } => {
                *self = Draws::Heap(vec![*first, draw]);
            }
            Draws::Heap(all) => all.push(draw),
        }
    }
}

impl Deref for Draws {
    type Target = [Draw];
    fn deref(&self) -> &[Draw] {
        match self {
            Draws::Inline { len, draw } => &std::slice::from_ref(draw)[..usize::from(*len)],
            Draws::Heap(all) => all,
        }
    }
}

impl DerefMut for Draws {
    fn deref_mut(&mut self) -> &mut [Draw] {
        match self {
            Draws::Inline { len, draw } => &mut std::slice::from_mut(draw)[..usize::from(*len)],
            Draws::Heap(all) => all,
        }
    }
}

impl<'a> IntoIterator for &'a Draws {
    type Item = &'a Draw;
    type IntoIter = std::slice::Iter<'a, Draw>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl From<Vec<Draw>> for Draws {
    fn from(all: Vec<Draw>) -> Draws {
        let mut draws = Draws::new();
        for draw in all {
            draws.push(draw);
        }
        draws
    }
}

impl PartialEq for Draws {
    fn eq(&self, other: &Draws) -> bool {
        **self == **other
    }
}

impl fmt::Debug for Draws {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl Serialize for Draws {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Draws {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Draws, D::Error> {
        Vec::<Draw>::deserialize(deserializer).map(Draws::from)
    }
}

/// Account id → slot in the partition's accounts. Linear probing over `u64` buckets, each 0
/// (empty) or `tag << 32 | (slot + 1)`, where the tag is the high half of the id's xxh3-64 and
/// the start bucket its low bits. The ids themselves live in the accounts (compared there, only
/// on a tag match), so an entry costs 8 bytes / load instead of a key allocation and a
/// `(Box<str>, u32)` bucket. Accounts are never removed, so there is no deletion.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AccountIndex {
    buckets: Vec<u64>,
    len: usize,
}

impl AccountIndex {
    /// Heap bytes of the buckets.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<u64>()
    }

    /// The hash an id is found by (what [`AccountIndex::get_hashed`] and the fetching-ahead
    /// calls take, so a caller can hash once for several of them).
    pub fn hash(id: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64(id)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot of the account `id`; `id_of` gives a slot's account id.
    pub fn get<'s>(&self, id: &[u8], id_of: impl Fn(u32) -> &'s [u8]) -> Option<u32> {
        self.get_hashed(id, Self::hash(id), id_of)
    }

    /// [`AccountIndex::get`] with `hash` = [`AccountIndex::hash`]`(id)` already computed.
    pub fn get_hashed<'s>(
        &self,
        id: &[u8],
        hash: u64,
        id_of: impl Fn(u32) -> &'s [u8],
    ) -> Option<u32> {
        debug_assert_eq!(hash, Self::hash(id), "the hash of another id");
        self.probe(hash, |slot| id_of(slot) == id)
    }

    /// The first slot on the probe path of the id hashing to `hash` whose tag matches and that
    /// `accept` takes.
    fn probe(&self, hash: u64, accept: impl Fn(u32) -> bool) -> Option<u32> {
        if self.buckets.is_empty() {
            return None;
        }
        let tag = hash >> 32;
        let mask = self.buckets.len() - 1;
        let mut at = hash as usize & mask;
        loop {
            let bucket = self.buckets[at];
            if bucket == 0 {
                return None;
            }
            if bucket >> 32 == tag {
                let slot = (bucket as u32) - 1;
                if accept(slot) {
                    return Some(slot);
                }
            }
            at = (at + 1) & mask;
        }
    }

    /// Starts loading the bucket where the search for `id` begins.
    /// `hash` is [`AccountIndex::hash`] of the id.
    pub fn prefetch(&self, hash: u64) {
        if !self.buckets.is_empty() {
            let at = hash as usize & (self.buckets.len() - 1);
            prefetch(&self.buckets[at]);
        }
    }

    /// The slot of the first bucket on the probe path of the id hashing to `hash` whose tag
    /// matches, without comparing ids: almost always that id's slot, for fetching ahead only.
    pub fn first_candidate(&self, hash: u64) -> Option<u32> {
        self.probe(hash, |_| true)
    }

    /// Adds `id` (not yet present) at `slot`; `id_of` gives every indexed slot's id (to rehash
    /// when the table grows).
    pub fn insert<'s>(&mut self, id: &[u8], slot: u32, id_of: impl Fn(u32) -> &'s [u8]) {
        self.insert_hashed(Self::hash(id), slot, |slot| Self::hash(id_of(slot)));
    }

    /// [`AccountIndex::insert`] by hashes: `hash` is the new id's, `hash_of` gives a slot's
    /// (for a copy that keeps the hashes rather than the ids).
    pub fn insert_hashed(&mut self, hash: u64, slot: u32, hash_of: impl Fn(u32) -> u64) {
        assert!(slot < u32::MAX, "account slots fit 32 bits");
        // At most 3/4 full.
        if (self.len + 1) * 4 > self.buckets.len() * 3 {
            let capacity = (self.buckets.len() * 2).max(16);
            let old = std::mem::replace(&mut self.buckets, vec![0; capacity]);
            for bucket in old.into_iter().filter(|&b| b != 0) {
                let slot = (bucket as u32) - 1;
                self.place(hash_of(slot), slot);
            }
        }
        self.place(hash, slot);
        self.len += 1;
    }

    fn place(&mut self, hash: u64, slot: u32) {
        let mask = self.buckets.len() - 1;
        let mut at = hash as usize & mask;
        while self.buckets[at] != 0 {
            at = (at + 1) & mask;
        }
        self.buckets[at] = (hash >> 32) << 32 | u64::from(slot + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::Fixed;

    #[test]
    fn short_str_inline_and_heap() {
        for text in [
            "",
            "a",
            "acct_0000001",
            "exactly_22_bytes_long_",
            "a longer id than 22 bytes",
        ] {
            let s = ShortStr::new(text);
            assert_eq!(&*s, text);
            assert_eq!(s.to_string(), text);
            assert_eq!(format!("{s:?}"), format!("{text:?}"));
        }
        assert!(matches!(
            ShortStr::new("exactly_22_bytes_long_"),
            ShortStr::Inline { .. }
        ));
        assert!(matches!(
            ShortStr::new("exactly_23_bytes_long__"),
            ShortStr::Heap(_)
        ));
        assert!(ShortStr::new("ab") < ShortStr::new("b"));
        assert_eq!(
            crate::codec::encode(&ShortStr::new("acct_1")).unwrap(),
            crate::codec::encode(&Box::<str>::from("acct_1")).unwrap()
        );
    }

    #[test]
    fn draws_spill_and_serialize_as_a_vec() {
        let one = (1, Fixed(2), Price::ZERO);
        let two = (2, Fixed(3), Price::ZERO);
        let mut draws = Draws::new();
        assert!(draws.is_empty());
        draws.push(one);
        assert_eq!(&*draws, &[one]);
        draws.push(two);
        assert_eq!(&*draws, &[one, two]);
        draws[0].1 += Fixed(1);
        let vec = vec![(1, Fixed(3), Price::ZERO), two];
        assert_eq!(&*draws, vec.as_slice());
        let bytes = crate::codec::encode(&draws).unwrap();
        assert_eq!(bytes, crate::codec::encode(&vec).unwrap());
        let back: Draws = crate::codec::decode(&bytes).unwrap();
        assert_eq!(back, draws);
    }

    #[test]
    fn account_index_finds_every_id_across_growth() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("acct_{i}")).collect();
        let mut index = AccountIndex::default();
        for (slot, id) in ids.iter().enumerate() {
            assert_eq!(
                index.get(id.as_bytes(), |s| ids[s as usize].as_bytes()),
                None
            );
            index.insert(id.as_bytes(), slot as u32, |s| ids[s as usize].as_bytes());
        }
        assert_eq!(index.len(), ids.len());
        for (slot, id) in ids.iter().enumerate() {
            let found = index.get(id.as_bytes(), |s| ids[s as usize].as_bytes());
            assert_eq!(found, Some(slot as u32));
        }
        assert_eq!(index.get(b"acct_x", |s| ids[s as usize].as_bytes()), None);
    }
}

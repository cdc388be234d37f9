//! Which blocks of a disk the guest changed (written or discarded) since the map was last
//! taken: what an incremental backup copies.
//!
//! Granularity: [`DIRTY_BLOCK`] = 64 KiB of guest offsets. A 1 TiB disk takes 16 Mi bits
//! (2 MiB of memory); a guest's 4 KiB write costs at most 64 KiB of copy; filesystems group
//! their writes, so neighbouring writes share blocks. (The same granularity as QEMU's default
//! for dirty bitmaps.)
//!
//! Identity: each map has an `epoch`, unique per device created (VMM start, hot-plug, restore
//! or migration all create a new one), and a `generation` that [`DirtyMap::take`] increases.
//! A backup records both; the next increment may use the map only when the map's epoch and
//! generation are still the ones recorded, else it copies the disk whole. A map is never
//! carried in a save file or migration: a saved state can be restored more than once, or
//! after the source ran on and wrote, so no restored map could be trusted to cover every
//! write since the last backup.
//!
//! Order: a request's blocks are marked after its write or discard reached the disk (whatever
//! its outcome), so a write the disk holds is in the map taken at or after that moment; never
//! lost, at worst copied twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Bytes covered by one bit.
pub const DIRTY_BLOCK: u64 = 64 * 1024;

/// A run of dirty blocks: `count` blocks from block `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyRun {
    /// First block.
    pub first: u64,
    /// Number of blocks.
    pub count: u64,
}

/// What [`DirtyMap::take`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyTaken {
    /// The map's identity.
    pub epoch: u64,
    /// The map's generation after the take (the one before is one less).
    pub generation: u64,
    /// The dirty blocks, in order.
    pub runs: Vec<DirtyRun>,
}

/// Why [`DirtyMap::merge`] refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirtyError {
    /// The map is another (the device was recreated) or was taken again since.
    #[error(
        "the dirty map is at epoch {epoch:x} generation {generation}, not at the one given back \
         ({want_epoch:x}/{want_generation}): the next backup must copy the disk whole"
    )]
    Stale {
        /// The map's epoch.
        epoch: u64,
        /// The map's generation.
        generation: u64,
        /// The epoch given back.
        want_epoch: u64,
        /// The generation given back.
        want_generation: u64,
    },
    /// A run lies beyond the disk.
    #[error("dirty blocks {first}..+{count} are beyond the disk's {blocks} blocks")]
    OutOfRange {
        /// First block.
        first: u64,
        /// Number of blocks.
        count: u64,
        /// Blocks of the disk.
        blocks: u64,
    },
}

struct Inner {
    generation: u64,
    words: Vec<u64>,
}

/// A disk's dirty map, shared by the device (which marks) and the control thread (which takes).
pub struct DirtyMap {
    epoch: u64,
    blocks: u64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for DirtyMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyMap")
            .field("epoch", &self.epoch)
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

/// A new epoch: the clock's nanoseconds mixed with the process ID and a counter, so that no
/// two maps (in this process or another) share one.
fn new_epoch() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // SplitMix64's finaliser spreads the bits.
    let mut z = nanos ^ (u64::from(std::process::id()) << 40) ^ n.rotate_left(20);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl DirtyMap {
    /// An empty map for a disk of `bytes`, with a new epoch.
    pub fn new(bytes: u64) -> Self {
        let blocks = bytes.div_ceil(DIRTY_BLOCK);
        let words = usize::try_from(blocks.div_ceil(64)).unwrap_or(0);
        DirtyMap {
            epoch: new_epoch(),
            blocks,
            inner: Mutex::new(Inner {
                generation: 0,
                words: vec![0; words],
            }),
        }
    }

    /// The map's identity.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Blocks of the disk.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the blocks that bytes `offset..offset + len` touch.
    pub fn mark(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / DIRTY_BLOCK;
        let last = offset.saturating_add(len - 1) / DIRTY_BLOCK;
        let mut inner = self.lock();
        for b in first..=last.min(self.blocks.saturating_sub(1)) {
            if let Some(w) = usize::try_from(b / 64)
                .ok()
                .and_then(|i| inner.words.get_mut(i))
            {
                *w |= 1 << (b % 64);
            }
        }
    }

    /// Returns the dirty blocks and clears them, in one step; the generation goes up by one.
    pub fn take(&self) -> DirtyTaken {
        let mut inner = self.lock();
        let fresh = vec![0; inner.words.len()];
        let words = std::mem::replace(&mut inner.words, fresh);
        inner.generation += 1;
        let generation = inner.generation;
        drop(inner);
        DirtyTaken {
            epoch: self.epoch,
            generation,
            runs: runs(&words, self.blocks),
        }
    }

    /// Gives back what a take returned, when the copy it was for failed: its blocks are marked
    /// again and the generation goes back to the one before the take, so the next backup
    /// copies them. Refused when the map was recreated or taken again since.
    pub fn merge(&self, epoch: u64, generation: u64, runs: &[DirtyRun]) -> Result<(), DirtyError> {
        let mut inner = self.lock();
        if epoch != self.epoch || generation != inner.generation || generation == 0 {
            return Err(DirtyError::Stale {
                epoch: self.epoch,
                generation: inner.generation,
                want_epoch: epoch,
                want_generation: generation,
            });
        }
        for r in runs {
            if r.first.checked_add(r.count).is_none_or(|e| e > self.blocks) {
                return Err(DirtyError::OutOfRange {
                    first: r.first,
                    count: r.count,
                    blocks: self.blocks,
                });
            }
        }
        for r in runs {
            for b in r.first..r.first + r.count {
                if let Some(w) = usize::try_from(b / 64)
                    .ok()
                    .and_then(|i| inner.words.get_mut(i))
                {
                    *w |= 1 << (b % 64);
                }
            }
        }
        inner.generation = generation - 1;
        Ok(())
    }
}

/// The runs of set bits among the first `blocks` bits of `words`.
fn runs(words: &[u64], blocks: u64) -> Vec<DirtyRun> {
    let mut out: Vec<DirtyRun> = Vec::new();
    for (i, &w) in words.iter().enumerate() {
        if w == 0 {
            continue;
        }
        for bit in 0..64u64 {
            if w & (1 << bit) == 0 {
                continue;
            }
            let b = i as u64 * 64 + bit;
            if b >= blocks {
                break;
            }
            match out.last_mut() {
                Some(r) if r.first + r.count == b => r.count += 1,
                _ => out.push(DirtyRun { first: b, count: 1 }),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_take_and_clear() {
        let m = DirtyMap::new(10 * DIRTY_BLOCK + 1);
        assert_eq!(m.blocks(), 11);
        m.mark(0, 512);
        m.mark(DIRTY_BLOCK - 512, 1024); // straddles blocks 0 and 1
        m.mark(5 * DIRTY_BLOCK, 0);
        m.mark(10 * DIRTY_BLOCK, 4096); // the last, partial block
        m.mark(u64::MAX - 10, 100); // beyond: ignored, no overflow
        let t = m.take();
        assert_eq!(t.generation, 1);
        assert_eq!(
            t.runs,
            vec![
                DirtyRun { first: 0, count: 2 },
                DirtyRun {
                    first: 10,
                    count: 1
                }
            ]
        );
        assert!(m.take().runs.is_empty(), "a take clears the map");
    }

    #[test]
    fn merge_gives_back_only_to_the_same_map_and_generation() {
        let m = DirtyMap::new(200 * DIRTY_BLOCK);
        m.mark(70 * DIRTY_BLOCK, 3 * DIRTY_BLOCK);
        let t = m.take();
        m.mark(0, 1);
        let other = DirtyMap::new(200 * DIRTY_BLOCK);
        assert!(m.merge(other.epoch(), t.generation, &t.runs).is_err());
        let bad = [DirtyRun {
            first: 199,
            count: 2,
        }];
        assert!(matches!(
            m.merge(t.epoch, t.generation, &bad),
            Err(DirtyError::OutOfRange { .. })
        ));
        m.merge(t.epoch, t.generation, &t.runs).expect("merge");
        let again = m.take();
        assert_eq!(again.generation, t.generation, "the generation went back");
        assert_eq!(
            again.runs,
            vec![
                DirtyRun { first: 0, count: 1 },
                DirtyRun {
                    first: 70,
                    count: 3
                }
            ]
        );
        // A take since: the old one cannot come back.
        assert!(m.merge(t.epoch, t.generation - 1, &t.runs).is_err());
    }

    #[test]
    fn epochs_differ() {
        assert_ne!(DirtyMap::new(1).epoch(), DirtyMap::new(1).epoch());
    }
}

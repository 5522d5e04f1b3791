//! The blocks of one download that its readers share in memory: a fleet
//! pulling one uncached blob puts a thousand readers on the same bytes at
//! once, and each reading its own copy would hold a thousand buffers (as
//! much as ~300 KiB per slow client, queued in its connection) and make a
//! thousand page-cache reads of every block.
//!
//! A block is an aligned `BLOCK`-sized span of the blob, read once by the
//! first reader who needs it and handed to the others as slices of the
//! same allocation. It lives while any connection still holds a slice,
//! and the last few read stay alive regardless, so readers tailing the
//! download together find them.
//!
//! Only bytes the download has written are ever put in a block, and a
//! download's file only grows (a restarted source skips what is written),
//! so a block never changes once read. Tables belong to one download:
//! a failed download's blocks can never reach the readers of the next.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

/// Bytes per shared block (aligned on multiples of it in the blob).
pub const BLOCK: u64 = 256 * 1024;

/// Blocks kept alive after the connections that held them moved on.
const RECENT: usize = 4;

struct Block(Vec<u8>);

/// A block as `Bytes` holds it: the slices handed out keep it alive.
struct Held(Arc<Block>);

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.0 .0
    }
}

#[derive(Default)]
struct Table {
    live: HashMap<u64, Weak<Block>>,
    recent: VecDeque<Arc<Block>>,
    /// Entries after the last sweep of dead ones; the next sweep comes
    /// when the table has doubled, so sweeping stays linear overall.
    swept_len: usize,
}

/// The shared blocks of one download.
#[derive(Default)]
pub struct SharedBlocks {
    table: Mutex<Table>,
}

impl SharedBlocks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        match self.table.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Block `index`, if some reader still holds it.
    pub fn get(&self, index: u64) -> Option<Bytes> {
        let block = self.lock().live.get(&index)?.upgrade()?;
        Some(Bytes::from_owner(Held(block)))
    }

    /// Shares block `index` read as `data`; if another reader shared it
    /// meanwhile, theirs is returned (the same bytes) and `data` dropped.
    pub fn share(&self, index: u64, data: Vec<u8>) -> Bytes {
        let mut table = self.lock();
        if let Some(block) = table.live.get(&index).and_then(Weak::upgrade) {
            return Bytes::from_owner(Held(block));
        }
        if table.live.len() >= (2 * table.swept_len).max(64) {
            table.live.retain(|_, block| block.strong_count() > 0);
            table.swept_len = table.live.len();
        }
        let block = Arc::new(Block(data));
        table.live.insert(index, Arc::downgrade(&block));
        if table.recent.len() >= RECENT {
            table.recent.pop_front();
        }
        table.recent.push_back(Arc::clone(&block));
        Bytes::from_owner(Held(block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_get_the_first_copy_and_dead_blocks_go() {
        let blocks = SharedBlocks::default();
        assert!(blocks.get(0).is_none());
        let first = blocks.share(0, vec![1; 8]);
        let second = blocks.share(0, vec![2; 8]);
        assert_eq!(&second[..], &[1; 8], "the block already shared wins");
        assert_eq!(first.as_ptr(), second.as_ptr(), "one allocation");
        // Past the recent ones, a block nobody holds is gone.
        drop((first, second));
        for i in 1..=RECENT as u64 {
            drop(blocks.share(i, vec![0; 8]));
        }
        assert!(blocks.get(0).is_none());
        assert!(blocks.get(RECENT as u64).is_some(), "recent ones stay");
    }

    #[test]
    fn the_table_is_swept_as_it_grows() {
        let blocks = SharedBlocks::default();
        for i in 0..1000 {
            drop(blocks.share(i, vec![0; 1]));
        }
        let live = blocks.lock().live.len();
        assert!(live < 200, "{live} entries kept for {RECENT} live blocks");
    }
}

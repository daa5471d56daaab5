//! A table with one entry per tenant (or any source numbered from 0), by index, that grows
//! while the gateway runs: a reload may add tenants, and every per-tenant table must have an
//! entry for a new tenant before any request of its can reach it.

/// A table with one entry per tenant, by its index, that grows when a reload adds tenants.
/// Entries never move (`boxcar`'s append-only vector), so a reference into the table stays
/// valid while it grows, and reading an entry takes no lock.
pub struct PerTenant<T> {
    entries: boxcar::Vec<T>,
    /// Held while entries are added, so they are added in index order.
    growing: parking_lot::Mutex<()>,
}

impl<T> PerTenant<T> {
    pub fn new(entries: impl IntoIterator<Item = T>) -> Self {
        PerTenant {
            entries: entries.into_iter().collect(),
            growing: parking_lot::Mutex::new(()),
        }
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.entries.get(index)
    }

    /// The entry at `index`, made by `make` (given each missing index, in order) for it and
    /// every index before it that has none yet.
    pub fn grow_to(&self, index: usize, mut make: impl FnMut(usize) -> T) -> &T {
        if let Some(entry) = self.entries.get(index) {
            return entry;
        }
        let _one = self.growing.lock();
        while self.entries.count() <= index {
            self.entries.push(make(self.entries.count()));
        }
        &self.entries[index]
    }

    pub fn len(&self) -> usize {
        self.entries.count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, in index order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, e)| e)
    }
}

impl<T: Default> PerTenant<T> {
    /// The entry at `index`, a default one if it has none yet (a tenant a reload added).
    pub fn at(&self, index: usize) -> &T {
        self.grow_to(index, |_| T::default())
    }
}

impl<T> std::ops::Index<usize> for PerTenant<T> {
    type Output = T;

    fn index(&self, index: usize) -> &T {
        &self.entries[index]
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for PerTenant<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Threads growing the table at once each find the entry they asked for, every index is
    /// made exactly once and in order, and a reference taken before the table grew still reads
    /// the same entry.
    #[test]
    fn concurrent_growth_makes_each_index_once_and_in_order() {
        let table = PerTenant::new([0usize]);
        let first = &table[0];
        let made = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (table, made) = (&table, &made);
                s.spawn(move || {
                    for i in (t..2_000).step_by(4) {
                        let entry = table.grow_to(i, |index| {
                            made.fetch_add(1, Ordering::SeqCst);
                            index
                        });
                        assert_eq!(*entry, i);
                    }
                });
            }
        });
        assert_eq!(made.load(Ordering::SeqCst), 1_999);
        assert!(table.iter().copied().eq(0..2_000));
        assert_eq!((table.len(), *first), (2_000, 0));
    }
}

//! The distributed mode's building blocks (docs/distributed.md): the PostgreSQL archive
//! (`pg`) and the persistence worker (`worker`) that moves the partitions' work streams into it.

// redis modules: see docs/distributed.md
pub mod pg;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;

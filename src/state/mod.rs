//! Host services and cross-worker state: the clock and shared-store traits
//! (with in-memory versions for tests), the fixed-size slot tables in shared
//! data, and the replay table on top of them. The lowest layer: it imports
//! nothing else of the crate.

pub mod host;
pub mod occupancy;
pub mod replay;
pub mod slots;

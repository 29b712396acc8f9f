pub use palisade_core::hello;

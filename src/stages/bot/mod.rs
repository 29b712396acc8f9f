pub mod challenge;

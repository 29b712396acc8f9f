pub mod behaviour;

//! rafter-actors: the supervised actor tree that runs Rafter, and what the `rafter` binary needs.
#![forbid(unsafe_code)]

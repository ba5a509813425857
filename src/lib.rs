//! lode: git-native versioning for models, datasets and checkpoints.
//!
//! The module tree and the data flow of add, checkout and fsck are in
//! `docs/ARCHITECTURE.md`; byte layouts in `docs/FORMAT.md`.

pub mod audit;
pub mod chunk;
pub mod compress;
pub mod config;
pub mod durable;
pub mod filter;
pub mod fsck;
mod fuzz;
pub mod gates;
pub mod git;
pub mod id;
pub mod index;
pub mod layout;
pub mod mount;
pub mod pack;
pub mod pointer;
pub mod recipe;
pub mod remote;
pub mod statcache;
pub mod store;
pub mod transfer;

pub mod cli;

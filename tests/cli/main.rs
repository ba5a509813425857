//! lode's integration tests: one binary, driving the real `lode` against
//! real git in temporary directories.

mod common;
mod failures;
mod gates;
mod mount;
mod remote;
mod s3;
mod workflow;

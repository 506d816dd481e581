//! The slow scenarios, linked as one binary: they mostly wait for the clock (a real 5-minute
//! boundary, backfill windows due after their minute, the feed's silence timeout), so
//! `scripts/test.sh` runs this binary at the same time as `tests/suite` and the others, and the
//! suite takes the longer of the two instead of their sum. Each module is a former
//! `tests/<name>.rs`; `tests/common` is shared with the other binaries.

#[path = "../common/mod.rs"]
mod common;

mod crosscheck;
mod faults;
mod reconcile;

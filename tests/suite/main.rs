//! The integration tests of the service, linked as one binary (on two cores every linked test
//! binary costs seconds): each module is a former `tests/<name>.rs`, over real sockets, a real
//! PostgreSQL and nats-server, and the simulator; `tests/common` is compiled once for all.
//!
//! Beside it: `tests/slow` (the scenarios that wait for the clock, which `scripts/test.sh` runs
//! at the same time as this binary) and `tests/sim` (the simulator's conformance, a binary of
//! its own because one of its tests measures this process's resident memory). Run one module
//! with `cargo test --test suite <module>::`.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod board_first_load;
mod browser;
mod bus;
mod cluster;
mod docs;
mod engine;
mod engine_faults;
mod engine_sim;
mod fanout;
mod feed;
mod future_trades;
mod fuzz;
mod jwt;
mod lifecycle;
mod migrate_cli;
mod operations;
mod pages;
mod parser;
mod rest_client;
mod serve;
mod store;
mod store_e2e;
mod stream;
mod stream_churn;
mod stream_e2e;
mod supervise;

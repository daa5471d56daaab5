//! Integration tests: one binary, in-process servers on port 0, real clients.

mod accounts;
mod bad_input;
mod chaos;
mod clock_step;
mod clocks;
mod compat;
mod config;
mod dev;
mod fleet;
mod fleet_scripts;
mod gateway;
mod helpers;
mod noisy;
mod observability;
mod policy;
mod policy_oracle;
mod redis_server;
mod reload;
mod rollback;
mod sessions;
mod simulator;
mod tls;

//! Integration tests: one binary, in-process servers on port 0, real clients.

mod helpers;
mod simulator;

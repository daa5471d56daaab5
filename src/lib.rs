//! embedgate: a gateway in front of Amazon QuickSight's embed-URL APIs.
//!
//! Crate map:
//! - [`model`]     QuickSight's request shapes, their constraints, ARNs and allowed domains.
//! - [`config`]    the gateway's settings tree (process settings and the tenant table).
//! - [`settings`]  loading typed settings from TOML plus `EMBEDGATE_…` environment overrides.
//! - [`tenant`]    tenants: API-key authentication and quotas.
//! - [`policy`]    what a tenant's URLs may grant, checked on the resolved request.
//! - [`pool`]      pre-fetched URLs, each handed out at most once while fresh.
//! - [`refill`]    demand tracking and the refill planner.
//! - [`limiter`]   the inbound limit per tenant and the upstream budget per account.
//! - [`upstream`]  QuickSight through aws-sdk-quicksight; SDK errors classified once.
//! - [`shared`]    local or shared state, chosen at start-up: pool store, limits, coordination.
//! - [`fleet`]     cluster mode's Redis side: connection, Lua scripts, fence, heartbeat.
//! - [`gateway`]   the request path below HTTP: pool, miss path, refiller task.
//! - [`api`]       the native HTTP API and the admin listener.
//! - [`startup`]   the composition root: builds everything and binds the listeners.
//! - [`metrics`]   every Prometheus metric, registered once.
//! - [`clock`]     injectable wall clock.
//! - [`sim`]       the QuickSight simulator (`embedgate sim`).
//! - [`dev`]       `embedgate dev`: simulator + gateway + demo tenant, zero configuration.
//! - [`telemetry`] tracing/log setup.

pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod gateway;
pub mod limiter;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod pool;
pub mod refill;
pub mod shared;
pub mod sim;
pub mod startup;
pub mod telemetry;
pub mod tenant;
pub mod upstream;

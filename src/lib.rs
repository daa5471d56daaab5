//! embedgate: a gateway in front of Amazon QuickSight's embed-URL APIs.
//!
//! Crate map (the README's development section has the tree with every file):
//! - [`model`]     QuickSight's request shapes, their constraints, ARNs, allowed domains, and the
//!   one strict body parser.
//! - [`config`]    the settings tree (process settings, the tenant table), its loader and checks.
//! - [`tenant`]    tenants at run time: API-key authentication, quotas, authorization.
//! - [`policy`]    what a tenant's URLs may grant, checked on the resolved request.
//! - [`pool`]      pre-fetched URLs, each handed out at most once while fresh.
//! - [`refill`]    demand estimation and the planner's arithmetic.
//! - [`limiter`]   the inbound limit per tenant and the upstream budget per account.
//! - [`upstream`]  QuickSight through aws-sdk-quicksight; SDK errors classified once.
//! - [`shared`]    local or shared state, chosen at start-up: pool store, limits, coordination.
//! - [`cluster`]   cluster mode's Redis side: connection, key layout, Lua scripts, fence, heartbeat.
//! - [`gateway`]   the request path below HTTP (admit, serve) and the refiller task.
//! - [`api`]       the native HTTP API, the QuickSight-compatible listener and the admin listener.
//! - [`credentials`] tenants' SigV4 access keys: secrets derived from the master key (HKDF).
//! - [`startup`]   the composition root: builds everything and binds the listeners.
//! - [`tls`]       HTTPS on the API and compatible listeners: the certificate, reloaded when renewed.
//! - [`tasks`]     the gateway's long-running tasks, watched: one that stops fails the process.
//! - [`metrics`]   every Prometheus metric, registered once, with typed labels.
//! - [`clock`]     the one clock every time-based decision reads.
//! - [`sigv4`]     SigV4 verification (the simulator's callers, the compatible listener's tenants).
//! - [`wire`]      QuickSight's restJson1 wire format for the embed operations: routes, request
//!   parsing from path, query and body, errors as QuickSight sends them.
//! - [`sim`]       the QuickSight simulator (`embedgate sim`).
//! - [`dev`]       `embedgate dev`: simulator + gateway + demo tenant, zero configuration.
//! - [`demo`]      `embedgate dev`'s demo portal: pick a dashboard, see it embedded by the official SDK.
//! - [`telemetry`] tracing/log setup.
//! - [`http1`]     a minimal HTTP/1.0 client for the gateway's own listeners (probe, top, demo).
//! - [`top`]       `embedgate top`: a terminal view of a gateway from its admin listener.

pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod dev;
pub mod gateway;
pub mod http1;
pub mod limiter;
pub mod metrics;
pub mod model;
pub mod per_tenant;
pub mod policy;
pub mod pool;
pub mod refill;
pub mod shared;
pub mod sigv4;
pub mod sim;
pub mod startup;
pub mod tasks;
pub mod telemetry;
pub mod tenant;
pub mod tls;
pub mod top;
pub mod upstream;
pub mod wire;

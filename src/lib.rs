//! embedgate: a gateway in front of Amazon QuickSight's embed-URL APIs.
//!
//! Crate map:
//! - [`model`]    QuickSight's request shapes and the constraints QuickSight enforces on them.
//! - [`sim`]      the QuickSight simulator (`embedgate sim`): wire protocol, ledger, fault knobs.
//! - [`settings`] loading typed settings from TOML plus `EMBEDGATE_…` environment overrides.
//! - [`telemetry`] tracing/log setup.

pub mod model;
pub mod settings;
pub mod sim;
pub mod telemetry;

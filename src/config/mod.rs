//! The plugin configuration: parsed from the JSON string Envoy hands over in `on_configure`,
//! validated key by key, and reduced to plain Rust values with every default filled in.
//!
//! Errors name the key path and the problem (`policy.functions.env.max_inflight: expected a
//! positive integer, got -1`) because an operator reads them in the sidecar's log, far from the
//! manifest that caused them. Unknown keys are errors too: a typo must not silently fall back to
//! a default. Nothing here calls the host.
//!
//! The layers, each using only those below it:
//! - `parse.rs`: the driver, [`Config::parse`] and [`Config::parse_with`], one reading of the text;
//! - `sections.rs` (one function per section) and `rules.rs` (one policy entry);
//! - `obj.rs` (a JSON object read key by key) and `validate.rs` (single values);
//! - `json.rs`: the text read strictly (duplicate keys refused), `policy.functions` streamed;
//! - `error.rs`: [`ConfigError`], the key paths that name it, and how a wrong string is shown;
//! - beside them, `types.rs` (the sections and their defaults) and `keys.rs` (the keys each
//!   object accepts, [`OBJECTS`], and the ranges of the numbers).

mod error;
mod json;
mod keys;
mod obj;
mod parse;
mod rules;
mod sections;
mod types;
mod validate;

pub use error::ConfigError;
pub use keys::*;
pub use parse::Keep;
pub use types::*;
pub use validate::{is_function_name, is_request_path};

//! Validated domain types. Request shapes are parsed into these at the edge,
//! so handlers and stores never see unchecked data.
pub mod codes;
pub mod role;

pub use codes::{CodeSet, CodeSetError};
pub use role::Role;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a key may do: `clinical` covers patients, visits, predictions and
/// density scoring; `admin` covers everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Clinical,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clinical => "clinical",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "clinical" => Some(Role::Clinical),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    /// Whether a key of this role may call an operation that needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        matches!((self, needed), (Role::Admin, _) | (Role::Clinical, Role::Clinical))
    }
}

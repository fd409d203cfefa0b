//! Former home of the builders, now [`crate::build`]. Kept as re-exports of
//! the paths other crates' tests name (the proxy crate's tests grant their
//! pods [`proxy_role_rules`]), so moving the builders broke no one.

pub use crate::build::names::selector_string;
pub use crate::build::rbac::proxy_role_rules;
pub use crate::build::workload::CONFIG_HASH_ANNOTATION;
pub use crate::validate::PROXY_IMAGE_REPOSITORY;

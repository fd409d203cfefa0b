//! Former home of the builders, now [`crate::build`]. Kept as a re-export of
//! the one path another crate names: the proxy crate's tests grant their
//! pods [`proxy_role_rules`].

pub use crate::build::rbac::proxy_role_rules;

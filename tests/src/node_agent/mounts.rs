//! Volumes without mounts: the agent writes each volume's files to a
//! per-pod directory and rewrites paths.
//!
//! A process cannot see a mount at, say, /etc/zmq-proxy, so every command
//! argument and env value that *is* a mount path, starts with one (`/etc/zmq-proxy/x.conf`),
//! or has one after `=` (`--config=/etc/zmq-proxy/x.conf`) is rewritten to the
//! volume's directory on the host. The mapping is also exported as
//! `HARNESS_MOUNT_<n>=<mountPath>=<host dir>` for anything that builds paths at
//! run time.

/// One container mount: where the pod expects it, where the files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// `volumeMounts[].mountPath` (plus nothing: subPath is resolved into `host`).
    pub mount_path: String,
    /// Directory or file on the host.
    pub host: String,
}

/// Rewrites a value that names a mounted path (see the module docs).
pub fn rewrite(value: &str, mounts: &[Mount]) -> String {
    if let Some(p) = rewrite_path(value, mounts) {
        return p;
    }
    if let Some((flag, rest)) = value.split_once('=') {
        if let Some(p) = rewrite_path(rest, mounts) {
            return format!("{flag}={p}");
        }
    }
    value.to_string()
}

fn rewrite_path(value: &str, mounts: &[Mount]) -> Option<String> {
    // Longest mount path first: /etc/a/b wins over /etc/a.
    let mut best: Option<&Mount> = None;
    for m in mounts {
        let mp = m.mount_path.trim_end_matches('/');
        let hit = value == mp
            || value
                .strip_prefix(mp)
                .is_some_and(|rest| rest.starts_with('/'));
        if hit && best.is_none_or(|b| b.mount_path.len() < m.mount_path.len()) {
            best = Some(m);
        }
    }
    let m = best?;
    let mp = m.mount_path.trim_end_matches('/');
    Some(format!("{}{}", m.host, &value[mp.len()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts() -> Vec<Mount> {
        vec![
            Mount {
                mount_path: "/etc/zmq".into(),
                host: "/tmp/p/volumes/cfg".into(),
            },
            Mount {
                mount_path: "/etc/zmq/tls/".into(),
                host: "/tmp/p/volumes/tls".into(),
            },
        ]
    }

    #[test]
    fn paths_under_a_mount_move_to_the_host_dir() {
        assert_eq!(
            rewrite("/etc/zmq/proxy.conf", &mounts()),
            "/tmp/p/volumes/cfg/proxy.conf"
        );
        assert_eq!(rewrite("/etc/zmq", &mounts()), "/tmp/p/volumes/cfg");
        assert_eq!(
            rewrite("/etc/zmq/tls/ca.pem", &mounts()),
            "/tmp/p/volumes/tls/ca.pem"
        );
    }

    #[test]
    fn flag_values_are_rewritten() {
        assert_eq!(
            rewrite("--config=/etc/zmq/a", &mounts()),
            "--config=/tmp/p/volumes/cfg/a"
        );
    }

    #[test]
    fn other_values_are_untouched() {
        assert_eq!(rewrite("/etc/zmqx/a", &mounts()), "/etc/zmqx/a");
        assert_eq!(rewrite("hello", &mounts()), "hello");
        assert_eq!(rewrite("a=b", &mounts()), "a=b");
    }
}

//! Pod status from the agent's view of its containers: phase, the four
//! standard conditions (keeping transition times of unchanged ones) and
//! container statuses. Pure; the pod worker patches the result.

use k8s_openapi::api::core::v1::{ContainerStatus, HostIP, PodCondition, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Whether a container that has terminated will be started again.
pub fn will_restart(restart_policy: &str, exit_code: i32) -> bool {
    match restart_policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Pod phase from its container statuses and restart policy.
pub fn phase(containers: &[ContainerStatus], restart_policy: &str) -> &'static str {
    if containers.is_empty() {
        return "Pending";
    }
    let finished: Vec<i32> = containers
        .iter()
        .filter_map(|c| c.state.as_ref().and_then(|s| s.terminated.as_ref()))
        .map(|t| t.exit_code)
        .collect();
    if finished.len() == containers.len()
        && finished
            .iter()
            .all(|&code| !will_restart(restart_policy, code))
    {
        return if finished.iter().all(|&code| code == 0) {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    let started = containers.iter().any(|c| {
        c.restart_count > 0
            || c.state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
    });
    if started {
        "Running"
    } else {
        "Pending"
    }
}

fn condition(kind: &str, ok: bool, previous: Option<&PodStatus>, now: &Time) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let prev = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind));
    let since = match prev {
        Some(p) if p.status == status => p
            .last_transition_time
            .clone()
            .unwrap_or_else(|| now.clone()),
        _ => now.clone(),
    };
    PodCondition {
        type_: kind.to_string(),
        status: status.to_string(),
        last_transition_time: Some(since),
        reason: (!ok && (kind == "Ready" || kind == "ContainersReady"))
            .then(|| "ContainersNotReady".to_string()),
        ..Default::default()
    }
}

/// The full status to write.
pub fn pod_status(
    containers: Vec<ContainerStatus>,
    restart_policy: &str,
    pod_ip: &str,
    host_ip: &str,
    start_time: &Time,
    previous: Option<&PodStatus>,
    now: &Time,
) -> PodStatus {
    let phase = phase(&containers, restart_policy);
    let all_ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(vec![
            condition("Initialized", true, previous, now),
            condition("Ready", all_ready, previous, now),
            condition("ContainersReady", all_ready, previous, now),
            condition("PodScheduled", true, previous, now),
        ]),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: host_ip.to_string(),
        }]),
        pod_ip: Some(pod_ip.to_string()),
        pod_ips: Some(vec![PodIP {
            ip: pod_ip.to_string(),
        }]),
        start_time: Some(start_time.clone()),
        // No qosClass: the API server derives it from the resources when
        // the pod is created and refuses any other value since 1.32.
        container_statuses: Some(containers),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    };
    use k8s_openapi::jiff::Timestamp;

    fn running(ready: bool) -> ContainerStatus {
        ContainerStatus {
            name: "c".into(),
            ready,
            state: Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn terminated(code: i32) -> ContainerStatus {
        ContainerStatus {
            name: "c".into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn waiting() -> ContainerStatus {
        ContainerStatus {
            name: "c".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting::default()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn phases() {
        assert_eq!(phase(&[waiting()], "Always"), "Pending");
        assert_eq!(phase(&[running(false)], "Always"), "Running");
        assert_eq!(phase(&[terminated(1)], "Always"), "Running");
        assert_eq!(phase(&[terminated(0)], "Never"), "Succeeded");
        assert_eq!(phase(&[terminated(2)], "Never"), "Failed");
        assert_eq!(phase(&[terminated(2)], "OnFailure"), "Running");
        assert_eq!(phase(&[terminated(0)], "OnFailure"), "Succeeded");
    }

    #[test]
    fn ready_only_when_every_container_is_ready_and_transition_times_stick() {
        let t0 = Time(Timestamp::from_second(1_000).unwrap());
        let t1 = Time(Timestamp::from_second(2_000).unwrap());
        let s0 = pod_status(
            vec![running(false)],
            "Always",
            "127.0.0.2",
            "127.0.0.1",
            &t0,
            None,
            &t0,
        );
        let ready = |s: &PodStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .unwrap()
                .clone()
        };
        assert_eq!(ready(&s0).status, "False");
        let s1 = pod_status(
            vec![running(false)],
            "Always",
            "127.0.0.2",
            "127.0.0.1",
            &t0,
            Some(&s0),
            &t1,
        );
        assert_eq!(ready(&s1).last_transition_time, Some(t0.clone()));
        let s2 = pod_status(
            vec![running(true)],
            "Always",
            "127.0.0.2",
            "127.0.0.1",
            &t0,
            Some(&s1),
            &t1,
        );
        assert_eq!(ready(&s2).status, "True");
        assert_eq!(ready(&s2).last_transition_time, Some(t1));
        assert_eq!(s2.pod_ip.as_deref(), Some("127.0.0.2"));
    }
}

"""The Pod Security Standards "restricted" profile as a check of a pod spec, for the launcher's pod templates.

The test kube-apiserver (v1.20) predates the PodSecurity admission plugin (beta in 1.23), so the profile is checked
here, control by control, as the Kubernetes documentation defines it
(https://kubernetes.io/docs/concepts/security/pod-security-standards/, "Baseline" and "Restricted", latest version)
and as `k8s.io/pod-security-admission/policy` implements it. `violations()` returns one line per failed control;
the tests also feed it pods that break each control, so a pass means something.
"""

from __future__ import annotations

from typing import Any

BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def _containers(spec: dict) -> list[tuple[str, dict]]:
    return [(f"{kind}[{c.get('name')}]", c) for kind in ("initContainers", "containers", "ephemeralContainers")
            for c in spec.get(kind) or []]


def violations(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> list[str]:
    """Every "restricted" control (baseline included) that the pod spec `spec` fails."""
    out: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    containers = _containers(spec)
    # --- baseline ---------------------------------------------------------------------------------------------
    for where, sc in [("pod", pod_sc)] + [(n, c.get("securityContext") or {}) for n, c in containers]:
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"HostProcess: {where} sets windowsOptions.hostProcess")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            out.append(f"SELinux: {where} sets seLinuxOptions {se}")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"Seccomp: {where} is Unconfined")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append(f"AppArmor: {where} is Unconfined")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"Host namespaces: {field} is true")
    for key, value in (annotations or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            out.append(f"AppArmor: annotation {key}={value}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"Sysctls: {sysctl.get('name')} is not a safe sysctl")
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            out.append(f"HostPath volumes: {volume.get('name')}")
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"Volume types: {volume.get('name')} is {sorted(kinds - RESTRICTED_VOLUMES)}")
    for name, c in containers:
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"Privileged containers: {name}")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"/proc mount type: {name} uses {sc['procMount']}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"Host ports: {name} uses hostPort {port['hostPort']}")
        caps = sc.get("capabilities") or {}
        extra = set(caps.get("add") or []) - BASELINE_CAPABILITIES
        if extra:
            out.append(f"Capabilities (baseline): {name} adds {sorted(extra)}")
        # --- restricted -------------------------------------------------------------------------------------------
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"Privilege escalation: {name} does not set allowPrivilegeEscalation: false")
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"Capabilities: {name} does not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"Capabilities: {name} adds {sorted(set(caps['add']) - {'NET_BIND_SERVICE'})}")
        if sc.get("runAsNonRoot") is False or (sc.get("runAsNonRoot") is None and pod_sc.get("runAsNonRoot") is not True):
            out.append(f"Running as Non-root: {name} (and the pod) do not set runAsNonRoot: true")
        if sc.get("runAsUser") == 0:
            out.append(f"Running as Non-root user: {name} sets runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or (pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"Seccomp: {name} (and the pod) set no RuntimeDefault/Localhost seccompProfile")
    if pod_sc.get("runAsUser") == 0:
        out.append("Running as Non-root user: the pod sets runAsUser 0")
    return out

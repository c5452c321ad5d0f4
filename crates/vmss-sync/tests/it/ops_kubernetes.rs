//! The Kubernetes (AKS) manifests of packaging/k8s/: valid against the Kubernetes
//! schemas (`kubernetes-validate --strict`, offline, bundled schemas), two replicas with
//! the Blob lease and workload identity, probes on `/healthz` and `/readyz`, a
//! securityContext that matches the systemd unit's hardening, and a ConfigMap whose
//! configuration the binary itself accepts.
//!
//! `kubernetes-validate` comes from PyPI (scripts/test.sh installs it into
//! .tools/kubernetes-validate, or set $KUBERNETES_VALIDATE); absent, the schema test fails
//! under `CI=true` and skips elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn k8s() -> PathBuf {
    root().join("packaging/k8s")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(k8s().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(k8s())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

/// The validator: $KUBERNETES_VALIDATE, then scripts/test.sh's venv, then PATH.
fn validator() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("KUBERNETES_VALIDATE").map(PathBuf::from),
        Some(root().join(".tools/kubernetes-validate/bin/kubernetes-validate")),
        Some(PathBuf::from("kubernetes-validate")),
    ];
    for c in candidates.into_iter().flatten() {
        if Command::new(&c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(c);
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("kubernetes-validate is missing under CI=true: scripts/test.sh installs it");
    }
    eprintln!("kubernetes-validate is not installed: skipping the schema check");
    None
}

fn validate(tool: &Path, version: &str, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(tool)
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_manifests_validate_strictly_against_the_kubernetes_schemas_and_a_broken_one_does_not() {
    let Some(tool) = validator() else {
        return;
    };
    let files = manifests();
    assert!(files.len() >= 5, "{files:?}");
    // The oldest AKS version still supported when this was written, and the newest schema.
    for version in ["1.31.0", "1.37.0"] {
        let (ok, text) = validate(&tool, version, &files);
        println!("{text}");
        assert!(ok, "kubernetes-validate {version}:\n{text}");
        assert_eq!(
            text.matches(" passed for resource ").count(),
            files.len(),
            "{text}"
        );
    }
    // The check can fail: a misspelt field and a wrong type are rejected.
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("replicas: 2", "replicas: two"),
        (
            "readOnlyRootFilesystem: true",
            "readOnlyRootFileSystem: true",
        ),
    ] {
        let broken = dir.path().join("deployment.yaml");
        let text = read("deployment.yaml");
        assert!(text.contains(from));
        std::fs::write(&broken, text.replacen(from, to, 1)).unwrap();
        let (ok, out) = validate(&tool, "1.37.0", &[broken]);
        assert!(!ok, "{to:?} accepted:\n{out}");
    }
}

#[test]
fn two_replicas_with_workload_identity_probes_and_a_disruption_budget() {
    let d = read("deployment.yaml");
    for needle in [
        "kind: Deployment",
        "replicas: 2",
        "serviceAccountName: vmss-sync",
        "azure.workload.identity/use: \"true\"",
        "path: /healthz",
        "path: /readyz",
        "containerPort: 8371",
        "args: [\"run\", \"--config\", \"/etc/vmss-sync/config.yaml\"]",
        "mountPath: /etc/vmss-sync",
    ] {
        assert!(d.contains(needle), "deployment lacks {needle:?}");
    }
    let sa = read("serviceaccount.yaml");
    for needle in [
        "kind: ServiceAccount",
        "azure.workload.identity/client-id:",
        "azure.workload.identity/tenant-id:",
    ] {
        assert!(sa.contains(needle), "service account lacks {needle:?}");
    }
    let pdb = read("poddisruptionbudget.yaml");
    assert!(pdb.contains("kind: PodDisruptionBudget") && pdb.contains("minAvailable: 1"));
}

/// Each hardening directive of the unit has its Kubernetes counterpart.
#[test]
fn the_security_context_matches_the_systemd_units_hardening() {
    let unit = std::fs::read_to_string(root().join("packaging/vmss-sync.service")).unwrap();
    let d = read("deployment.yaml");
    let ns = read("namespace.yaml");
    for (directive, counterpart) in [
        ("NoNewPrivileges=yes", "allowPrivilegeEscalation: false"),
        ("CapabilityBoundingSet=\n", "drop: [\"ALL\"]"),
        ("ProtectSystem=strict", "readOnlyRootFilesystem: true"),
        ("DynamicUser=yes", "runAsNonRoot: true"),
        ("SystemCallFilter=@system-service", "type: RuntimeDefault"),
        ("MemoryMax=256M", "memory: 256Mi"),
    ] {
        assert!(unit.contains(directive), "unit lacks {directive:?}");
        assert!(d.contains(counterpart), "deployment lacks {counterpart:?}");
    }
    assert!(ns.contains("pod-security.kubernetes.io/enforce: restricted"));
}

#[test]
fn the_configmaps_configuration_is_valid_and_elects_a_leader_on_a_blob_lease() {
    let cm = read("configmap.yaml");
    let (_, body) = cm
        .split_once("  config.yaml: |\n")
        .expect("config.yaml key");
    let config: String = body
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l.trim_start()))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(config.contains("leader_election:") && config.contains("auth: token"));
    assert!(
        config.contains("admin_listen: 0.0.0.0:8371"),
        "probes reach the pod"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vmss-sync"))
        .args(["validate", "--config"])
        .arg(&path)
        .env("NGINXAAS_DATAPLANE_API_KEY", "test-key")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

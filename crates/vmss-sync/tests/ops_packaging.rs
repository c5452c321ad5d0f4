//! Packaging: the systemd unit is valid and hardened (checked with `systemd-analyze` when
//! the machine has it), and the container build and the environment file agree with the
//! binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(packaging().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn has_systemd_analyze() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_systemd_unit_is_hardened_and_takes_secrets_from_an_environment_file() {
    let unit = read("vmss-sync.service");
    for directive in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "DynamicUser=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "EnvironmentFile=-/etc/vmss-sync/env",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus=2",
    ] {
        assert!(unit.contains(directive), "missing {directive:?}");
    }
    assert!(
        unit.contains("ExecStart=/usr/local/bin/vmss-sync run --config /etc/vmss-sync/config.yaml")
    );
}

#[test]
fn systemd_analyze_finds_the_unit_valid_with_a_low_exposure() {
    if !has_systemd_analyze() {
        eprintln!("systemd-analyze is not installed: skipping the unit check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = read("vmss-sync.service")
        .replace("/usr/local/bin/vmss-sync", env!("CARGO_BIN_EXE_vmss-sync"));
    let path = dir.path().join("vmss-sync.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for vmss-sync.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level:\n{text}"));
    println!("systemd-analyze security: exposure {level}");
    assert!(level <= 2.0, "exposure {level}:\n{text}");
}

#[test]
fn the_container_build_makes_a_static_image_of_this_binary() {
    let c = read("Containerfile");
    assert!(c.contains("cargo build --release --locked -p vmss-sync"));
    assert!(c.contains("-alpine AS build"), "musl build stage");
    assert!(c.contains("FROM scratch"));
    assert!(c.contains("USER 65532:65532"), "not root");
    assert!(c.contains("ENTRYPOINT [\"/usr/local/bin/vmss-sync\"]"));
    let rust_version =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("rust-version = \"")
                    .map(|v| v.trim_end_matches('"').to_string())
            })
            .unwrap();
    assert!(
        c.contains(&format!("rust:{rust_version}-alpine")),
        "the image's Rust is the workspace's rust-version"
    );
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.dockerignore"))
            .unwrap();
    assert!(ignore.contains("target/") && ignore.contains(".tools/"));
}

#[test]
fn the_environment_file_example_names_the_secrets_the_readme_uses() {
    let e = read("vmss-sync.env.example");
    for var in [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "NGINXAAS_DATAPLANE_API_KEY",
        "LEASE_ACCOUNT_KEY",
    ] {
        assert!(
            e.lines().any(|l| l.starts_with(&format!("{var}="))),
            "{var}"
        );
    }
}

//! Packaging: the systemd unit (hardened, no restart loop, checked with `systemd-analyze`),
//! the toolchain versions (`rust-version` against `cargo metadata`, the container file's
//! Rust), the man page and completions against the binary, and the Debian package built
//! with `cargo deb`, checked with `dpkg-deb` and `lintian`, unpacked into a scratch root
//! whose binary validates the packaged example configuration.
//!
//! Tools that are absent (`systemd-analyze`, `cargo deb`, `lintian`) make a test fail
//! under `CI=true` and skip it, with a message, elsewhere.

use crate::support::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn packaging() -> PathBuf {
    root().join("packaging")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(packaging().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// True when `cmd args` runs; otherwise fails under CI=true, or says why it skips.
fn tool(cmd: &str, args: &[&str], what: &str) -> bool {
    let ok = Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{cmd} is missing under CI=true: scripts/test.sh installs it ({what})");
        }
        eprintln!("{cmd} is not installed: skipping {what}");
    }
    ok
}

/// The workspace's `rust-version`, from the root Cargo.toml.
fn declared_rust_version() -> (u64, u64) {
    let toml = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let v = toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("rust-version in the workspace Cargo.toml");
    version(&v).unwrap_or_else(|| panic!("rust-version {v:?}"))
}

/// "1.88" or "1.88.0" as (1, 88).
fn version(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[test]
fn the_systemd_unit_is_hardened_notifies_and_takes_secrets_from_an_environment_file() {
    let unit = read("vmss-sync.service");
    for directive in [
        "Type=notify\n",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "User=vmss-sync\n",
        "DynamicUser=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "EnvironmentFile=-/etc/vmss-sync/env",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus=2\n",
        "ExecStart=/usr/bin/vmss-sync run --config /etc/vmss-sync/config.yaml\n",
    ] {
        assert!(unit.contains(directive), "missing {directive:?}");
    }
}

/// systemd applies `RestartPreventExitStatus=` to the main process only: a failing
/// `ExecStartPre=` would be restarted every `RestartSec` forever. So the unit has none,
/// and the main process itself exits with 2 on an invalid file.
#[test]
fn an_invalid_file_stops_the_unit_because_the_main_process_exits_2_and_nothing_runs_before_it() {
    let unit = read("vmss-sync.service");
    let directives: Vec<&str> = unit
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !directives.iter().any(|l| l.starts_with("ExecStartPre")),
        "no ExecStartPre: its failure is restarted whatever RestartPreventExitStatus says"
    );
    assert!(directives.contains(&"Restart=on-failure"));
    assert!(directives.contains(&"RestartPreventExitStatus=2"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("config.yaml");
    std::fs::write(
        &bad,
        "cloud_provider: Azure\nsubscription_id: s\nresource_group_name: g\napi_endpoint: http://127.0.0.1:9/api\nsync_intervall: 5s\nupstreams: []\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vmss-sync"))
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("sync_intervall"), "{}", text(&out));
}

#[test]
fn systemd_analyze_finds_the_unit_valid_with_a_low_exposure() {
    if !tool("systemd-analyze", &["--version"], "the unit check") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit =
        read("vmss-sync.service").replace("/usr/bin/vmss-sync", env!("CARGO_BIN_EXE_vmss-sync"));
    let path = dir.path().join("vmss-sync.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        // --man=no: the Documentation= man page is the package's, not installed here.
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify:\n{}",
        text(&out)
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let level: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for vmss-sync.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level:\n{report}"));
    println!("systemd-analyze security: exposure {level}");
    assert!(level <= 2.0, "exposure {level}:\n{report}");
}

#[test]
fn with_no_arguments_it_runs_with_nginx_asg_sync_default_config_instead_of_printing_usage() {
    if Path::new("/etc/nginx/config.yaml").exists() {
        eprintln!("/etc/nginx/config.yaml exists on this machine: not starting a daemon on it");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vmss-sync"))
        .output()
        .unwrap();
    let t = text(&out);
    // The file is missing here: `run` reports it as an invalid configuration.
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("/etc/nginx/config.yaml"), "{t}");
    assert!(!t.contains("Usage:"), "{t}");
}

/// No locked dependency (the resolve graph of the workspace, as `cargo metadata` gives
/// it) needs a newer Rust than `rust-version` says.
#[test]
fn rust_version_is_the_newest_any_locked_dependency_needs() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata: {}", text(&out));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let resolved: std::collections::HashSet<&str> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert!(
        resolved.len() > 100,
        "the resolve graph: {}",
        resolved.len()
    );
    let ours: std::collections::HashSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let mut needs: Vec<((u64, u64), String)> = packages
        .iter()
        .filter(|p| {
            p["id"]
                .as_str()
                .is_some_and(|id| resolved.contains(id) && !ours.contains(id))
        })
        .filter_map(|p| {
            let v = version(p["rust_version"].as_str()?)?;
            Some((v, format!("{} {}", p["name"], p["version"])))
        })
        .collect();
    needs.sort();
    let (newest, by) = needs.last().cloned().unwrap();
    let declared = declared_rust_version();
    println!(
        "rust-version {}.{}; newest needed {}.{} by {by}",
        declared.0, declared.1, newest.0, newest.1
    );
    assert!(
        newest <= declared,
        "{by} needs Rust {}.{}; rust-version says {}.{}",
        newest.0,
        newest.1,
        declared.0,
        declared.1
    );
}

#[test]
fn the_container_file_builds_a_static_multi_arch_image_with_a_toolchain_not_older_than_rust_version(
) {
    let c = read("Containerfile");
    assert!(c.contains("cargo build --release --locked -p vmss-sync"));
    assert!(c.contains("FROM scratch"));
    assert!(c.contains("USER 65532:65532"), "not root");
    assert!(c.contains("ENTRYPOINT [\"/usr/local/bin/vmss-sync\"]"));
    assert!(
        c.contains("COPY --from=build /etc/ssl/certs/ca-certificates.crt"),
        "the CA bundle"
    );
    assert!(c.contains("linux/amd64,linux/arm64"));
    let arg = |name: &str| {
        c.lines()
            .find_map(|l| l.strip_prefix(&format!("ARG {name}=")))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("ARG {name}= in the Containerfile"))
    };
    let tag = arg("RUST_VERSION");
    let image = version(&tag).unwrap_or_else(|| panic!("RUST_VERSION={tag}"));
    let declared = declared_rust_version();
    assert!(
        image >= declared,
        "the image's Rust {tag} is older than rust-version {declared:?}"
    );
    assert!(version(&arg("ALPINE_VERSION")).is_some());
    assert!(
        c.contains("FROM docker.io/library/rust:${RUST_VERSION}-alpine${ALPINE_VERSION} AS build"),
        "the build stage uses the arguments"
    );
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
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

fn generated(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vmss-sync"))
        .arg("generate")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "generate {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The packaged man page and completions are what the binary's own clap definition
/// makes (`vmss-sync generate ...`); regenerate them with scripts/generate-docs.sh.
#[test]
fn the_man_page_and_completions_in_packaging_are_generated_from_the_cli() {
    for (args, file) in [
        (&["man"][..], "man/vmss-sync.1"),
        (&["completions", "bash"][..], "completions/vmss-sync.bash"),
        (&["completions", "zsh"][..], "completions/_vmss-sync"),
        (&["completions", "fish"][..], "completions/vmss-sync.fish"),
    ] {
        assert_eq!(
            generated(args),
            read(file),
            "packaging/{file} is stale: run scripts/generate-docs.sh"
        );
    }
    let man = generated(&["man"]);
    for needle in [".TH vmss-sync 1", "EXIT STATUS", "\\-\\-config", "validate"] {
        assert!(man.contains(needle), "man page lacks {needle:?}");
    }
    assert!(!man.contains("generate"), "the hidden command stays out");
    if tool("man", &["--version"], "rendering the man page") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmss-sync.1");
        std::fs::write(&path, &man).unwrap();
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&path)
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        let rendered = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).trim().is_empty(),
            "groff warnings: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(rendered.contains("vmss-sync run"), "{rendered}");
    }
    let bash = generated(&["completions", "bash"]);
    for cmd in ["run", "once", "plan", "validate", "--config"] {
        assert!(bash.contains(cmd), "bash completion lacks {cmd}");
    }
}

/// The .deb: `$VMSS_SYNC_DEB` (scripts/test.sh builds the release one with `cargo deb`),
/// else one made here, once for the tests of this file, around this test's build of the
/// binary.
fn debian_package() -> Option<PathBuf> {
    static DEB: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DEB.get_or_init(|| {
        if let Ok(p) = std::env::var("VMSS_SYNC_DEB") {
            // Relative to the workspace root (tests run in the package's directory).
            return Some(root().join(p));
        }
        let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ops_packaging-deb");
        let _ = std::fs::remove_dir_all(&out_dir);
        build_debian_package(&out_dir)
    })
    .clone()
}

fn build_debian_package(out_dir: &Path) -> Option<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if !tool(&cargo, &["deb", "--version"], "building the Debian package") {
        return None;
    }
    // The assets name target/release/vmss-sync; --profile takes the directory of the
    // profile this test was built with (target/debug for `cargo test`).
    let profile = if env!("CARGO_BIN_EXE_vmss-sync").contains("/release/") {
        "release"
    } else {
        "dev"
    };
    let out = Command::new(&cargo)
        .args(["deb", "-p", "vmss-sync", "--no-build", "--profile", profile])
        .arg("--output")
        .arg(out_dir)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo deb: {}", text(&out));
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .map(|l| PathBuf::from(l.trim()))
        .unwrap_or_else(|| panic!("no .deb named: {}", text(&out)));
    Some(deb)
}

#[test]
fn the_debian_package_holds_the_unit_example_config_man_page_and_completions_and_passes_lintian() {
    let Some(deb) = debian_package() else {
        return;
    };
    let size = std::fs::metadata(&deb).unwrap().len();
    println!("{}: {size} bytes", deb.display());

    let info = Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .output()
        .unwrap();
    assert!(info.status.success(), "{}", text(&info));
    let info = text(&info);
    for field in [
        "Package: vmss-sync",
        "Section: net",
        "Depends: adduser, libc6",
        "Maintainer: ",
        " conffiles",
        " postinst",
        " postrm",
    ] {
        assert!(
            info.contains(field),
            "dpkg-deb --info lacks {field:?}:\n{info}"
        );
    }
    let conffiles = Command::new("dpkg-deb")
        .args(["--info"])
        .arg(&deb)
        .arg("conffiles")
        .output()
        .unwrap();
    assert_eq!(text(&conffiles).trim(), "/etc/vmss-sync/config.yaml");
    let postinst = Command::new("dpkg-deb")
        .args(["--info"])
        .arg(&deb)
        .arg("postinst")
        .output()
        .unwrap();
    assert!(
        text(&postinst).contains("adduser --system --group --no-create-home --home /nonexistent"),
        "the vmss-sync system user:\n{}",
        text(&postinst)
    );

    let contents = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&deb)
        .output()
        .unwrap();
    let contents = text(&contents);
    for path in [
        "./usr/bin/vmss-sync",
        "./usr/lib/systemd/system/vmss-sync.service",
        "./etc/vmss-sync/config.yaml",
        "./usr/share/doc/vmss-sync/examples/vmss-sync.env.example",
        "./usr/share/man/man1/vmss-sync.1.gz",
        "./usr/share/bash-completion/completions/vmss-sync",
        "./usr/share/zsh/vendor-completions/_vmss-sync",
        "./usr/share/fish/vendor_completions.d/vmss-sync.fish",
        "./usr/share/doc/vmss-sync/copyright",
        "./usr/share/doc/vmss-sync/LICENSE",
        "./usr/share/doc/vmss-sync/changelog.gz",
        "./usr/share/doc/vmss-sync/changelog.Debian.gz",
        "./usr/share/doc/vmss-sync/README.md",
        "./usr/share/doc/vmss-sync/docs/migrating-from-nginx-asg-sync.md",
        "./usr/share/doc/vmss-sync/docs/targets/nginx-file.md",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} not in the package:\n{contents}"
        );
    }

    if tool("lintian", &["--version"], "lintian") {
        // Errors and warnings fail; the informational tags left are explained in
        // docs/packaging.md.
        let out = Command::new("lintian")
            .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
            .arg(&deb)
            .output()
            .unwrap();
        let report: Vec<String> = text(&out)
            .lines()
            .filter(|l| !l.contains("running with root privileges"))
            .map(str::to_string)
            .collect();
        println!("lintian: {} tag(s) at its default level", report.len());
        assert!(
            out.status.success() && report.is_empty(),
            "lintian:\n{}",
            report.join("\n")
        );
    }
}

#[test]
fn the_packaged_binary_from_a_scratch_root_validates_the_packaged_example_config() {
    let dir = tempfile::tempdir().unwrap();
    let Some(deb) = debian_package() else {
        return;
    };
    let scratch = dir.path().join("root");
    let out = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&scratch)
        .output()
        .unwrap();
    assert!(out.status.success(), "dpkg -x: {}", text(&out));
    let bin = scratch.join("usr/bin/vmss-sync");
    let out = Command::new(&bin).arg("--version").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        text(&out).trim(),
        format!("vmss-sync {}", env!("CARGO_PKG_VERSION"))
    );
    let config = scratch.join("etc/vmss-sync/config.yaml");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        read("config.yaml")
    );
    let out = Command::new(&bin)
        .arg("validate")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "validate: {}", text(&out));
    assert!(
        text(&out).contains("configuration is valid (1 upstream)"),
        "{}",
        text(&out)
    );
    // The packaged unit runs the packaged binary on the packaged configuration.
    let unit =
        std::fs::read_to_string(scratch.join("usr/lib/systemd/system/vmss-sync.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/vmss-sync run --config /etc/vmss-sync/config.yaml"));
}

/// `Type=notify`: with `NOTIFY_SOCKET` set, as systemd sets it, the daemon says READY=1
/// once the configuration is loaded and checked, RELOADING=1 (with MONOTONIC_USEC) then
/// READY=1 around a SIGHUP reload, and STOPPING=1 on SIGTERM. Here a datagram socket of
/// the test stands in for systemd's.
#[tokio::test(flavor = "multi_thread")]
async fn under_type_notify_it_reports_ready_reloading_and_stopping_on_the_notify_socket() {
    use common::*;
    let env = testbed(vmss_testbed::TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(vmss_testbed::UpstreamKind::Http, "web");
    let cfg = env.config("", &upstream_yaml("web", "web", 80, "http"));
    let sock_path = env.dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let mut daemon = Daemon::run(&env, &cfg)
        .var("NOTIFY_SOCKET", &sock_path.display().to_string())
        .spawn();
    let log = daemon.log.clone();
    let mut buf = vec![0u8; 4096];
    let mut next = async || -> String {
        let n = tokio::time::timeout(Duration::from_secs(30), sock.recv(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no notification within 30 s; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    };
    assert_eq!(next().await, "READY=1", "{}", daemon.log_text());
    daemon.signal("HUP");
    let reloading = next().await;
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(next().await, "READY=1", "{}", daemon.log_text());
    assert!(daemon.log_text().contains("Configuration reloaded."));
    daemon.signal("TERM");
    assert_eq!(next().await, "STOPPING=1");
    assert_eq!(daemon.wait(Duration::from_secs(30)).await, 0);
}

/// The RPM: packaging/rpm/vmss-sync.spec built with `rpmbuild` around this test's binary
/// has the Debian package's files, marks the configuration `%config(noreplace)`, creates
/// the system user before install, and its unpacked binary validates its example.
#[test]
fn the_rpm_from_the_spec_holds_the_same_files_and_its_binary_validates_the_packaged_example() {
    if !tool("rpmbuild", &["--version"], "building the RPM") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("rpmbuild");
    let out = Command::new("rpmbuild")
        .arg("-bb")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .arg("--define")
        .arg(format!(
            "srcroot {}",
            root().canonicalize().unwrap().display()
        ))
        .arg("--define")
        .arg(format!("binary {}", env!("CARGO_BIN_EXE_vmss-sync")))
        .arg(packaging().join("rpm/vmss-sync.spec"))
        .output()
        .unwrap();
    assert!(out.status.success(), "rpmbuild: {}", text(&out));
    let rpm = text(&out)
        .lines()
        .find_map(|l| l.strip_prefix("Wrote: "))
        .map(|p| PathBuf::from(p.trim()))
        .unwrap_or_else(|| panic!("no RPM written: {}", text(&out)));
    println!(
        "{}: {} bytes",
        rpm.display(),
        std::fs::metadata(&rpm).unwrap().len()
    );
    let query = |args: &[&str]| -> String {
        let out = Command::new("rpm").args(args).arg(&rpm).output().unwrap();
        assert!(out.status.success(), "rpm {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let files = query(&["-qpl"]);
    for path in [
        "/usr/bin/vmss-sync",
        "/usr/lib/systemd/system/vmss-sync.service",
        "/etc/vmss-sync/config.yaml",
        "/usr/share/doc/vmss-sync/examples/vmss-sync.env.example",
        "/usr/share/man/man1/vmss-sync.1",
        "/usr/share/bash-completion/completions/vmss-sync",
        "/usr/share/zsh/site-functions/_vmss-sync",
        "/usr/share/fish/vendor_completions.d/vmss-sync.fish",
        "/usr/share/licenses/vmss-sync/LICENSE",
        "/usr/share/doc/vmss-sync/CHANGELOG.md",
        "/usr/share/doc/vmss-sync/README.md",
        "/usr/share/doc/vmss-sync/docs/migrating-from-nginx-asg-sync.md",
        "/usr/share/doc/vmss-sync/docs/targets/nginx-file.md",
    ] {
        assert!(
            files.lines().any(|l| l.starts_with(path)),
            "{path} not in the RPM:\n{files}"
        );
    }
    assert_eq!(
        query(&["-qp", "--configfiles"]).trim(),
        "/etc/vmss-sync/config.yaml"
    );
    let scripts = query(&["-qp", "--scripts"]);
    assert!(scripts.contains("useradd -r -g vmss-sync"), "{scripts}");

    let scratch = dir.path().join("root");
    std::fs::create_dir_all(&scratch).unwrap();
    let unpacked = Command::new("sh")
        .arg("-c")
        .arg("rpm2archive - < \"$1\" | tar -xz -C \"$2\"")
        .arg("sh")
        .arg(&rpm)
        .arg(&scratch)
        .output()
        .unwrap();
    assert!(
        unpacked.status.success(),
        "rpm2archive: {}",
        text(&unpacked)
    );
    let out = Command::new(scratch.join("usr/bin/vmss-sync"))
        .arg("validate")
        .arg("--config")
        .arg(scratch.join("etc/vmss-sync/config.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "validate: {}", text(&out));
}

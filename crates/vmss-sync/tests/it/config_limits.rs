//! Bounded configuration parsing: every limit of `config::limits` refuses a hostile file
//! with its file, line and a clear message, in bounded memory, and `vmss-sync validate`
//! exits 2 on such files under an address-space limit instead of aborting.

use std::path::{Path, PathBuf};
use std::process::Command;
use vmss_sync::config::{self, limits, ConfigErrors};

const HEAD: &str = "cloud_provider: Azure\nsubscription_id: s\nresource_group_name: r\n\
                    api_endpoint: http://127.0.0.1:8080/api\n";
const UPSTREAMS: &str =
    "upstreams:\n  - name: web\n    virtual_machine_scale_set: web\n    port: 80\n    kind: http\n";

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> ConfigErrors {
    match config::parse(text, Path::new("cfg.yaml"), env) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    }
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

#[test]
fn a_file_over_1_mib_is_refused_at_the_line_where_it_crosses_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let comment = format!("# {}\n", "c".repeat(1000)); // 1003 bytes a line
    let mut text = format!("{HEAD}{UPSTREAMS}");
    let head_lines = text.lines().count();
    let fits = (limits::MAX_FILE_BYTES - text.len()) / comment.len();
    text.push_str(&comment.repeat(fits));
    let at_limit = write(&dir, "ok.yaml", text.as_bytes());
    config::load(&at_limit, &no_env).expect("a file under 1 MiB is fine");
    text.push_str(&comment.repeat(2));
    let over = write(&dir, "big.yaml", text.as_bytes());
    let e = config::load(&over, &no_env).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    let err = &e.errors[0];
    assert_eq!(err.file, over);
    assert_eq!(err.line, head_lines + fits + 1, "{err}");
    assert!(
        err.message
            .contains("larger than 1048576 bytes (1 MiB), the most a configuration file may be"),
        "{err}"
    );
    // The same text handed to parse directly.
    let e = parse_with(&text, &no_env);
    assert_eq!(e.errors[0].line, head_lines + fits + 1);
}

#[test]
fn invalid_utf8_is_refused_with_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = format!("{HEAD}{UPSTREAMS}").into_bytes();
    bytes.extend_from_slice("log_level: dé".as_bytes());
    bytes.extend_from_slice(b"\xffbug\n");
    let p = write(&dir, "latin1.yaml", &bytes);
    let e = config::load(&p, &no_env).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:10:14: the file is not valid UTF-8: byte 0xff at offset {} (save it as UTF-8)",
            p.display(),
            bytes.len() - 5
        ),
        "the column counts characters, like the parser's"
    );
}

#[test]
fn a_large_environment_value_used_many_times_is_refused_once_1_mib_is_read() {
    let big = "v".repeat(50_000);
    let env = |name: &str| (name == "BIG").then(|| big.clone());
    // 12 lines of YAML: one anchored reference aliased 40 times, each substituted.
    let text = format!(
        "{HEAD}upstreams:\n  - name: web\n    virtual_machine_scale_set: &n \"${{BIG}}\"\n    \
         port: 80\n    kind: http\n  - name: b\n    virtual_machine_scale_set: [{}]\n    \
         port: 80\n    kind: http\n",
        vec!["*n"; 40].join(", ")
    );
    let e = parse_with(&text, &env);
    let shown = e.to_string();
    assert!(
        shown.contains(
            "${BIG}: ${VAR} substitution would read more than 1048576 bytes (1 MiB) from the \
             environment for this file, the most it may"
        ),
        "{shown}"
    );
    assert!(
        e.errors.iter().all(|e| e.line > 0),
        "every problem has a line"
    );
    // One value may not grow past 64 KiB either.
    let text = format!("{HEAD}log_level: ${{BIG}}${{BIG}}\n{UPSTREAMS}");
    let e = parse_with(&text, &env);
    assert_eq!(
        e.to_string(),
        "cfg.yaml:5:12: log_level: with ${BIG} substituted the value is longer than 65536 bytes \
         (64 KiB), the most a value may be (value: \"${BIG}${BIG}\")"
    );
}

#[test]
fn problems_are_capped_at_50_with_a_count_of_the_rest_and_long_values_are_cut() {
    let mut text = format!("{HEAD}{UPSTREAMS}");
    for i in 0..300 {
        text.push_str(&format!("unknown_{i}: {}\n", "x".repeat(i)));
    }
    let e = parse_with(&text, &no_env);
    assert_eq!(e.errors.len(), limits::MAX_ERRORS);
    assert_eq!(e.omitted, 250);
    assert_eq!(
        e.errors[0].line, 10,
        "the first problems by position are kept"
    );
    assert_eq!(e.errors[49].line, 59);
    assert!(
        e.to_string().ends_with("\n… and 250 more problems"),
        "{}",
        e
    );
    // A long value is shown cut, with its length.
    let text = format!("{HEAD}log_level: {}\n{UPSTREAMS}", "é".repeat(5_000));
    let e = parse_with(&text, &no_env);
    let value = e.errors[0].value.as_deref().expect("value shown");
    assert_eq!(value, format!("{}… (10000 bytes)", "é".repeat(200)));
}

// ----- the real binary, under an address-space limit ------------------------------------

/// `prlimit` (util-linux), to run the binary with a memory limit; None (after a message)
/// on a developer machine without it; CI must have it.
fn prlimit() -> Option<&'static str> {
    for p in ["/usr/bin/prlimit", "/bin/prlimit"] {
        if Path::new(p).exists() {
            return Some(p);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "prlimit (util-linux) is required in CI"
    );
    eprintln!("SKIPPED: prlimit (util-linux) is not installed");
    None
}

/// Runs `vmss-sync validate FILE` with at most `as_mib` MiB of address space: (exit code
/// or -signal, stderr).
fn validate_limited(file: &Path, as_mib: u64) -> Option<(i32, String)> {
    validate_limited_with(file, as_mib, &[])
}

fn validate_limited_with(file: &Path, as_mib: u64, vars: &[(&str, &str)]) -> Option<(i32, String)> {
    let prlimit = prlimit()?;
    let out = Command::new(prlimit)
        .arg(format!("--as={}", as_mib << 20))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_vmss-sync"))
        .arg("validate")
        .arg("--config")
        .arg(file)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(vars.iter().copied())
        .output()
        .expect("run vmss-sync validate");
    use std::os::unix::process::ExitStatusExt;
    let code = out
        .status
        .code()
        .unwrap_or_else(|| -out.status.signal().unwrap_or(0));
    Some((code, String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// `x: &s <len bytes>` then `y: [*s, ...]` with `aliases` aliases.
fn alias_bomb(len: usize, aliases: usize) -> String {
    format!(
        "{HEAD}{UPSTREAMS}x: &s {}\ny: [{}]\n",
        "s".repeat(len),
        vec!["*s"; aliases].join(", ")
    )
}

#[test]
fn validate_refuses_a_long_anchored_string_aliased_thousands_of_times_with_exit_2_under_256_mib() {
    let dir = tempfile::tempdir().unwrap();
    // The issue's shape: 150 KB aliased 3,000 times (450 MB once copied).
    let issue = write(&dir, "issue.yaml", alias_bomb(150_000, 3_000).as_bytes());
    // Under the value limit: 60 KB aliased 5,000 times (300 MB once copied).
    let bomb = write(&dir, "bomb.yaml", alias_bomb(60_000, 5_000).as_bytes());
    for (file, expect) in [(&issue, "10:4: a value of 150000 bytes"), (&bomb, "11:")] {
        let Some((code, stderr)) = validate_limited(file, 256) else {
            return;
        };
        assert_eq!(code, 2, "exit 2, no abort: {stderr}");
        assert!(stderr.contains(expect), "{stderr}");
        assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    }
    let (_, stderr) = validate_limited(&bomb, 256).unwrap();
    assert!(
        stderr.contains("copy more than 1048576 bytes (1 MiB)"),
        "{stderr}"
    );
}

#[test]
fn validate_prints_at_most_50_problems_for_a_300_kb_file_of_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!("{HEAD}upstreams:\n");
    let mut i = 0;
    while text.len() < 300_000 {
        text.push_str(&format!(
            "  - name: u{i}\n    virtual_machine_scale_set: {}\n    port: 99999\n    kind: tcp\n",
            "v".repeat(200)
        ));
        i += 1;
    }
    let p = write(&dir, "many.yaml", text.as_bytes());
    let Some((code, stderr)) = validate_limited(&p, 256) else {
        return;
    };
    assert_eq!(code, 2);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        stderr.len() < 16 << 10,
        "{} bytes of messages",
        stderr.len()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("… and ") && l.ends_with(" more problems")),
        "{stderr}"
    );
    eprintln!(
        "{} KB file with {i} bad upstreams: {} bytes of messages",
        text.len() / 1000,
        stderr.len()
    );
}

#[test]
fn validate_refuses_a_12_kb_file_that_substitutes_a_100_kb_variable_3000_times_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    // The issue's shape: a small file whose ${VAR}, aliased, would expand to 300 MB.
    let text = format!(
        "{HEAD}x: &v \"${{BIG}}\"\nupstreams:\n  - name: web\n    virtual_machine_scale_set: [{}]\n    \
         port: 80\n    kind: http\n",
        vec!["*v"; 3_000].join(", ")
    );
    assert!(text.len() < 13_000, "{} bytes", text.len());
    let p = write(&dir, "expand.yaml", text.as_bytes());
    let big = "b".repeat(100_000);
    let Some((code, stderr)) = validate_limited_with(&p, 256, &[("BIG", &big)]) else {
        return;
    };
    assert_eq!(code, 2, "exit 2, neither accepted nor aborted: {stderr}");
    assert!(
        stderr.contains(
            "upstreams[0].virtual_machine_scale_set[10]: ${BIG}: ${VAR} substitution would \
             read more than 1048576 bytes (1 MiB) from the environment for this file"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&big[..100]),
        "the variable's value is not shown"
    );
}

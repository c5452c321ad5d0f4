//! `vmss-testbed serve`: runs every fake until Ctrl-C / SIGTERM, for manual testing.

use std::net::Ipv4Addr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;
use vmss_testbed::{Orchestration, Testbed, TestbedOptions, UpstreamKind};

#[derive(Parser)]
#[command(
    name = "vmss-testbed",
    about = "Fake Azure (ARM reads, Route Server and Load Balancer pool writes, Entra ID, IMDS), \
             NGINX Plus API and HAProxy Data Plane API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start every fake and print one JSON line with the URLs and credentials.
    Serve {
        /// ARM list page size.
        #[arg(long, default_value_t = 2)]
        page_size: usize,
        /// A scale set with COUNT instances: SUB/RG/NAME=COUNT[:uniform|:flexible].
        #[arg(long = "scale-set", value_name = "SUB/RG/NAME=COUNT")]
        scale_sets: Vec<String>,
        /// An NGINX Plus upstream: http:NAME or stream:NAME.
        #[arg(long = "upstream", value_name = "KIND:NAME")]
        upstreams: Vec<String>,
        /// First IP handed out to new instances.
        #[arg(long, default_value = "10.0.0.4")]
        ip_base: Ipv4Addr,
        /// Require `Authorization: ApiKey <KEY>` on the NGINX API (NGINXaaS).
        #[arg(long)]
        nginx_api_key: Option<String>,
        /// Lifetime of issued tokens, in seconds.
        #[arg(long, default_value_t = 3600)]
        token_lifetime_secs: u64,
    },
}

struct SetSpec {
    sub: String,
    rg: String,
    name: String,
    count: usize,
    mode: Orchestration,
}

fn parse_set(s: &str) -> Result<SetSpec, String> {
    let err = || format!("bad --scale-set {s:?}: want SUB/RG/NAME=COUNT[:uniform|:flexible]");
    let (path, rest) = s.split_once('=').ok_or_else(err)?;
    let (count, mode) = match rest.split_once(':') {
        Some((c, m)) if m.eq_ignore_ascii_case("flexible") => (c, Orchestration::Flexible),
        Some((c, m)) if m.eq_ignore_ascii_case("uniform") => (c, Orchestration::Uniform),
        Some(_) => return Err(err()),
        None => (rest, Orchestration::Uniform),
    };
    let parts: Vec<&str> = path.split('/').collect();
    let [sub, rg, name] = parts.as_slice() else {
        return Err(err());
    };
    if sub.is_empty() || rg.is_empty() || name.is_empty() {
        return Err(err());
    }
    Ok(SetSpec {
        sub: sub.to_string(),
        rg: rg.to_string(),
        name: name.to_string(),
        count: count.parse().map_err(|_| err())?,
        mode,
    })
}

fn parse_upstream(s: &str) -> Result<(UpstreamKind, String), String> {
    match s.split_once(':') {
        Some(("http", n)) if !n.is_empty() => Ok((UpstreamKind::Http, n.to_string())),
        Some(("stream", n)) if !n.is_empty() => Ok((UpstreamKind::Stream, n.to_string())),
        _ => Err(format!(
            "bad --upstream {s:?}: want http:NAME or stream:NAME"
        )),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Command::Serve {
        page_size,
        scale_sets,
        upstreams,
        ip_base,
        nginx_api_key,
        token_lifetime_secs,
    } = cli.command;
    let sets: Result<Vec<SetSpec>, String> = scale_sets.iter().map(|s| parse_set(s)).collect();
    let ups: Result<Vec<(UpstreamKind, String)>, String> =
        upstreams.iter().map(|s| parse_upstream(s)).collect();
    let (sets, ups) = match (sets, ups) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("vmss-testbed: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let opts = TestbedOptions {
        page_size,
        nginx_api_key,
        token_lifetime: Duration::from_secs(token_lifetime_secs),
        ..TestbedOptions::default()
    };
    let tb = match Testbed::start(opts).await {
        Ok(tb) => tb,
        Err(e) => {
            eprintln!("vmss-testbed: cannot start: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let fleet = tb.fleet();
    fleet.set_ip_allocator_base(ip_base);
    for s in &sets {
        fleet.add_scale_set(&s.sub, &s.rg, &s.name, s.mode, "eastus");
        fleet.scale_to(&s.sub, &s.rg, &s.name, s.count);
    }
    for (kind, name) in &ups {
        tb.nginx().add_upstream(*kind, name);
    }
    let o = tb.options();
    let line = json!({
        "arm_url": tb.arm_url(),
        "authority_url": tb.authority_url(),
        "imds_url": tb.imds_url(),
        "identity_endpoint": tb.identity_endpoint(),
        "nginx_url": tb.nginx_url(),
        "nginx_nplus_url": tb.nginx_nplus_url(),
        "dataplane_url": tb.dataplane_url(),
        "tenant_id": o.tenant_id,
        "client_id": o.client_id,
        "client_secret": o.client_secret,
        "federated_token": o.federated_token,
        "identity_header": o.identity_header,
        "nginx_api_key": o.nginx_api_key,
        "access_token": tb.issue_token(),
    });
    println!("{line}");
    wait_for_signal().await;
    tb.shutdown().await;
    std::process::ExitCode::SUCCESS
}

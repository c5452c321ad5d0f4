//! `vmss-testbed serve` prints one JSON line with working URLs and credentials.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

#[tokio::test]
async fn serve_prints_urls_and_credentials_that_work() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmss-testbed"))
        .args([
            "serve",
            "--page-size",
            "5",
            "--scale-set",
            "sub-1/rg-1/web=3",
            "--upstream",
            "http:backend",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmss-testbed");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: Value = serde_json::from_str(&line).expect("one JSON line");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // a token from the printed service principal works on the printed ARM
    let tok: Value = http
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            info["authority_url"].as_str().unwrap(),
            info["tenant_id"].as_str().unwrap()
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", info["client_id"].as_str().unwrap()),
            ("client_secret", info["client_secret"].as_str().unwrap()),
            ("scope", "https://management.azure.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let nics: Value = http
        .get(format!(
            "{}/subscriptions/sub-1/resourceGroups/rg-1/providers/microsoft.Compute/virtualMachineScaleSets/web/networkInterfaces?api-version=2018-10-01",
            info["arm_url"].as_str().unwrap()
        ))
        .bearer_auth(tok["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(nics["value"].as_array().unwrap().len(), 3);
    assert!(nics.get("nextLink").is_none(), "page size 5 holds all 3");

    let servers = http
        .get(format!(
            "{}/9/http/upstreams/backend/servers",
            info["nginx_url"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(servers.status(), 200);
    assert!(info["identity_endpoint"]
        .as_str()
        .unwrap()
        .ends_with("/msi/token"));
    assert!(info["imds_url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));

    child.kill().unwrap();
    child.wait().unwrap();
}

//! Helpers shared by the integration tests (each test binary uses a subset).
#![allow(dead_code)]

use reqwest::header::HeaderMap;
use serde_json::Value;
use vmss_testbed::{Orchestration, Testbed, TestbedOptions};

pub const SUB: &str = "00000000-1111-2222-3333-444444444444";
pub const RG: &str = "rg-web";
pub const COMPUTE: &str = "2024-07-01";
pub const VMSS_NET: &str = "2018-10-01";
pub const NETWORK: &str = "2024-07-01";

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
    /// ARM error code.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub async fn read(r: reqwest::Response) -> Resp {
    Resp {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        text: r.text().await.unwrap(),
    }
}

pub struct Env {
    pub tb: Testbed,
    pub http: reqwest::Client,
    pub token: String,
}

pub async fn env_with(opts: TestbedOptions) -> Env {
    let tb = Testbed::start(opts).await.expect("testbed starts");
    let token = tb.issue_token();
    Env {
        tb,
        http: client(),
        token,
    }
}

pub async fn env() -> Env {
    env_with(TestbedOptions::default()).await
}

pub fn vmss_path(name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/{name}")
}

impl Env {
    /// Adds a Uniform (or Flexible) set with `n` instances.
    pub fn set(&self, name: &str, mode: Orchestration, n: usize) {
        self.tb.fleet().add_scale_set(SUB, RG, name, mode, "eastus");
        self.tb.fleet().scale_to(SUB, RG, name, n);
    }

    /// GET on ARM with the bearer token; `path_query` starts with '/'.
    pub async fn arm(&self, path_query: &str) -> Resp {
        self.arm_url(&format!("{}{path_query}", self.tb.arm_url()))
            .await
    }

    pub async fn arm_url(&self, url: &str) -> Resp {
        read(
            self.http
                .get(url)
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Follows nextLink until the end; returns every item and the number of pages.
    pub async fn arm_all(&self, path_query: &str) -> (Vec<Value>, usize) {
        let mut url = format!("{}{path_query}", self.tb.arm_url());
        let mut items = Vec::new();
        let mut pages = 0;
        loop {
            let r = self.arm_url(&url).await;
            assert_eq!(r.status, 200, "{url}: {}", r.text);
            let v = r.json();
            pages += 1;
            items.extend(v["value"].as_array().unwrap().iter().cloned());
            match v.get("nextLink").and_then(Value::as_str) {
                Some(next) => url = next.to_string(),
                None => break,
            }
            assert!(pages < 100_000, "runaway paging");
        }
        (items, pages)
    }

    pub fn nginx(&self, path: &str) -> String {
        format!("{}{path}", self.tb.nginx_url())
    }
}

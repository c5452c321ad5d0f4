//! Fake Azure Resource Manager: the Compute and Network read operations a VMSS sync agent
//! uses, with ARM's authentication, api-version, paging, error and header behaviour.
//!
//! Order of checks, as in ARM: bearer token → `api-version` present → route →
//! `api-version` supported by the route → subscription → resource group → resource.
//!
//! Supported operations (all GET):
//! * VirtualMachineScaleSets_List / _ListAll / _Get
//! * VirtualMachineScaleSetVMs_List / _Get / _GetInstanceView
//! * NetworkInterfaces_ListVirtualMachineScaleSetNetworkInterfaces,
//!   _ListVirtualMachineScaleSetVMNetworkInterfaces, _GetVirtualMachineScaleSetNetworkInterface
//!   (api-version 2018-10-01 only, as in Azure)
//! * VirtualMachines_List / _ListAll / _Get / _InstanceView (members of Flexible sets)
//! * NetworkInterfaces_List / _ListAll / _Get (NICs of Flexible members)
//! * the writes of the Azure targets (Route Server peerings, Load Balancer backend pools)
//!   and their operations: see `network.rs`

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Bound;

use serde_json::{json, Value};

use crate::fleet::{Instance, Orchestration, ResourceGroup, ScaleSet, Subscription};
use crate::tokens::{self, TokenCheck};
use crate::util::{compute_time, dotnet_time, guid, hex, lock, now_epoch, unhex, Reply, Req};
use crate::{Service, Shared};
use std::time::Instant;

/// api-versions accepted by the Compute operations (newest first, as ARM lists them).
pub const COMPUTE_API_VERSIONS: &[&str] = &[
    "2026-03-01",
    "2025-11-01",
    "2025-04-01",
    "2024-11-01",
    "2024-07-01",
    "2024-03-01",
    "2023-09-01",
    "2023-07-01",
    "2023-03-01",
    "2022-11-01",
    "2022-08-01",
    "2022-03-01",
    "2021-11-01",
    "2021-07-01",
    "2021-04-01",
    "2021-03-01",
    "2020-12-01",
    "2020-06-01",
    "2019-12-01",
    "2019-07-01",
    "2019-03-01",
    "2018-10-01",
    "2018-06-01",
    "2018-04-01",
    "2017-12-01",
    "2017-03-30",
    "2016-04-30-preview",
    "2016-03-30",
    "2015-06-15",
];

/// api-versions accepted by the ordinary Network operations (NetworkInterfaces_Get/List).
pub const NETWORK_API_VERSIONS: &[&str] = &[
    "2025-05-01",
    "2025-03-01",
    "2025-01-01",
    "2024-10-01",
    "2024-07-01",
    "2024-05-01",
    "2024-03-01",
    "2024-01-01",
    "2023-11-01",
    "2023-09-01",
    "2023-06-01",
    "2023-05-01",
    "2023-04-01",
    "2023-02-01",
    "2022-11-01",
    "2022-09-01",
    "2022-07-01",
    "2022-05-01",
    "2022-01-01",
    "2021-08-01",
    "2021-05-01",
    "2021-03-01",
    "2021-02-01",
    "2020-11-01",
    "2020-08-01",
    "2020-07-01",
    "2020-06-01",
    "2020-05-01",
    "2020-04-01",
    "2020-03-01",
    "2019-12-01",
    "2019-11-01",
    "2019-09-01",
    "2018-12-01",
    "2018-11-01",
    "2018-10-01",
    "2018-08-01",
    "2018-07-01",
    "2018-06-01",
    "2018-04-01",
    "2018-02-01",
    "2018-01-01",
    "2017-11-01",
    "2017-10-01",
    "2017-09-01",
    "2017-08-01",
    "2017-06-01",
    "2017-03-01",
    "2016-12-01",
    "2016-09-01",
    "2016-06-01",
    "2016-03-30",
    "2015-06-15",
];

/// The VMSS NIC operations take `ApiVersionVmssParameter`, which is only `2018-10-01`.
pub const VMSS_NETWORK_API_VERSIONS: &[&str] = &["2018-10-01"];

const SKU: &str = "Standard_D2s_v3";
const ALLOWED_AUDIENCES: &str = "'https://management.core.windows.net/','https://management.core.windows.net','https://management.azure.com/','https://management.azure.com'";

pub(crate) fn arm_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

fn arm_error_target(status: u16, code: &str, message: &str, target: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": {"code": code, "message": message, "target": target}}),
    )
}

/// A sensible ARM error code for an injected status.
pub(crate) fn code_for_status(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        401 => "InvalidAuthenticationToken",
        403 => "AuthorizationFailed",
        404 => "NotFound",
        409 => "Conflict",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "InjectedFailure",
    }
}

/// Entry point: adds the ARM tracing headers to every answer.
pub(crate) fn handle(sh: &Shared, req: &Req) -> Reply {
    handle_inner(sh, req)
        .header("x-ms-request-id", guid())
        .header("x-ms-correlation-request-id", guid())
        .header("x-ms-routing-request-id", format!("EASTUS:{}", guid()))
}

fn unauthorized(sh: &Shared, code: &str, message: &str, description: &str) -> Reply {
    arm_error(401, code, message).header(
        "www-authenticate",
        format!(
            "Bearer authorization_uri=\"{}/{}\", error=\"invalid_token\", error_description=\"{}\"",
            sh.urls.authority, sh.opts.tenant_id, description
        ),
    )
}

fn authenticate(sh: &Shared, req: &Req) -> Result<(), Reply> {
    let Some(h) = req.header("authorization") else {
        return Err(unauthorized(
            sh,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
            "The authentication failed because of missing 'Authorization' header.",
        ));
    };
    let token = match h.trim().split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
            t.trim()
        }
        _ => return Err(unauthorized(
            sh,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is provided in an invalid format.",
            "The authentication failed because of invalid 'Authorization' header format.",
        )),
    };
    let check = tokens::check(&lock(&sh.tokens), token, &sh.urls.arm);
    match check {
        TokenCheck::Valid => Ok(()),
        TokenCheck::Unknown => Err(unauthorized(
            sh,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
            "The access token is invalid.",
        )),
        TokenCheck::Expired { expired_epoch } => {
            let msg = format!(
                "The access token expiry UTC time '{}' is earlier than current UTC time '{}'.",
                dotnet_time(expired_epoch),
                dotnet_time(now_epoch())
            );
            Err(unauthorized(
                sh,
                "ExpiredAuthenticationToken",
                &msg,
                "The access token has expired.",
            ))
        }
        TokenCheck::WrongAudience(aud) => {
            let msg = format!(
                "The access token has been obtained for wrong audience or resource '{aud}'. It should exactly match with one of the allowed audiences {ALLOWED_AUDIENCES}."
            );
            Err(unauthorized(
                sh,
                "InvalidAuthenticationTokenAudience",
                &msg,
                "The access token has been obtained for wrong audience or resource.",
            ))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Compute,
    Network,
    VmssNetwork,
}

impl Api {
    fn versions(self) -> &'static [&'static str] {
        match self {
            Api::Compute => COMPUTE_API_VERSIONS,
            Api::Network => NETWORK_API_VERSIONS,
            Api::VmssNetwork => VMSS_NETWORK_API_VERSIONS,
        }
    }
}

#[derive(Debug)]
enum Op<'a> {
    VmssListAll,
    VmssList(&'a str),
    VmssGet(&'a str, &'a str),
    VmssVmList(&'a str, &'a str),
    VmssVmGet(&'a str, &'a str, &'a str),
    VmssVmInstanceView(&'a str, &'a str, &'a str),
    VmssNicList(&'a str, &'a str),
    VmssVmNicList(&'a str, &'a str, &'a str),
    VmssVmNicGet(&'a str, &'a str, &'a str, &'a str),
    VmListAll,
    VmList(&'a str),
    VmGet(&'a str, &'a str),
    VmInstanceView(&'a str, &'a str),
    NicListAll,
    NicList(&'a str),
    NicGet(&'a str, &'a str),
}

impl Op<'_> {
    fn api(&self) -> Api {
        match self {
            Op::VmssNicList(..) | Op::VmssVmNicList(..) | Op::VmssVmNicGet(..) => Api::VmssNetwork,
            Op::NicListAll | Op::NicList(..) | Op::NicGet(..) => Api::Network,
            _ => Api::Compute,
        }
    }
}

/// Routes on lower-cased segments; returns the subscription segment and the operation,
/// or a description of the unknown (namespace, type) for the error.
fn route<'a>(segs: &[&'a str]) -> Result<(&'a str, Op<'a>), Option<(String, String)>> {
    let low: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = low.iter().map(String::as_str).collect();
    let s = |i: usize| segs.get(i).copied().unwrap_or_default();
    let op = match l.as_slice() {
        ["subscriptions", _, "providers", "microsoft.compute", "virtualmachinescalesets"] => {
            Op::VmssListAll
        }
        ["subscriptions", _, "providers", "microsoft.compute", "virtualmachines"] => Op::VmListAll,
        ["subscriptions", _, "providers", "microsoft.network", "networkinterfaces"] => {
            Op::NicListAll
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.compute", rest @ ..] => {
            match rest {
                ["virtualmachinescalesets"] => Op::VmssList(s(3)),
                ["virtualmachinescalesets", _] => Op::VmssGet(s(3), s(7)),
                ["virtualmachinescalesets", _, "virtualmachines"] => Op::VmssVmList(s(3), s(7)),
                ["virtualmachinescalesets", _, "virtualmachines", _] => {
                    Op::VmssVmGet(s(3), s(7), s(9))
                }
                ["virtualmachinescalesets", _, "virtualmachines", _, "instanceview"] => {
                    Op::VmssVmInstanceView(s(3), s(7), s(9))
                }
                ["virtualmachinescalesets", _, "networkinterfaces"] => Op::VmssNicList(s(3), s(7)),
                ["virtualmachinescalesets", _, "virtualmachines", _, "networkinterfaces"] => {
                    Op::VmssVmNicList(s(3), s(7), s(9))
                }
                ["virtualmachinescalesets", _, "virtualmachines", _, "networkinterfaces", _] => {
                    Op::VmssVmNicGet(s(3), s(7), s(9), s(11))
                }
                ["virtualmachines"] => Op::VmList(s(3)),
                ["virtualmachines", _] => Op::VmGet(s(3), s(7)),
                ["virtualmachines", _, "instanceview"] => Op::VmInstanceView(s(3), s(7)),
                _ => return Err(Some(("Microsoft.Compute".into(), type_name(&segs[6..])))),
            }
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.network", rest @ ..] => {
            match rest {
                ["networkinterfaces"] => Op::NicList(s(3)),
                ["networkinterfaces", _] => Op::NicGet(s(3), s(7)),
                _ => return Err(Some(("Microsoft.Network".into(), type_name(&segs[6..])))),
            }
        }
        ["subscriptions", _, "resourcegroups", _, "providers", _, rest @ ..]
            if !rest.is_empty() =>
        {
            return Err(Some((s(5).to_string(), type_name(&segs[6..]))))
        }
        _ => return Err(None),
    };
    Ok((s(1), op))
}

/// "virtualMachineScaleSets/foo/bar" → "virtualMachineScaleSets/bar" (types skip names).
fn type_name(rest: &[&str]) -> String {
    rest.iter()
        .step_by(2)
        .copied()
        .collect::<Vec<_>>()
        .join("/")
}

fn handle_inner(sh: &Shared, req: &Req) -> Reply {
    if let Err(r) = authenticate(sh, req) {
        return r;
    }
    let enforce = sh.opts.enforce_limits;
    let remaining = match sh.consume_read(enforce) {
        Ok(r) => r,
        Err(wait) => {
            return arm_error(
                429,
                "SubscriptionRequestsThrottled",
                "Number of 'read' requests for subscription actor exceeded. Please try again after some time.",
            )
            .header("retry-after", retry_secs(wait).to_string())
            .header("x-ms-ratelimit-remaining-subscription-reads", "0");
        }
    };
    let class = compute_class(req);
    let compute =
        class.map(|c| lock(&sh.compute).take(c, &sh.opts.compute_limits, enforce, Instant::now()));
    let reply = match &compute {
        Some(Err((policy, wait))) => arm_error(
            429,
            "OperationNotAllowed",
            &format!(
                "The server rejected the request because too many requests have been received for this subscription. (policy {policy})"
            ),
        )
        .header("retry-after", retry_secs(*wait).to_string()),
        _ => serve(sh, req),
    };
    let reply = match compute {
        Some(Ok(h)) => reply.header("x-ms-ratelimit-remaining-resource", h),
        Some(Err((policy, _))) => {
            reply.header("x-ms-ratelimit-remaining-resource", format!("{policy};0"))
        }
        None => reply,
    };
    reply.header(
        "x-ms-ratelimit-remaining-subscription-reads",
        remaining.to_string(),
    )
}

fn retry_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// Compute's read policies as the fake applies them (per subscription region; one set of
/// buckets for the whole fake). Compute does not publish these numbers; the defaults sit
/// near values seen in public `x-ms-ratelimit-remaining-resource` examples
/// (`Microsoft.Compute/HighCostGet3Min;107,Microsoft.Compute/HighCostGet30Min;1115`).
/// Each policy is a token bucket refilled evenly over its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComputeLimits {
    /// Reads of instance views (lists with `$expand=instanceView`, `statusOnly=true`,
    /// instance view GETs) per 3 minutes.
    pub high_cost_3min: u32,
    /// The same per 30 minutes.
    pub high_cost_30min: u32,
    /// Other Compute reads per 3 minutes.
    pub low_cost_3min: u32,
    /// Other Compute reads per 30 minutes.
    pub low_cost_30min: u32,
}

impl Default for ComputeLimits {
    fn default() -> Self {
        ComputeLimits {
            high_cost_3min: 180,
            high_cost_30min: 1500,
            low_cost_3min: 2000,
            low_cost_30min: 15000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CostClass {
    High,
    Low,
}

/// Which Compute policy a request counts against (None: not a Compute request).
fn compute_class(req: &Req) -> Option<CostClass> {
    let path = req.path.to_ascii_lowercase();
    if !path.contains("/providers/microsoft.compute/") {
        return None;
    }
    let q = |k: &str| req.query_get(k).map(|v| v.to_ascii_lowercase());
    let high = path.ends_with("/instanceview")
        || q("$expand").is_some_and(|v| v == "instanceview")
        || q("$select").is_some_and(|v| v.starts_with("instanceview"))
        || q("statusOnly").is_some_and(|v| v == "true");
    Some(if high {
        CostClass::High
    } else {
        CostClass::Low
    })
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The fake's Compute buckets.
#[derive(Debug, Default)]
pub(crate) struct ComputeBuckets {
    buckets: std::collections::HashMap<&'static str, Bucket>,
}

impl ComputeBuckets {
    /// Takes one call from both policies of the class; the header value, or the empty
    /// policy and how long until it has a call again.
    pub(crate) fn take(
        &mut self,
        class: CostClass,
        limits: &ComputeLimits,
        enforce: bool,
        now: Instant,
    ) -> Result<String, (String, std::time::Duration)> {
        let policies: [(&'static str, u32, f64); 2] = match class {
            CostClass::High => [
                (
                    "Microsoft.Compute/HighCostGet3Min",
                    limits.high_cost_3min,
                    180.0,
                ),
                (
                    "Microsoft.Compute/HighCostGet30Min",
                    limits.high_cost_30min,
                    1800.0,
                ),
            ],
            CostClass::Low => [
                (
                    "Microsoft.Compute/LowCostGet3Min",
                    limits.low_cost_3min,
                    180.0,
                ),
                (
                    "Microsoft.Compute/LowCostGet30Min",
                    limits.low_cost_30min,
                    1800.0,
                ),
            ],
        };
        let mut left = Vec::new();
        for (name, cap, window) in policies {
            let cap = f64::from(cap.max(1));
            let rate = cap / window;
            let b = self.buckets.entry(name).or_insert(Bucket {
                tokens: cap,
                at: now,
            });
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(cap);
            b.at = now;
            if enforce && b.tokens < 1.0 {
                return Err((
                    name.to_string(),
                    std::time::Duration::from_secs_f64((1.0 - b.tokens) / rate),
                ));
            }
        }
        for (name, _, _) in policies {
            if let Some(b) = self.buckets.get_mut(name) {
                b.tokens = (b.tokens - 1.0).max(0.0);
                left.push(format!("{name};{}", b.tokens as u64));
            }
        }
        Ok(left.join(","))
    }
}

fn serve(sh: &Shared, req: &Req) -> Reply {
    let Some(version) = req.query_get("api-version") else {
        return arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    };
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(r) = crate::network::serve(&sh.network, &sh.urls.arm, req, &segs, &version) {
        return r;
    }
    let (sub, op) = match route(&segs) {
        Ok(x) => x,
        Err(Some((ns, ty))) => {
            return arm_error(
                400,
                "InvalidResourceType",
                &format!(
                    "The resource type '{ty}' could not be found in the namespace '{ns}' for api version '{version}'."
                ),
            )
        }
        Err(None) => {
            return arm_error(
                404,
                "NotFound",
                &format!("The requested path '{}' was not found.", req.path),
            )
        }
    };
    let versions = op.api().versions();
    if !versions.contains(&version.as_str()) {
        return arm_error(
            400,
            "InvalidApiVersionParameter",
            &format!(
                "The api-version '{version}' is invalid. The supported versions are '{}'.",
                versions.join(",")
            ),
        );
    }
    if req.method != "GET" {
        return Reply::json(
            405,
            &json!({"message": format!("The requested resource does not support http method '{}'.", req.method)}),
        );
    }
    let mut guard = lock(&sh.fleet);
    guard.advance(Instant::now());
    let st = &*guard;
    let Some(subscription) = st.subs.get(&sub.to_ascii_lowercase()) else {
        return arm_error(
            404,
            "SubscriptionNotFound",
            &format!("The subscription '{sub}' could not be found."),
        );
    };
    let ctx = Ctx { sh, req };
    match op {
        Op::VmssListAll => ctx.list_sets_all(subscription),
        Op::VmListAll => ctx.list_flex_vms_all(subscription),
        Op::NicListAll => ctx.list_flex_nics_all(subscription),
        Op::VmssList(rg)
        | Op::VmssGet(rg, _)
        | Op::VmssVmList(rg, _)
        | Op::VmssVmGet(rg, ..)
        | Op::VmssVmInstanceView(rg, ..)
        | Op::VmssNicList(rg, _)
        | Op::VmssVmNicList(rg, ..)
        | Op::VmssVmNicGet(rg, ..)
        | Op::VmList(rg)
        | Op::VmGet(rg, _)
        | Op::VmInstanceView(rg, _)
        | Op::NicList(rg)
        | Op::NicGet(rg, _) => {
            let Some(group) = subscription.rgs.get(&rg.to_ascii_lowercase()) else {
                return arm_error(
                    404,
                    "ResourceGroupNotFound",
                    &format!("Resource group '{rg}' could not be found."),
                );
            };
            ctx.in_group(subscription, group, &op, rg)
        }
    }
}

struct Ctx<'a> {
    sh: &'a Shared,
    req: &'a Req,
}

fn not_found(rg: &str, ty: &str, name: &str) -> Reply {
    arm_error(
        404,
        "ResourceNotFound",
        &format!(
            "The Resource '{ty}/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        ),
    )
}

fn parent_not_found(sub: &str, group: &ResourceGroup, child_type: &str, parent: &str) -> Reply {
    arm_error(
        404,
        "ParentResourceNotFound",
        &format!(
            "Failed to perform 'read' on resource(s) of type 'virtualMachineScaleSets/{child_type}', because the parent resource '/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{parent}' could not be found.",
            group.name
        ),
    )
}

/// Parses a Uniform instance id ("0", "17").
fn uniform_instance<'s>(ss: &'s ScaleSet, iid: &str) -> Option<&'s Instance> {
    if ss.mode != Orchestration::Uniform {
        return None;
    }
    let n: u64 = iid.parse().ok()?;
    if n.to_string() != iid {
        return None;
    }
    ss.instances.get(&n)
}

/// A page request: the page index and the cursor key after which to continue.
struct Cursor {
    page: usize,
    after: Option<String>,
}

impl<'a> Ctx<'a> {
    fn cursor(&self) -> Result<Cursor, Reply> {
        let Some(tok) = self.req.query_get("$skiptoken") else {
            return Ok(Cursor {
                page: 0,
                after: None,
            });
        };
        let parsed = unhex(&tok)
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                let (p, k) = s.split_once('|')?;
                Some(Cursor {
                    page: p.parse().ok()?,
                    after: Some(k.to_string()),
                })
            });
        parsed.ok_or_else(|| {
            arm_error_target(
                400,
                "InvalidParameter",
                "The value of parameter $skiptoken is invalid.",
                "$skiptoken",
            )
        })
    }

    /// Applies a FailPage fault for this page, if one matches.
    fn page_fault(&self, page: usize) -> Option<Reply> {
        let status =
            self.sh
                .faults
                .take_page(Service::Arm, &self.req.path, &self.req.query, page)?;
        let mut r = arm_error(
            status,
            code_for_status(status),
            &format!("Injected failure for page {page}."),
        );
        if status == 429 || status == 503 {
            r = r.header("retry-after", "1");
        }
        Some(r)
    }

    fn next_link(&self, page: usize, key: &str) -> String {
        let tok = hex(format!("{page}|{key}").as_bytes());
        let kept: Vec<&str> = self
            .req
            .query
            .split('&')
            .filter(|p| {
                !p.is_empty()
                    && !url::form_urlencoded::parse(p.as_bytes())
                        .next()
                        .is_some_and(|(k, _)| k.eq_ignore_ascii_case("$skiptoken"))
            })
            .collect();
        let sep = if kept.is_empty() { "" } else { "&" };
        format!(
            "{}{}?{}{sep}$skiptoken={tok}",
            self.sh.urls.arm,
            self.req.path,
            kept.join("&")
        )
    }

    /// Generic paging over an ordered map keyed by strings.
    /// Parses `$skiptoken` and applies a FailPage fault for the page, if one matches.
    fn begin(&self) -> Result<Cursor, Reply> {
        let cur = self.cursor()?;
        match self.page_fault(cur.page) {
            Some(r) => Err(r),
            None => Ok(cur),
        }
    }

    /// Takes up to a page of items from `iter` (already positioned after the cursor and
    /// filtered); the key of the last item becomes the next cursor if more items follow.
    fn paginate<T>(
        &self,
        page: usize,
        iter: impl Iterator<Item = (String, T)>,
        render: impl Fn(T) -> Option<Value>,
    ) -> Reply {
        let size = self.sh.opts.page_size.max(1);
        let mut items = Vec::with_capacity(size.min(1024));
        let mut last: Option<String> = None;
        let mut more = false;
        for (k, t) in iter {
            if items.len() == size {
                more = true;
                break;
            }
            if let Some(v) = render(t) {
                items.push(v);
                last = Some(k);
            }
        }
        self.page_reply(items, last.filter(|_| more), page)
    }

    fn page_reply(&self, items: Vec<Value>, next_key: Option<String>, page: usize) -> Reply {
        let mut body = json!({ "value": items });
        if let Some(k) = next_key {
            body["nextLink"] = Value::String(self.next_link(page + 1, &k));
        }
        Reply::json(200, &body)
    }

    /// VirtualMachineScaleSets_List (one group).
    fn list_sets(&self, group: &ResourceGroup) -> Reply {
        let cur = match self.begin() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let iter = range_after(&group.sets, cur.after.as_deref())
            .filter(|(_, s)| !s.standalone)
            .map(|(k, s)| (k.clone(), s));
        self.paginate(cur.page, iter, |s| Some(vmss_json(s)))
    }

    /// VirtualMachineScaleSets_ListAll (every group of the subscription).
    fn list_sets_all(&self, sub: &Subscription) -> Reply {
        let cur = match self.begin() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let iter = across_groups(sub, cur.after.as_deref(), |g| &g.sets)
            .filter(|(_, _, s)| !s.standalone)
            .map(|(k, _, s)| (k, s));
        self.paginate(cur.page, iter, |s| Some(vmss_json(s)))
    }

    /// VirtualMachines_ListAll: every ordinary VM (Flexible members and standalone VMs) of
    /// the subscription; `statusOnly=true` adds each one's instance view.
    fn list_flex_vms_all(&self, sub: &Subscription) -> Reply {
        let expand = match self.vm_list_expand(true) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let status_only = self
            .req
            .query_get("statusOnly")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let expand = expand || status_only;
        let cur = match self.begin() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let iter = across_groups(sub, cur.after.as_deref(), |g| &g.flex_vms)
            .filter_map(|(k, _, r)| Some((k, sub.resolve(r)?)));
        self.paginate(cur.page, iter, |(ss, inst)| Some(vm_json(ss, inst, expand)))
    }

    /// NetworkInterfaces_ListAll: every NIC of a Flexible member in the subscription.
    fn list_flex_nics_all(&self, sub: &Subscription) -> Reply {
        let cur = match self.begin() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let iter =
            across_groups(sub, cur.after.as_deref(), |g| &g.flex_nics).filter_map(|(k, _, r)| {
                let (ss, inst) = sub.resolve(r)?;
                Some((k, (ss, inst, r.nic)))
            });
        self.paginate(cur.page, iter, |(ss, inst, idx)| nic_json(ss, inst, idx))
    }

    /// Validates `$filter`/`$expand` of VirtualMachines_List; returns whether to expand
    /// the instance view. `all` = ListAll (no filter support).
    fn vm_list_expand(&self, all: bool) -> Result<bool, Reply> {
        let expand = match self.req.query_get("$expand") {
            None => false,
            Some(e) if e.eq_ignore_ascii_case("instanceView") => true,
            Some(_) => {
                return Err(arm_error_target(
                    400,
                    "InvalidParameter",
                    "The value of parameter $expand is invalid.",
                    "$expand",
                ))
            }
        };
        if all && self.req.query_get("$filter").is_some() {
            return Err(arm_error_target(
                400,
                "InvalidParameter",
                "The value of parameter $filter is invalid.",
                "$filter",
            ));
        }
        Ok(expand)
    }

    fn in_group(
        &self,
        subscription: &Subscription,
        group: &ResourceGroup,
        op: &Op,
        rg: &str,
    ) -> Reply {
        let sub = subscription.name.as_str();
        let set_of = |name: &str| {
            group
                .sets
                .get(&name.to_ascii_lowercase())
                .filter(|s| !s.standalone)
        };
        match *op {
            Op::VmssList(_) => self.list_sets(group),
            Op::VmssGet(_, name) => match set_of(name) {
                Some(ss) => Reply::json(200, &vmss_json(ss)),
                None => not_found(rg, "Microsoft.Compute/virtualMachineScaleSets", name),
            },
            Op::VmssVmList(_, name) => {
                let Some(ss) = set_of(name) else {
                    return parent_not_found(sub, group, "virtualMachines", name);
                };
                self.vmss_vm_list(ss)
            }
            Op::VmssVmGet(_, name, iid) | Op::VmssVmInstanceView(_, name, iid) => {
                let Some(ss) = set_of(name) else {
                    return parent_not_found(sub, group, "virtualMachines", name);
                };
                let view = matches!(op, Op::VmssVmInstanceView(..));
                if ss.mode == Orchestration::Flexible {
                    let inst = ss
                        .instances
                        .values()
                        .find(|i| ss.vm_name(i).eq_ignore_ascii_case(iid));
                    return match inst {
                        Some(i) if view => Reply::json(200, &vm_instance_view_json(ss, i)),
                        Some(i) => Reply::json(200, &flex_vmss_vm_json(ss, i)),
                        None => not_found(
                            rg,
                            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
                            &format!("{}/{iid}", ss.name),
                        ),
                    };
                }
                match uniform_instance(ss, iid) {
                    Some(i) if view => Reply::json(200, &vmss_vm_instance_view_json(ss, i)),
                    Some(i) => {
                        let expand = self
                            .req
                            .query_get("$expand")
                            .is_some_and(|e| e.eq_ignore_ascii_case("instanceView"));
                        Reply::json(200, &vmss_vm_json(ss, i, expand))
                    }
                    None => not_found(
                        rg,
                        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
                        &format!("{}/{iid}", ss.name),
                    ),
                }
            }
            Op::VmssNicList(_, name) => {
                let Some(ss) = set_of(name) else {
                    return parent_not_found(sub, group, "networkInterfaces", name);
                };
                self.vmss_nic_list(ss, None)
            }
            Op::VmssVmNicList(_, name, iid) => {
                let Some(ss) = set_of(name) else {
                    return parent_not_found(sub, group, "virtualMachines/networkInterfaces", name);
                };
                match uniform_instance(ss, iid) {
                    Some(i) => self.vmss_nic_list(ss, Some(i.id)),
                    None => not_found(
                        rg,
                        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
                        &format!("{}/{iid}", ss.name),
                    ),
                }
            }
            Op::VmssVmNicGet(_, name, iid, nic) => {
                let Some(ss) = set_of(name) else {
                    return parent_not_found(sub, group, "virtualMachines/networkInterfaces", name);
                };
                let found = uniform_instance(ss, iid).and_then(|i| {
                    (0..=i.secondary.len())
                        .find(|idx| ss.uniform_nic_name(*idx).eq_ignore_ascii_case(nic))
                        .map(|idx| (i, idx))
                });
                match found.and_then(|(i, idx)| vmss_nic_json(ss, i, idx)) {
                    Some(v) => Reply::json(200, &v),
                    None => not_found(
                        rg,
                        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/networkInterfaces",
                        &format!("{}/{iid}/{nic}", ss.name),
                    ),
                }
            }
            Op::VmList(_) => self.vm_list(subscription, group),
            Op::VmGet(_, vm) | Op::VmInstanceView(_, vm) => {
                let found = group
                    .flex_vms
                    .get(&vm.to_ascii_lowercase())
                    .and_then(|r| subscription.resolve(r));
                let Some((ss, inst)) = found else {
                    return not_found(rg, "Microsoft.Compute/virtualMachines", vm);
                };
                if matches!(op, Op::VmInstanceView(..)) {
                    return Reply::json(200, &vm_instance_view_json(ss, inst));
                }
                let expand = match self.req.query_get("$expand") {
                    None => false,
                    Some(e) if e.eq_ignore_ascii_case("instanceView") => true,
                    Some(e) if e.eq_ignore_ascii_case("userData") => false,
                    Some(_) => {
                        return arm_error_target(
                            400,
                            "InvalidParameter",
                            "The value of parameter $expand is invalid.",
                            "$expand",
                        )
                    }
                };
                Reply::json(200, &vm_json(ss, inst, expand))
            }
            Op::NicList(_) => {
                let cur = match self.begin() {
                    Ok(c) => c,
                    Err(r) => return r,
                };
                let iter =
                    range_after(&group.flex_nics, cur.after.as_deref()).filter_map(|(k, r)| {
                        let (ss, inst) = subscription.resolve(r)?;
                        Some((k.clone(), (ss, inst, r.nic)))
                    });
                self.paginate(cur.page, iter, |(ss, inst, idx)| nic_json(ss, inst, idx))
            }
            Op::NicGet(_, nic) => {
                let found = group
                    .flex_nics
                    .get(&nic.to_ascii_lowercase())
                    .and_then(|r| {
                        let (ss, inst) = subscription.resolve(r)?;
                        nic_json(ss, inst, r.nic)
                    });
                match found {
                    Some(v) => Reply::json(200, &v),
                    None => not_found(rg, "Microsoft.Network/networkInterfaces", nic),
                }
            }
            Op::VmssListAll | Op::VmListAll | Op::NicListAll => {
                arm_error(500, "InternalServerError", "unreachable route")
            }
        }
    }

    /// VirtualMachines_List in a resource group, with the optional
    /// `$filter='virtualMachineScaleSet/id' eq '<id>'` and `$expand=instanceView`.
    fn vm_list(&self, subscription: &Subscription, group: &ResourceGroup) -> Reply {
        let expand = match self.vm_list_expand(false) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let filter = match self.req.query_get("$filter") {
            None => None,
            Some(f) => match parse_vmss_filter(&f) {
                Some(id) => Some(id.to_ascii_lowercase()),
                None => {
                    return arm_error_target(
                        400,
                        "InvalidParameter",
                        "The value of parameter $filter is invalid.",
                        "$filter",
                    )
                }
            },
        };
        if expand && filter.is_none() {
            return arm_error_target(
                400,
                "InvalidParameter",
                "The $expand=instanceView query option can only be specified together with a valid $filter option.",
                "$expand",
            );
        }
        // The filter names one scale set: resolve it once, then walk the group's index.
        let only_set: Option<Option<&String>> = filter.map(|f| {
            group
                .sets
                .iter()
                .find(|(_, ss)| !ss.standalone && ss.id().to_ascii_lowercase() == f)
                .map(|(k, _)| k)
        });
        let cur = match self.begin() {
            Ok(c) => c,
            Err(r) => return r,
        };
        if only_set == Some(None) {
            return self.page_reply(Vec::new(), None, cur.page);
        }
        let only_set = only_set.flatten();
        let iter = range_after(&group.flex_vms, cur.after.as_deref()).filter_map(|(k, r)| {
            if only_set.is_some_and(|s| *s != r.set_key) {
                return None;
            }
            Some((k.clone(), subscription.resolve(r)?))
        });
        self.paginate(cur.page, iter, |(ss, inst)| Some(vm_json(ss, inst, expand)))
    }

    /// VirtualMachineScaleSetVMs_List.
    fn vmss_vm_list(&self, ss: &ScaleSet) -> Reply {
        let expand = match self.req.query_get("$expand") {
            None => false,
            Some(e) if e.eq_ignore_ascii_case("instanceView") => true,
            Some(_) => {
                return arm_error_target(
                    400,
                    "InvalidParameter",
                    "The value of parameter $expand is invalid.",
                    "$expand",
                )
            }
        };
        let only_latest = match self.req.query_get("$filter") {
            None => None,
            Some(f) => match parse_vmss_vm_filter(&f) {
                Some(x) => x,
                None => {
                    return arm_error_target(
                        400,
                        "InvalidParameter",
                        "The value of parameter $filter is invalid.",
                        "$filter",
                    )
                }
            },
        };
        let select_view = match self.req.query_get("$select") {
            None => false,
            Some(s) => {
                let s = s.to_ascii_lowercase();
                if s != "instanceview" && s != "instanceview/statuses" {
                    return arm_error_target(
                        400,
                        "InvalidParameter",
                        "The value of parameter $select is invalid.",
                        "$select",
                    );
                }
                true
            }
        };
        let cur = match self.begin() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let after = match cur.after.as_deref().map(str::parse::<u64>) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => {
                return arm_error_target(
                    400,
                    "InvalidParameter",
                    "The value of parameter $skiptoken is invalid.",
                    "$skiptoken",
                )
            }
        };
        let size = self.sh.opts.page_size.max(1);
        let range = match after {
            Some(n) => ss.instances.range((Bound::Excluded(n), Bound::Unbounded)),
            None => ss.instances.range(..),
        };
        let mut items = Vec::with_capacity(size);
        let mut last = None;
        let mut more = false;
        // All simulated instances run the latest model.
        if only_latest != Some(false) {
            for (id, inst) in range {
                if items.len() == size {
                    more = true;
                    break;
                }
                items.push(match ss.mode {
                    Orchestration::Uniform => vmss_vm_json(ss, inst, expand || select_view),
                    Orchestration::Flexible => flex_vmss_vm_json(ss, inst),
                });
                last = Some(*id);
            }
        }
        self.page_reply(
            items,
            last.filter(|_| more).map(|n| n.to_string()),
            cur.page,
        )
    }

    /// NIC list of a Uniform set (or of one of its instances). Flexible sets have none here.
    fn vmss_nic_list(&self, ss: &ScaleSet, only: Option<u64>) -> Reply {
        let cur = match self.begin() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let after: Option<(u64, usize)> = match cur.after.as_deref() {
            None => None,
            Some(k) => match k
                .split_once('.')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            {
                Some(x) => Some(x),
                None => {
                    return arm_error_target(
                        400,
                        "InvalidParameter",
                        "The value of parameter $skiptoken is invalid.",
                        "$skiptoken",
                    )
                }
            },
        };
        let size = self.sh.opts.page_size.max(1);
        let mut items = Vec::with_capacity(size);
        let mut last: Option<(u64, usize)> = None;
        let mut more = false;
        if ss.mode == Orchestration::Uniform {
            let range = match after {
                Some((id, _)) => ss.instances.range(id..),
                None => ss.instances.range(..),
            };
            'outer: for (id, inst) in range {
                if only.is_some_and(|o| o != *id) {
                    continue;
                }
                for idx in 0..=inst.secondary.len() {
                    if after.is_some_and(|a| (*id, idx) <= a) {
                        continue;
                    }
                    if items.len() == size {
                        more = true;
                        break 'outer;
                    }
                    if let Some(v) = vmss_nic_json(ss, inst, idx) {
                        items.push(v);
                        last = Some((*id, idx));
                    }
                }
            }
        }
        self.page_reply(
            items,
            last.filter(|_| more).map(|(a, b)| format!("{a}.{b}")),
            cur.page,
        )
    }
}

/// Entries of `map` strictly after `after` (all entries without a cursor).
fn range_after<'m, V>(
    map: &'m BTreeMap<String, V>,
    after: Option<&str>,
) -> std::collections::btree_map::Range<'m, String, V> {
    match after {
        Some(k) => map.range::<str, _>((Bound::Excluded(k), Bound::Unbounded)),
        None => map.range::<str, _>(..),
    }
}

/// Walks one per-group index across every group of a subscription, in (group, key) order,
/// starting after the cursor "<group>/<key>". Keys are built lazily, only for visited items.
fn across_groups<'s, V: 's>(
    sub: &'s Subscription,
    after: Option<&str>,
    index: impl Fn(&'s ResourceGroup) -> &'s BTreeMap<String, V> + 's,
) -> impl Iterator<Item = (String, &'s ResourceGroup, &'s V)> + 's {
    let (after_rg, after_key) = match after.and_then(|a| a.split_once('/')) {
        Some((g, k)) => (Some(g.to_string()), Some(k.to_string())),
        None => (None, None),
    };
    let groups = match &after_rg {
        Some(g) => sub
            .rgs
            .range::<str, _>((Bound::Included(g.as_str()), Bound::Unbounded)),
        None => sub.rgs.range::<str, _>(..),
    };
    groups.flat_map(move |(gk, g)| {
        let inner = if after_rg.as_deref() == Some(gk.as_str()) {
            range_after(index(g), after_key.as_deref())
        } else {
            range_after(index(g), None)
        };
        inner.map(move |(k, v)| (format!("{gk}/{k}"), g, v))
    })
}

/// `'virtualMachineScaleSet/id' eq '<id>'` → the id. Whitespace-tolerant.
fn parse_vmss_filter(f: &str) -> Option<String> {
    let f = f.trim();
    let rest = f
        .strip_prefix("'virtualMachineScaleSet/id'")
        .or_else(|| f.strip_prefix("virtualMachineScaleSet/id"))?
        .trim_start();
    let rest = rest.strip_prefix("eq")?.trim();
    let id = rest.strip_prefix('\'')?.strip_suffix('\'')?;
    id.starts_with('/').then(|| id.to_string())
}

/// The values the spec allows for VirtualMachineScaleSetVMs_List `$filter`. Returns
/// `Some(None)` for "no restriction", `Some(Some(b))` for latestModelApplied eq b.
fn parse_vmss_vm_filter(f: &str) -> Option<Option<bool>> {
    let norm: String = f
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    match norm.as_str() {
        "startswith(instanceview/statuses/code, 'powerstate') eq true"
        | "startswith(instanceview/statuses/code,'powerstate') eq true" => Some(None),
        "properties/latestmodelapplied eq true" => Some(Some(true)),
        "properties/latestmodelapplied eq false" => Some(Some(false)),
        _ => None,
    }
}

fn subnet_id(ss: &ScaleSet) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/virtualNetworks/{}-vnet/subnets/default",
        ss.sub, ss.rg, ss.rg
    )
}

fn nsg_id(ss: &ScaleSet) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/networkSecurityGroups/{}-nsg",
        ss.sub, ss.rg, ss.name
    )
}

fn mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("00-0D-3A-{:02X}-{:02X}-{:02X}", o[1], o[2], o[3])
}

fn nic_config_model(ss: &ScaleSet) -> Value {
    json!([{
        "name": ss.uniform_nic_name(0),
        "properties": {
            "primary": true,
            "enableAcceleratedNetworking": false,
            "enableIPForwarding": false,
            "deleteOption": "Delete",
            "networkSecurityGroup": {"id": nsg_id(ss)},
            "dnsSettings": {"dnsServers": []},
            "ipConfigurations": [{
                "name": format!("{}-ipconfig", ss.name),
                "properties": {
                    "primary": true,
                    "privateIPAddressVersion": "IPv4",
                    "subnet": {"id": subnet_id(ss)},
                },
            }],
        },
    }])
}

fn computer_name(ss: &ScaleSet, id: u64) -> String {
    let prefix: String = ss
        .name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(9)
        .collect();
    let mut n = id;
    let mut digits = Vec::new();
    for _ in 0..6 {
        let d = (n % 36) as u32;
        digits.push(std::char::from_digit(d, 36).unwrap_or('0'));
        n /= 36;
    }
    digits.reverse();
    format!(
        "{prefix}{}",
        digits.into_iter().collect::<String>().to_ascii_uppercase()
    )
}

/// VirtualMachineScaleSets_Get shape (keys as in the official example).
fn vmss_json(ss: &ScaleSet) -> Value {
    let mut props = json!({
        "singlePlacementGroup": false,
        "orchestrationMode": ss.mode.as_str(),
        "virtualMachineProfile": {
            "storageProfile": {
                "osDisk": {
                    "osType": "Linux",
                    "createOption": "FromImage",
                    "caching": "ReadWrite",
                    "managedDisk": {"storageAccountType": "Premium_LRS"},
                    "diskSizeGB": 30,
                },
                "imageReference": {
                    "publisher": "Canonical",
                    "offer": "ubuntu-24_04-lts",
                    "sku": "server",
                    "version": "latest",
                },
                "dataDisks": [],
            },
            "osProfile": {
                "computerNamePrefix": ss.name.chars().filter(|c| c.is_ascii_alphanumeric()).take(9).collect::<String>(),
                "adminUsername": "azureuser",
                "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "provisionVMAgent": true,
                },
                "secrets": [],
                "allowExtensionOperations": true,
            },
            "networkProfile": {
                "networkInterfaceConfigurations": nic_config_model(ss),
            },
            "securityProfile": {"securityType": "Standard"},
        },
        "provisioningState": "Succeeded",
        "overprovision": false,
        "doNotRunExtensionsOnOverprovisionedVMs": false,
        "uniqueId": ss.unique_id,
        "platformFaultDomainCount": 1,
        "timeCreated": compute_time(ss.created),
    });
    props["upgradePolicy"] = json!({
        "mode": "Manual",
        "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": false},
    });
    if ss.mode == Orchestration::Flexible {
        props["virtualMachineProfile"]["networkProfile"]["networkApiVersion"] = json!("2020-11-01");
    }
    if ss.health_extension {
        // The Application Health extension as `az vmss extension set` adds it.
        props["virtualMachineProfile"]["extensionProfile"] = json!({
            "extensions": [{
                "name": "HealthExtension",
                "properties": {
                    "publisher": "Microsoft.ManagedServices",
                    "type": "ApplicationHealthLinux",
                    "typeHandlerVersion": "2.0",
                    "autoUpgradeMinorVersion": true,
                    "settings": {"protocol": "http", "port": 8080, "requestPath": "/healthz", "intervalInSeconds": 5, "numberOfProbes": 1, "gracePeriod": 600},
                },
            }],
        });
    }
    json!({
        "name": ss.name,
        "id": ss.id(),
        "type": "Microsoft.Compute/virtualMachineScaleSets",
        "location": ss.location,
        "tags": ss.tags,
        "sku": {"name": SKU, "tier": "Standard", "capacity": ss.capacity},
        "properties": props,
    })
}

fn status(code: String, display: String, time: Option<String>, level: &str) -> Value {
    json!({"code": code, "level": level, "displayStatus": display, "message": null, "time": time})
}

fn provisioning_status(inst: &Instance) -> Value {
    let lower = inst.provisioning_state.to_ascii_lowercase();
    let (display, level) = match lower.as_str() {
        "succeeded" => ("Provisioning succeeded".to_string(), "Info"),
        "failed" => ("Provisioning failed".to_string(), "Error"),
        _ => (inst.provisioning_state.clone(), "Info"),
    };
    status(
        format!("ProvisioningState/{lower}"),
        display,
        Some(compute_time(inst.created)),
        level,
    )
}

fn power_status(inst: &Instance) -> Value {
    status(
        format!("PowerState/{}", inst.power_state),
        format!("VM {}", inst.power_state),
        None,
        "Info",
    )
}

/// `vmHealth` as the Application Health extension reports it, when the instance has one.
fn vm_health(inst: &Instance) -> Option<Value> {
    let h = inst.health.as_deref()?;
    let display = match h {
        "healthy" => "The VM is healthy",
        "unhealthy" => "The VM is unhealthy",
        _ => "The VM health is unknown",
    };
    Some(json!({"status": {
        "code": format!("HealthState/{h}"),
        "level": "Info",
        "displayStatus": display,
        "time": compute_time(now_epoch()),
    }}))
}

fn vm_agent(inst: &Instance) -> Value {
    json!({
        "vmAgentVersion": "2.12.0.2",
        "statuses": [{
            "code": "ProvisioningState/succeeded",
            "level": "Info",
            "displayStatus": "Ready",
            "message": "Guest Agent is running",
            "time": compute_time(inst.created + 60),
        }],
        "extensionHandlers": [],
    })
}

fn disks(vm_name: &str, inst: &Instance) -> Value {
    json!([{
        "name": format!("{vm_name}_OsDisk_1_{}", inst.vm_id.replace('-', "")),
        "encryptionSettings": null,
        "statuses": [{
            "code": "ProvisioningState/succeeded",
            "level": "Info",
            "displayStatus": "Provisioning succeeded",
            "message": null,
            "time": compute_time(inst.created),
        }],
    }])
}

/// VirtualMachineScaleSetVMs_GetInstanceView shape (bare instance view of a Uniform VM).
fn vmss_vm_instance_view_json(ss: &ScaleSet, inst: &Instance) -> Value {
    let mut v = vmss_vm_instance_view_base(ss, inst);
    if let Some(h) = vm_health(inst) {
        v["vmHealth"] = h;
    }
    v
}

fn vmss_vm_instance_view_base(ss: &ScaleSet, inst: &Instance) -> Value {
    json!({
        "platformUpdateDomain": inst.id % 5,
        "platformFaultDomain": 0,
        "rdpThumbPrint": null,
        "computerName": computer_name(ss, inst.id),
        "osName": "ubuntu",
        "osVersion": "24.04",
        "vmAgent": vm_agent(inst),
        "disks": disks(&format!("{}_{}", ss.name, inst.id), inst),
        "extensions": [],
        "hyperVGeneration": "V2",
        "bootDiagnostics": null,
        "statuses": [provisioning_status(inst), power_status(inst)],
    })
}

/// One Uniform VMSS VM (VirtualMachineScaleSetVMs_List item / _Get).
fn vmss_vm_json(ss: &ScaleSet, inst: &Instance, expand: bool) -> Value {
    let base = ss.id();
    let vm_id = format!("{base}/virtualMachines/{}", inst.id);
    let nics: Vec<Value> = (0..=inst.secondary.len())
        .map(|idx| {
            json!({
                "id": format!("{vm_id}/networkInterfaces/{}", ss.uniform_nic_name(idx)),
                "properties": {"primary": idx == 0, "deleteOption": "Delete"},
            })
        })
        .collect();
    let mut props = json!({
        "latestModelApplied": true,
        "modelDefinitionApplied": "VirtualMachineScaleSet",
        "vmId": inst.vm_id,
        "hardwareProfile": {"vmSize": SKU},
        "storageProfile": {
            "imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"},
            "osDisk": {
                "osType": "Linux",
                "name": format!("{}_{}_OsDisk_1_{}", ss.name, inst.id, inst.vm_id.replace('-', "")),
                "createOption": "FromImage",
                "caching": "ReadWrite",
                "diskSizeGB": 30,
            },
            "dataDisks": [],
        },
        "osProfile": {
            "computerName": computer_name(ss, inst.id),
            "adminUsername": "azureuser",
            "linuxConfiguration": {"disablePasswordAuthentication": true, "provisionVMAgent": true},
            "secrets": [],
            "allowExtensionOperations": true,
            "requireGuestProvisionSignal": true,
        },
        "networkProfile": {"networkInterfaces": nics},
        "networkProfileConfiguration": {"networkInterfaceConfigurations": nic_config_model(ss)},
        "provisioningState": inst.provisioning_state,
        "timeCreated": compute_time(inst.created),
    });
    if expand {
        props["instanceView"] = vmss_vm_instance_view_json(ss, inst);
    }
    json!({
        "name": format!("{}_{}", ss.name, inst.id),
        "id": vm_id,
        "type": "Microsoft.Compute/virtualMachines",
        "location": ss.location,
        "tags": inst.tags,
        "instanceId": inst.id.to_string(),
        "etag": "\"1\"",
        "sku": {"name": SKU, "tier": "Standard"},
        "properties": props,
    })
}

/// One member of a Flexible set as VirtualMachineScaleSetVMs_List returns it (official
/// "List Vmss VMs with VirtualMachineResourceId" example): no IPs, no power state.
fn flex_vmss_vm_json(ss: &ScaleSet, inst: &Instance) -> Value {
    let vm = ss.vm_name(inst);
    json!({
        "name": vm,
        "id": format!("{}/virtualMachines/{vm}", ss.id()),
        "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
        "location": ss.location,
        "instanceId": vm,
        "etag": "\"1\"",
        "properties": {"virtualMachineResourceId": flex_vm_id(ss, inst)},
    })
}

fn flex_vm_id(ss: &ScaleSet, inst: &Instance) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
        ss.sub,
        ss.rg,
        ss.vm_name(inst)
    )
}

fn flex_nic_id(ss: &ScaleSet, inst: &Instance, idx: usize) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/networkInterfaces/{}",
        ss.sub,
        ss.nic_rg(inst),
        ss.nic_name(inst, idx)
    )
}

/// VirtualMachines_InstanceView shape.
fn vm_instance_view_json(ss: &ScaleSet, inst: &Instance) -> Value {
    let mut v = vm_instance_view_base(ss, inst);
    // Newer Compute api-versions report vmHealth on plain VMs too (VirtualMachineInstanceView
    // .vmHealth in the SDKs), filled by the Application Health extension.
    if let Some(h) = vm_health(inst) {
        v["vmHealth"] = h;
    }
    v
}

fn vm_instance_view_base(ss: &ScaleSet, inst: &Instance) -> Value {
    json!({
        "platformUpdateDomain": 0,
        "platformFaultDomain": inst.id % 3,
        "computerName": ss.vm_name(inst).replace('_', ""),
        "osName": "ubuntu",
        "osVersion": "24.04",
        "vmAgent": vm_agent(inst),
        "disks": disks(&ss.vm_name(inst), inst),
        "bootDiagnostics": null,
        "extensions": [],
        "hyperVGeneration": "V2",
        "isVMInStandbyPool": false,
        "statuses": [provisioning_status(inst), power_status(inst)],
    })
}

/// A Flexible member as an ordinary VM (VirtualMachines_Get / _List item).
fn vm_json(ss: &ScaleSet, inst: &Instance, expand: bool) -> Value {
    let vm = ss.vm_name(inst);
    let nics: Vec<Value> = (0..=inst.secondary.len())
        .map(|idx| {
            json!({
                "id": flex_nic_id(ss, inst, idx),
                "properties": {"primary": idx == 0, "deleteOption": "Delete"},
            })
        })
        .collect();
    let mut props = json!({
        "vmId": inst.vm_id,
        "hardwareProfile": {"vmSize": SKU},
        "virtualMachineScaleSet": {"id": ss.id()},
        "storageProfile": {
            "imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"},
            "osDisk": {
                "osType": "Linux",
                "name": format!("{vm}_OsDisk_1_{}", inst.vm_id.replace('-', "")),
                "createOption": "FromImage",
                "caching": "ReadWrite",
                "deleteOption": "Delete",
                "diskSizeGB": 30,
            },
            "dataDisks": [],
        },
        "osProfile": {
            "computerName": vm.replace('_', ""),
            "adminUsername": "azureuser",
            "linuxConfiguration": {"disablePasswordAuthentication": true, "provisionVMAgent": true},
            "secrets": [],
            "allowExtensionOperations": true,
            "requireGuestProvisionSignal": true,
        },
        "networkProfile": {"networkInterfaces": nics},
        "provisioningState": inst.provisioning_state,
        "timeCreated": compute_time(inst.created),
    });
    if expand {
        props["instanceView"] = vm_instance_view_json(ss, inst);
    }
    if ss.standalone {
        if let Some(o) = props.as_object_mut() {
            o.remove("virtualMachineScaleSet");
        }
    }
    json!({
        "name": vm,
        "id": flex_vm_id(ss, inst),
        "type": "Microsoft.Compute/virtualMachines",
        "location": inst.location.as_deref().unwrap_or(&ss.location),
        "tags": inst.tags,
        "etag": "\"1\"",
        "properties": props,
    })
}

fn nic_ip(inst: &Instance, idx: usize) -> Option<Ipv4Addr> {
    if idx == 0 {
        Some(inst.ip)
    } else {
        inst.secondary.get(idx - 1).copied()
    }
}

/// One NIC of a Uniform set (shape of the VmssNetworkInterfaceList example).
fn vmss_nic_json(ss: &ScaleSet, inst: &Instance, idx: usize) -> Option<Value> {
    let ip = nic_ip(inst, idx)?;
    let vm_id = format!("{}/virtualMachines/{}", ss.id(), inst.id);
    let nic_name = ss.uniform_nic_name(idx);
    let nic_id = format!("{vm_id}/networkInterfaces/{nic_name}");
    let ipcfg = format!("{}-ipconfig", ss.name);
    Some(json!({
        "name": nic_name,
        "id": nic_id,
        "properties": {
            "provisioningState": "Succeeded",
            "ipConfigurations": [{
                "name": ipcfg,
                "id": format!("{nic_id}/ipConfigurations/{ipcfg}"),
                "properties": {
                    "provisioningState": "Succeeded",
                    "privateIPAddress": ip.to_string(),
                    "privateIPAllocationMethod": "Dynamic",
                    "subnet": {"id": subnet_id(ss)},
                    "primary": true,
                    "privateIPAddressVersion": "IPv4",
                    "loadBalancerBackendAddressPools": [],
                    "loadBalancerInboundNatRules": [],
                },
            }],
            "dnsSettings": {
                "dnsServers": [],
                "appliedDnsServers": [],
                "internalDomainNameSuffix": "testbed.bx.internal.cloudapp.net",
            },
            "macAddress": mac(ip),
            "enableAcceleratedNetworking": false,
            "enableIPForwarding": false,
            "networkSecurityGroup": {"id": nsg_id(ss)},
            "primary": idx == 0,
            "virtualMachine": {"id": vm_id},
        },
    }))
}

/// One NIC of a Flexible member (NetworkInterfaces_Get shape).
fn nic_json(ss: &ScaleSet, inst: &Instance, idx: usize) -> Option<Value> {
    let ip = nic_ip(inst, idx)?;
    let nic_id = flex_nic_id(ss, inst, idx);
    let etag = format!("W/\"{}\"", inst.vm_id);
    Some(json!({
        "name": ss.nic_name(inst, idx),
        "id": nic_id,
        "etag": etag,
        "location": inst.location.as_deref().unwrap_or(&ss.location),
        "type": "Microsoft.Network/networkInterfaces",
        "properties": {
            "provisioningState": "Succeeded",
            "resourceGuid": inst.vm_id,
            "ipConfigurations": [{
                "name": "ipconfig1",
                "id": format!("{nic_id}/ipConfigurations/ipconfig1"),
                "etag": etag,
                "type": "Microsoft.Network/networkInterfaces/ipConfigurations",
                "properties": {
                    "provisioningState": "Succeeded",
                    "privateIPAddress": ip.to_string(),
                    "privateIPAllocationMethod": "Dynamic",
                    "subnet": {"id": subnet_id(ss)},
                    "primary": true,
                    "privateIPAddressVersion": "IPv4",
                },
            }],
            "dnsSettings": {
                "dnsServers": [],
                "appliedDnsServers": [],
                "internalDomainNameSuffix": "testbed.bx.internal.cloudapp.net",
            },
            "macAddress": mac(ip),
            "enableAcceleratedNetworking": false,
            "disableTcpStateTracking": false,
            "enableIPForwarding": false,
            "networkSecurityGroup": {"id": nsg_id(ss)},
            "primary": idx == 0,
            "virtualMachine": {"id": flex_vm_id(ss, inst)},
            "vnetEncryptionSupported": false,
            "nicType": "Standard",
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_case_insensitive() {
        let p = "/subscriptions/S/resourcegroups/RG/providers/microsoft.compute/VIRTUALMACHINESCALESETS/web/networkInterfaces";
        let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
        let (sub, op) = route(&segs).unwrap();
        assert_eq!(sub, "S");
        assert!(matches!(op, Op::VmssNicList("RG", "web")));
    }

    #[test]
    fn filters_parse() {
        assert_eq!(
            parse_vmss_filter("'virtualMachineScaleSet/id' eq '/subscriptions/s/x'").as_deref(),
            Some("/subscriptions/s/x")
        );
        assert!(parse_vmss_filter("name eq 'x'").is_none());
        assert_eq!(
            parse_vmss_vm_filter("startswith(instanceView/statuses/code, 'PowerState') eq true"),
            Some(None)
        );
        assert_eq!(
            parse_vmss_vm_filter("properties/latestModelApplied eq false"),
            Some(Some(false))
        );
        assert!(parse_vmss_vm_filter("foo").is_none());
    }

    #[test]
    fn computer_names_use_base36_suffix() {
        let ss = ScaleSet {
            sub: "s".into(),
            rg: "r".into(),
            name: "web-set".into(),
            mode: Orchestration::Uniform,
            location: "eastus".into(),
            capacity: 0,
            next_id: 0,
            unique_id: String::new(),
            created: 0,
            tags: BTreeMap::new(),
            instances: BTreeMap::new(),
            health_extension: false,
            standalone: false,
        };
        assert_eq!(computer_name(&ss, 0), "webset000000");
        assert_eq!(computer_name(&ss, 37), "webset000011");
    }
}

//! ARM's wire rules that the fake ARM (`arm.rs`) and the fake Network writes
//! (`network.rs`) share: the api-versions each kind of operation accepts and ARM's error
//! bodies.

use serde_json::json;

use crate::util::Reply;

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

/// An ARM error body: `{"error": {"code", "message"}}`.
pub(crate) fn arm_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

/// An ARM error body naming the `target` of the error.
pub(crate) fn arm_error_target(status: u16, code: &str, message: &str, target: &str) -> Reply {
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

//! The Network resources the Azure targets write: Route Server BGP peerings
//! (`virtualHubs/{hub}/bgpConnections`) and IP-based Load Balancer backend pools. Only the
//! ARM JSON and paths; what to write is the targets' business.

use serde::Deserialize;
use serde_json::{json, Value};

use super::arm::{
    ArmClient, ArmError, ArmWriteError, LroOutcome, WriteResponse, NETWORK_API_VERSION,
};

pub const OP_LIST_BGP_CONNECTIONS: &str = "VirtualHubBgpConnections_List";
pub const OP_PUT_BGP_CONNECTION: &str = "VirtualHubBgpConnection_CreateOrUpdate";
pub const OP_DELETE_BGP_CONNECTION: &str = "VirtualHubBgpConnection_Delete";
pub const OP_GET_BACKEND_POOL: &str = "LoadBalancerBackendAddressPools_Get";
pub const OP_PUT_BACKEND_POOL: &str = "LoadBalancerBackendAddressPools_CreateOrUpdate";

/// One BGP connection (peering) of a Route Server.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BgpConnection {
    pub name: String,
    #[serde(default)]
    pub properties: BgpConnectionProperties,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct BgpConnectionProperties {
    #[serde(default, rename = "peerIp")]
    pub peer_ip: Option<String>,
    #[serde(default, rename = "peerAsn")]
    pub peer_asn: Option<u64>,
    #[serde(default, rename = "provisioningState")]
    pub provisioning_state: Option<String>,
    #[serde(default, rename = "connectionState")]
    pub connection_state: Option<String>,
}

/// True for a provisioning state in which no operation is running.
pub fn is_terminal(state: Option<&str>) -> bool {
    matches!(state, None | Some("Succeeded" | "Failed" | "Canceled"))
}

/// A backend pool as read: its ETag and the whole body (kept to write it back).
#[derive(Debug, Clone)]
pub struct BackendPool {
    pub etag: Option<String>,
    pub body: Value,
}

impl BackendPool {
    /// `properties.provisioningState`.
    pub fn provisioning_state(&self) -> Option<&str> {
        self.body
            .pointer("/properties/provisioningState")
            .and_then(Value::as_str)
    }

    /// `properties.loadBalancerBackendAddresses` (empty when absent).
    pub fn addresses(&self) -> Vec<Value> {
        self.body
            .pointer("/properties/loadBalancerBackendAddresses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// The body of a PUT that sets the addresses and keeps every other writable property.
    pub fn with_addresses(&self, addresses: Vec<Value>) -> Value {
        let mut props = self
            .body
            .get("properties")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        if let Some(p) = props.as_object_mut() {
            for read_only in [
                "provisioningState",
                "backendIPConfigurations",
                "loadBalancingRules",
                "outboundRule",
                "outboundRules",
                "inboundNatRules",
            ] {
                p.remove(read_only);
            }
            p.insert(
                "loadBalancerBackendAddresses".into(),
                Value::Array(addresses),
            );
        }
        json!({ "properties": props })
    }
}

/// Name, IP and virtual network of one pool address.
pub fn address_parts(a: &Value) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        a.get("name").and_then(Value::as_str),
        a.pointer("/properties/ipAddress").and_then(Value::as_str),
        a.pointer("/properties/virtualNetwork/id")
            .and_then(Value::as_str),
    )
}

/// One pool address as ARM takes it.
pub fn address(name: &str, ip: &str, vnet: &str) -> Value {
    json!({"name": name, "properties": {"ipAddress": ip, "virtualNetwork": {"id": vnet}}})
}

fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Path of a Route Server (virtual hub).
pub fn hub_path(sub: &str, rg: &str, hub: &str) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/virtualHubs/{}",
        seg(sub),
        seg(rg),
        seg(hub)
    )
}

/// Path of a backend pool.
pub fn pool_path(sub: &str, rg: &str, lb: &str, pool: &str) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/loadBalancers/{}/backendAddressPools/{}",
        seg(sub),
        seg(rg),
        seg(lb),
        seg(pool)
    )
}

impl ArmClient {
    /// `VirtualHubBgpConnections_List`.
    pub async fn list_bgp_connections(&self, hub: &str) -> Result<Vec<BgpConnection>, ArmError> {
        self.list_all(
            OP_LIST_BGP_CONNECTIONS,
            &format!("{hub}/bgpConnections"),
            NETWORK_API_VERSION,
            &[],
        )
        .await
    }

    /// `VirtualHubBgpConnection_CreateOrUpdate`, followed to its end.
    pub async fn put_bgp_connection(
        &self,
        hub: &str,
        name: &str,
        peer_ip: &str,
        peer_asn: u32,
        timeout: std::time::Duration,
        min_poll: std::time::Duration,
    ) -> Result<LroOutcome, ArmWriteError> {
        let path = format!("{hub}/bgpConnections/{}", seg(name));
        let body = json!({"properties": {"peerIp": peer_ip, "peerAsn": peer_asn}});
        let resp = self
            .put_json(
                OP_PUT_BGP_CONNECTION,
                &path,
                NETWORK_API_VERSION,
                &body,
                None,
            )
            .await?;
        self.follow_operation(
            OP_PUT_BGP_CONNECTION,
            &path,
            NETWORK_API_VERSION,
            &resp,
            timeout,
            min_poll,
        )
        .await
    }

    /// `VirtualHubBgpConnection_Delete`, followed to its end.
    pub async fn delete_bgp_connection(
        &self,
        hub: &str,
        name: &str,
        timeout: std::time::Duration,
        min_poll: std::time::Duration,
    ) -> Result<LroOutcome, ArmWriteError> {
        let path = format!("{hub}/bgpConnections/{}", seg(name));
        let resp = self
            .delete(OP_DELETE_BGP_CONNECTION, &path, NETWORK_API_VERSION)
            .await?;
        self.follow_operation(
            OP_DELETE_BGP_CONNECTION,
            &path,
            NETWORK_API_VERSION,
            &resp,
            timeout,
            min_poll,
        )
        .await
    }

    /// `LoadBalancerBackendAddressPools_Get`.
    pub async fn get_backend_pool(&self, pool: &str) -> Result<BackendPool, ArmError> {
        let body: Value = self
            .get_json(OP_GET_BACKEND_POOL, pool, NETWORK_API_VERSION, &[])
            .await?;
        let etag = body.get("etag").and_then(Value::as_str).map(str::to_owned);
        Ok(BackendPool { etag, body })
    }

    /// `LoadBalancerBackendAddressPools_CreateOrUpdate` with `If-Match` (the answer is
    /// returned so that a 412 can be told apart; follow it with [`ArmClient::follow_operation`]).
    pub async fn put_backend_pool(
        &self,
        pool: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<WriteResponse, ArmWriteError> {
        self.put_json(
            OP_PUT_BACKEND_POOL,
            pool,
            NETWORK_API_VERSION,
            body,
            if_match,
        )
        .await
    }
}

//! Serde models for the few ARM resources the agent reads.
//!
//! Everything is optional and tolerant: missing fields, JSON `null` and
//! unknown fields (ARM adds fields all the time) never fail a parse. Nested
//! objects default to empty when absent or `null`, scalars are `Option`.
//! Values ARM spells inconsistently (provisioning states, orchestration mode)
//! are compared case-insensitively.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `null` → `T::default()` (serde's `default` only covers *missing* fields).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A list whose elements may not all be objects: elements that are not (`null`, numbers,
/// strings, arrays) are dropped instead of failing the whole parent (`null` → empty).
/// Each object is decoded straight into `T` (whose fields are all tolerant), without an
/// intermediate `serde_json::Value`: list pages of thousands of NICs and VMs stay cheap.
fn lenient_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let v = Option::<Vec<ObjectOrSkip<T>>>::deserialize(d)?.unwrap_or_default();
    Ok(v.into_iter().filter_map(|x| x.0).collect())
}

/// An object decoded as `T`, or None for anything that is not an object.
struct ObjectOrSkip<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOrSkip<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = ObjectOrSkip<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| ObjectOrSkip(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ObjectOrSkip(None))
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
                ObjectOrSkip::deserialize(d)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(ObjectOrSkip(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(ObjectOrSkip(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ObjectOrSkip(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ObjectOrSkip(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ObjectOrSkip(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ObjectOrSkip(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ObjectOrSkip(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Tags: string values kept, numbers/bools stringified, `null` dropped.
fn lenient_tags<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    let v = Option::<BTreeMap<String, serde_json::Value>>::deserialize(d)?.unwrap_or_default();
    Ok(v.into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k, s)),
            serde_json::Value::Null => None,
            other => Some((k, other.to_string())),
        })
        .collect())
}

/// A JSON number or numeric string; anything else → `None`.
fn lenient_u64<'de, D>(d: D) -> Result<Option<u64>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

/// A JSON bool or `"true"`/`"false"` string; anything else → `None`.
fn lenient_bool<'de, D>(d: D) -> Result<Option<bool>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Bool(b)) => Some(b),
        Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("true") => Some(true),
        Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    })
}

/// A string, or `None` for anything else (objects, arrays, bools, null); numbers as their
/// text. Straight from the JSON token (no intermediate `serde_json::Value`).
fn lenient_string<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    lenient_with(d, |s| Some(s.to_owned()))
}

// ---------------------------------------------------------------------------
// Enums with case-insensitive parsing
// ---------------------------------------------------------------------------

/// Scale set orchestration mode. Absent/`null` means [`OrchestrationMode::Uniform`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OrchestrationMode {
    #[default]
    Uniform,
    Flexible,
    Other(String),
}

impl OrchestrationMode {
    pub fn parse(s: &str) -> Self {
        if s.eq_ignore_ascii_case("uniform") {
            Self::Uniform
        } else if s.eq_ignore_ascii_case("flexible") {
            Self::Flexible
        } else {
            Self::Other(s.to_string())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Uniform => "Uniform",
            Self::Flexible => "Flexible",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for OrchestrationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OrchestrationMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(lenient_string(d)?
            .filter(|s| !s.trim().is_empty())
            .map(|s| Self::parse(s.trim()))
            .unwrap_or_default())
    }
}

impl Serialize for OrchestrationMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// ARM provisioning state, parsed case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisioningState {
    Succeeded,
    Creating,
    Updating,
    Deleting,
    Failed,
    Canceled,
    Migrating,
    Other(String),
}

impl ProvisioningState {
    pub fn parse(s: &str) -> Self {
        match s.trim().to_ascii_lowercase().as_str() {
            "succeeded" => Self::Succeeded,
            "creating" => Self::Creating,
            "updating" => Self::Updating,
            "deleting" => Self::Deleting,
            "failed" => Self::Failed,
            "canceled" | "cancelled" => Self::Canceled,
            "migrating" => Self::Migrating,
            _ => Self::Other(s.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Succeeded => "Succeeded",
            Self::Creating => "Creating",
            Self::Updating => "Updating",
            Self::Deleting => "Deleting",
            Self::Failed => "Failed",
            Self::Canceled => "Canceled",
            Self::Migrating => "Migrating",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for ProvisioningState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProvisioningState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Option<ProvisioningState> fields handle null before reaching here.
        let s = String::deserialize(d)?;
        Ok(Self::parse(&s))
    }
}

impl Serialize for ProvisioningState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `Option<ProvisioningState>` that turns non-strings into `None`.
fn lenient_provisioning_state<'de, D>(d: D) -> Result<Option<ProvisioningState>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(lenient_string(d)?.map(|s| ProvisioningState::parse(&s)))
}

// ---------------------------------------------------------------------------
// Shared
// ---------------------------------------------------------------------------

/// `{"id": "..."}` reference to another resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubResource {
    #[serde(deserialize_with = "lenient_string")]
    pub id: Option<String>,
}

/// `statuses[]` entry of an instance view: only its `code` is read (`level`,
/// `displayStatus`, `message` and `time` are skipped: a cycle decodes several of them per
/// instance).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct InstanceViewStatus {
    #[serde(deserialize_with = "lenient_string")]
    pub code: Option<String>,
}

// ---------------------------------------------------------------------------
// VirtualMachineScaleSet
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VirtualMachineScaleSet {
    #[serde(deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub location: Option<String>,
    #[serde(deserialize_with = "lenient_tags")]
    pub tags: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_default")]
    pub sku: Sku,
    #[serde(deserialize_with = "lenient_vec")]
    pub zones: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub properties: VirtualMachineScaleSetProperties,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sku {
    #[serde(deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub tier: Option<String>,
    #[serde(deserialize_with = "lenient_u64")]
    pub capacity: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachineScaleSetProperties {
    /// Absent or `null` → `Uniform`.
    pub orchestration_mode: OrchestrationMode,
    #[serde(deserialize_with = "lenient_provisioning_state")]
    pub provisioning_state: Option<ProvisioningState>,
    #[serde(deserialize_with = "lenient_string")]
    pub unique_id: Option<String>,
    /// The model of the set's VMs (only what says whether they report health).
    #[serde(deserialize_with = "null_default")]
    pub virtual_machine_profile: ScaleSetVmProfile,
}

/// `properties.virtualMachineProfile`, reduced to the health sources and the terminate
/// notification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ScaleSetVmProfile {
    #[serde(deserialize_with = "null_default")]
    pub extension_profile: ExtensionProfile,
    #[serde(deserialize_with = "null_default")]
    pub network_profile: ScaleSetNetworkProfile,
    #[serde(deserialize_with = "null_default")]
    pub scheduled_events_profile: ScheduledEventsProfile,
}

/// `virtualMachineProfile.scheduledEventsProfile`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ScheduledEventsProfile {
    #[serde(deserialize_with = "null_default")]
    pub terminate_notification_profile: TerminateNotificationProfile,
}

/// `scheduledEventsProfile.terminateNotificationProfile`: with `enable`, Azure delays
/// the deletion of a leaving instance by `notBeforeTimeout` (ISO 8601, `PT5M` to `PT15M`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TerminateNotificationProfile {
    #[serde(deserialize_with = "lenient_bool")]
    pub enable: Option<bool>,
    #[serde(deserialize_with = "lenient_string")]
    pub not_before_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtensionProfile {
    #[serde(deserialize_with = "lenient_vec")]
    pub extensions: Vec<Extension>,
}

/// One extension of the scale set model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Extension {
    #[serde(deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "null_default")]
    pub properties: ExtensionProperties,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtensionProperties {
    #[serde(deserialize_with = "lenient_string")]
    pub publisher: Option<String>,
    #[serde(rename = "type", deserialize_with = "lenient_string")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ScaleSetNetworkProfile {
    /// The load balancer probe Uniform sets may use as their health source.
    #[serde(deserialize_with = "null_default")]
    pub health_probe: Option<SubResource>,
}

impl VirtualMachineScaleSet {
    pub fn orchestration_mode(&self) -> &OrchestrationMode {
        &self.properties.orchestration_mode
    }

    /// `sku.capacity`, 0 when ARM did not say (see `sku.capacity` for the raw value).
    pub fn capacity(&self) -> u64 {
        self.sku.capacity.unwrap_or(0)
    }

    pub fn is_succeeded(&self) -> bool {
        self.properties.provisioning_state == Some(ProvisioningState::Succeeded)
    }

    /// The delay Azure gives a leaving instance before deleting it: `Some` when the
    /// terminate notification is enabled (its `notBeforeTimeout`, 5 minutes when absent
    /// or unreadable: Azure's default), `None` when there is none.
    pub fn terminate_delay(&self) -> Option<std::time::Duration> {
        let p = &self
            .properties
            .virtual_machine_profile
            .scheduled_events_profile
            .terminate_notification_profile;
        if p.enable != Some(true) {
            return None;
        }
        Some(
            p.not_before_timeout
                .as_deref()
                .and_then(iso8601_duration)
                .unwrap_or(std::time::Duration::from_secs(300)),
        )
    }

    /// True when the model names a health source: the Application Health extension
    /// (`ApplicationHealthLinux` / `ApplicationHealthWindows`) or a load balancer health
    /// probe. Its instances then report `vmHealth`.
    pub fn reports_health(&self) -> bool {
        let profile = &self.properties.virtual_machine_profile;
        let probe = profile
            .network_profile
            .health_probe
            .as_ref()
            .and_then(|p| p.id.as_deref())
            .is_some_and(|id| !id.trim().is_empty());
        probe
            || profile.extension_profile.extensions.iter().any(|e| {
                e.properties
                    .kind
                    .as_deref()
                    .is_some_and(|t| t.to_ascii_lowercase().starts_with("applicationhealth"))
            })
    }
}

/// An ISO 8601 duration of days, hours, minutes and seconds (`PT5M`, `PT1H30M`,
/// `P1DT2S`, `PT7.5S`); None for anything else (years, months, weeks, garbage).
pub fn iso8601_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let rest = s.strip_prefix('P').or_else(|| s.strip_prefix('p'))?;
    let (date, time) = match rest.find(['T', 't']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let mut total = 0f64;
    let mut any = false;
    let mut parse = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut num = String::new();
        let mut next = 0;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' || c == ',' {
                num.push(if c == ',' { '.' } else { c });
                continue;
            }
            let c = c.to_ascii_uppercase();
            let at = units[next..].iter().position(|(u, _)| *u == c)? + next;
            let n: f64 = num.parse().ok()?;
            total += n * units[at].1;
            any = true;
            num.clear();
            next = at + 1;
        }
        num.is_empty().then_some(())
    };
    parse(date, &[('D', 86_400.0)])?;
    if let Some(t) = time {
        if t.is_empty() {
            return None;
        }
        parse(t, &[('H', 3_600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    (any && total.is_finite()).then(|| std::time::Duration::from_secs_f64(total))
}

// ---------------------------------------------------------------------------
// VirtualMachine (Flexible members and standalone VMs)
// ---------------------------------------------------------------------------

/// A VM as `VirtualMachines_List` / `_ListAll` return it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VirtualMachine {
    #[serde(deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub location: Option<String>,
    #[serde(deserialize_with = "lenient_tags")]
    pub tags: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_default")]
    pub properties: VirtualMachineProperties,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachineProperties {
    #[serde(deserialize_with = "lenient_provisioning_state")]
    pub provisioning_state: Option<ProvisioningState>,
    /// The scale set the VM belongs to (Flexible orchestration), if any.
    #[serde(deserialize_with = "null_default")]
    pub virtual_machine_scale_set: Option<SubResource>,
    #[serde(deserialize_with = "null_default")]
    pub network_profile: NetworkProfile,
    /// Present with `$expand=instanceView` (and with `statusOnly=true`).
    #[serde(deserialize_with = "null_default")]
    pub instance_view: Option<VmInstanceView>,
}

impl VirtualMachine {
    /// Lower-cased id.
    pub fn key(&self) -> Option<String> {
        self.id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_ascii_lowercase)
    }

    /// Lower-cased id of the scale set the VM belongs to.
    pub fn scale_set_key(&self) -> Option<String> {
        self.properties
            .virtual_machine_scale_set
            .as_ref()?
            .id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_ascii_lowercase)
    }

    /// Lower-cased id of the primary NIC (the only NIC when none is flagged).
    pub fn primary_nic(&self) -> Option<String> {
        let nics = &self.properties.network_profile.network_interfaces;
        let only = match nics.as_slice() {
            [only] => Some(only),
            _ => None,
        };
        nics.iter()
            .find(|n| n.properties.primary == Some(true))
            .or(only)
            .and_then(|n| n.id.as_deref())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_ascii_lowercase)
    }
}

/// The resource group named in an ARM id (`/subscriptions/s/resourceGroups/RG/...`).
pub fn resource_group_of(id: &str) -> Option<&str> {
    let mut segs = id.split('/').filter(|s| !s.is_empty());
    while let Some(s) = segs.next() {
        if s.eq_ignore_ascii_case("resourcegroups") {
            return segs.next();
        }
    }
    None
}

/// The subscription named in an ARM id.
pub fn subscription_of(id: &str) -> Option<&str> {
    let mut segs = id.split('/').filter(|s| !s.is_empty());
    while let Some(s) = segs.next() {
        if s.eq_ignore_ascii_case("subscriptions") {
            return segs.next();
        }
    }
    None
}

// ---------------------------------------------------------------------------
// NetworkInterface
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkInterface {
    #[serde(deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub location: Option<String>,
    #[serde(deserialize_with = "lenient_tags")]
    pub tags: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_default")]
    pub properties: NetworkInterfaceProperties,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NetworkInterfaceProperties {
    #[serde(deserialize_with = "lenient_bool")]
    pub primary: Option<bool>,
    #[serde(deserialize_with = "lenient_provisioning_state")]
    pub provisioning_state: Option<ProvisioningState>,
    #[serde(deserialize_with = "null_default")]
    pub virtual_machine: Option<SubResource>,
    #[serde(deserialize_with = "lenient_vec")]
    pub ip_configurations: Vec<IpConfiguration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpConfiguration {
    #[serde(deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(deserialize_with = "null_default")]
    pub properties: IpConfigurationProperties,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpConfigurationProperties {
    #[serde(rename = "privateIPAddress", deserialize_with = "lenient_string")]
    pub private_ip_address: Option<String>,
    #[serde(
        rename = "privateIPAddressVersion",
        deserialize_with = "lenient_string"
    )]
    pub private_ip_address_version: Option<String>,
    #[serde(rename = "primary", deserialize_with = "lenient_bool")]
    pub primary: Option<bool>,
    #[serde(rename = "subnet", deserialize_with = "null_default")]
    pub subnet: Option<SubResource>,
    #[serde(
        rename = "provisioningState",
        deserialize_with = "lenient_provisioning_state"
    )]
    pub provisioning_state: Option<ProvisioningState>,
}

/// The primary ipConfiguration's private IPv4 address (a `/prefix` suffix is
/// tolerated). A NIC whose only ipConfiguration is not flagged counts that
/// one as primary. IPv6 (by version field or by address) → `None`.
pub fn primary_ipv4(nic: &NetworkInterface) -> Option<Ipv4Addr> {
    pick_ipv4(nic.properties.ip_configurations.iter().map(|c| {
        (
            c.properties.primary,
            c.properties.private_ip_address.as_deref(),
            c.properties.private_ip_address_version.as_deref(),
        )
    }))
}

/// The rule of [`primary_ipv4`] over (primary, privateIPAddress, privateIPAddressVersion)
/// of each ipConfiguration.
fn pick_ipv4<'a>(
    configs: impl Iterator<Item = (Option<bool>, Option<&'a str>, Option<&'a str>)> + Clone,
) -> Option<Ipv4Addr> {
    let mut all = configs.clone();
    let first = all.next();
    let only = match (first, all.next()) {
        (Some(c), None) if c.0.is_none() => Some(c),
        _ => None,
    };
    let (_, addr, version) = configs.clone().find(|c| c.0 == Some(true)).or(only)?;
    if version.is_some_and(|v| !v.eq_ignore_ascii_case("ipv4")) {
        return None;
    }
    parse_ipv4_lenient(addr?)
}

/// A NIC as discovery reads it from list pages of thousands: only what picks its VM's
/// address (the other fields are skipped while decoding, never stored; what is only
/// compared is decoded without allocating).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct NicSummary {
    /// A hash of the NIC's lower-cased name, the last segment of its id ([`lower_hash`]):
    /// a stable order among one VM's NICs, without keeping the id.
    #[serde(rename = "id", deserialize_with = "id_hash")]
    pub id_hash: u64,
    #[serde(deserialize_with = "null_default")]
    pub properties: NicSummaryProperties,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NicSummaryProperties {
    #[serde(deserialize_with = "lenient_bool")]
    pub primary: Option<bool>,
    #[serde(deserialize_with = "null_default")]
    pub virtual_machine: Option<VmRef>,
    #[serde(deserialize_with = "lenient_vec")]
    pub ip_configurations: Vec<IpConfigurationSummary>,
}

/// `{"id": "..."}` of the VM a NIC is attached to, trimmed and lower-cased.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct VmRef {
    #[serde(deserialize_with = "lower_id")]
    pub id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct IpConfigurationSummary {
    #[serde(deserialize_with = "null_default")]
    pub properties: IpConfigurationSummaryProperties,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct IpConfigurationSummaryProperties {
    /// Parsed as [`parse_ipv4_lenient`] (None when absent or not an IPv4 address).
    #[serde(rename = "privateIPAddress", deserialize_with = "lenient_ipv4")]
    pub private_ip_address: Option<Ipv4Addr>,
    #[serde(rename = "privateIPAddressVersion", deserialize_with = "lenient_code")]
    pub private_ip_address_version: Option<Code>,
    #[serde(rename = "primary", deserialize_with = "lenient_bool")]
    pub primary: Option<bool>,
}

impl NicSummary {
    /// The primary ipConfiguration's private IPv4 address (as [`primary_ipv4`]).
    pub fn primary_ipv4(&self) -> Option<Ipv4Addr> {
        let configs = &self.properties.ip_configurations;
        let only = match configs.as_slice() {
            [c] if c.properties.primary.is_none() => Some(c),
            _ => None,
        };
        let c = configs
            .iter()
            .find(|c| c.properties.primary == Some(true))
            .or(only)?;
        if c.properties
            .private_ip_address_version
            .is_some_and(|v| !v.as_str().eq_ignore_ascii_case("ipv4"))
        {
            return None;
        }
        c.properties.private_ip_address
    }

    /// The lower-cased id of the VM it is attached to.
    pub fn vm_id(self) -> Option<String> {
        self.properties.virtual_machine?.id
    }

    /// NIC-level `properties.primary` (absent → false).
    pub fn is_primary(&self) -> bool {
        self.properties.primary == Some(true)
    }
}

/// Alias of [`scale_set_instance_id_of_nic`]: the lower-cased VM id of a NIC.
pub fn vm_id_of_nic(nic: &NetworkInterface) -> Option<String> {
    scale_set_instance_id_of_nic(nic)
}

impl NetworkInterface {
    /// NIC-level `properties.primary` (absent → false).
    pub fn is_primary(&self) -> bool {
        self.properties.primary == Some(true)
    }
}

/// `"10.0.0.4"` or `"10.0.0.4/28"` → 10.0.0.4.
pub fn parse_ipv4_lenient(s: &str) -> Option<Ipv4Addr> {
    let s = s.trim();
    let addr = s.split_once('/').map_or(s, |(a, _)| a);
    addr.trim().parse().ok()
}

/// The lower-cased VM id this NIC is attached to (`properties.virtualMachine.id`).
pub fn scale_set_instance_id_of_nic(nic: &NetworkInterface) -> Option<String> {
    nic.properties
        .virtual_machine
        .as_ref()?
        .id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase)
}

// ---------------------------------------------------------------------------
// VirtualMachineScaleSetVm
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachineScaleSetVm {
    #[serde(deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub instance_id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub location: Option<String>,
    #[serde(deserialize_with = "lenient_tags")]
    pub tags: BTreeMap<String, String>,
    #[serde(deserialize_with = "lenient_vec")]
    pub zones: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub properties: VirtualMachineScaleSetVmProperties,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachineScaleSetVmProperties {
    #[serde(deserialize_with = "lenient_provisioning_state")]
    pub provisioning_state: Option<ProvisioningState>,
    #[serde(deserialize_with = "lenient_bool")]
    pub latest_model_applied: Option<bool>,
    #[serde(deserialize_with = "lenient_string")]
    pub vm_id: Option<String>,
    /// Flexible members listed through the VMSS VM list point at the real VM.
    #[serde(deserialize_with = "lenient_string")]
    pub virtual_machine_resource_id: Option<String>,
    #[serde(deserialize_with = "null_default")]
    pub network_profile: NetworkProfile,
    /// Present only with `$expand=instanceView`.
    #[serde(deserialize_with = "null_default")]
    pub instance_view: Option<VmInstanceView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NetworkProfile {
    #[serde(deserialize_with = "lenient_vec")]
    pub network_interfaces: Vec<NetworkInterfaceReference>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkInterfaceReference {
    #[serde(deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(deserialize_with = "null_default")]
    pub properties: NetworkInterfaceReferenceProperties,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NetworkInterfaceReferenceProperties {
    #[serde(deserialize_with = "lenient_bool")]
    pub primary: Option<bool>,
}

/// Instance view of a VM (scale set VMs and, minus `vmHealth`, plain VMs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VmInstanceView {
    #[serde(deserialize_with = "lenient_vec")]
    pub statuses: Vec<InstanceViewStatus>,
    #[serde(deserialize_with = "null_default")]
    pub vm_health: Option<VmHealth>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VmHealth {
    #[serde(deserialize_with = "null_default")]
    pub status: Option<InstanceViewStatus>,
}

/// The lower-cased suffix of the first status code starting with `prefix`
/// (`"PowerState/"` → `"running"`).
fn status_suffix(statuses: &[InstanceViewStatus], prefix: &str) -> Option<String> {
    statuses.iter().find_map(|s| {
        let code = s.code.as_deref()?;
        let head = code.get(..prefix.len())?;
        if head.eq_ignore_ascii_case(prefix) {
            Some(code[prefix.len()..].to_ascii_lowercase())
        } else {
            None
        }
    })
}

impl VmInstanceView {
    /// `"running"`, `"stopped"`, `"deallocated"`, … (lower-cased).
    pub fn power_state(&self) -> Option<String> {
        status_suffix(&self.statuses, "PowerState/")
    }

    /// `"healthy"`, `"unhealthy"`, `"unknown"`, … (lower-cased), from `vmHealth`.
    pub fn health_state(&self) -> Option<String> {
        let code = self.vm_health.as_ref()?.status.as_ref()?.code.as_deref()?;
        let (_, state) = code.split_once('/').unwrap_or(("", code));
        Some(state.to_ascii_lowercase())
    }
}

impl VirtualMachineScaleSetVm {
    pub fn power_state(&self) -> Option<String> {
        self.properties.instance_view.as_ref()?.power_state()
    }

    pub fn health_state(&self) -> Option<String> {
        self.properties.instance_view.as_ref()?.health_state()
    }

    pub fn is_succeeded(&self) -> bool {
        self.properties.provisioning_state == Some(ProvisioningState::Succeeded)
    }
}

// ---------------------------------------------------------------------------
// Lean rows for discovery's big lists
// ---------------------------------------------------------------------------
//
// A cycle at 100,000 instances decodes about 500 MB of list pages. The rows below keep
// only what discovery uses, and decode what is only compared (status codes, provisioning
// states, regions, IP versions, addresses, a NIC's id) without allocating: straight from
// the borrowed JSON text into inline values.

/// Bytes a [`Code`] keeps.
const CODE_CAP: usize = 31;

/// A short string kept inline (a status code, a provisioning state, a region): decoding
/// one allocates nothing. A longer value keeps its first 31 bytes (cut at a character
/// boundary): no value vmss-sync acts on is that long, so it still reads as unknown.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Code {
    len: u8,
    buf: [u8; CODE_CAP],
}

impl Code {
    /// `s`, cut to 31 bytes.
    pub fn new(s: &str) -> Code {
        let mut end = s.len().min(CODE_CAP);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = [0u8; CODE_CAP];
        buf[..end].copy_from_slice(&s.as_bytes()[..end]);
        Code {
            len: end as u8,
            buf,
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }

    /// The part after `prefix` when the code starts with it (ASCII case-insensitive).
    pub fn suffix(&self, prefix: &str) -> Option<&str> {
        let s = self.as_str();
        let head = s.get(..prefix.len())?;
        head.eq_ignore_ascii_case(prefix)
            .then(|| &s[prefix.len()..])
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Decodes a string token with `f`, borrowing the text (no allocation); numbers are
/// given as their text, anything else (null, bools, objects, arrays) is None, as
/// [`lenient_string`].
fn lenient_with<'de, D, T>(d: D, f: fn(&str) -> Option<T>) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
{
    use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
    struct V<T>(fn(&str) -> Option<T>);
    impl<'de, T> Visitor<'de> for V<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok((self.0)(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok((self.0)(&v.to_string()))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok((self.0)(&v.to_string()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok((self.0)(
                &serde_json::Number::from_f64(v).map_or_else(|| v.to_string(), |n| n.to_string()),
            ))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    d.deserialize_option(V(f))
}

fn lenient_code<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Code>, D::Error> {
    lenient_with(d, |s| Some(Code::new(s)))
}

/// A private address as [`parse_ipv4_lenient`] reads it; absent or not IPv4 → None.
fn lenient_ipv4<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    lenient_with(d, parse_ipv4_lenient)
}

/// An id, trimmed and lower-cased (the join keys); empty → None.
fn lower_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    lenient_with(d, lower_id_of)
}

fn lower_id_of(s: &str) -> Option<String> {
    Some(s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase)
}

/// A stable 64-bit hash (FNV-1a) of the lower-cased last segment of an id (a NIC's name:
/// the NICs of one VM are told apart by it), without keeping the id.
fn id_hash<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(lenient_with(d, last_segment_hash)?.unwrap_or_else(|| lower_hash("")))
}

fn last_segment_hash(s: &str) -> Option<u64> {
    let s = s.trim().trim_end_matches('/');
    Some(lower_hash(s.rsplit_once('/').map_or(s, |(_, name)| name)))
}

/// FNV-1a over the ASCII-lower-cased bytes of `s`.
pub fn lower_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An instance view reduced to its three states (the code's part after its prefix:
/// `succeeded`, `running`, `healthy`, as ARM spells them), decoded without allocating.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewSummary {
    /// The first `ProvisioningState/…` status.
    pub provisioning: Option<Code>,
    /// The first `PowerState/…` status.
    pub power: Option<Code>,
    /// `vmHealth.status.code` after its first `/` (the whole code without one).
    pub health: Option<Code>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawView {
    #[serde(deserialize_with = "fold_statuses")]
    statuses: (Option<Code>, Option<Code>),
    #[serde(deserialize_with = "null_default")]
    vm_health: Option<RawHealth>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawHealth {
    #[serde(deserialize_with = "null_default")]
    status: Option<RawStatus>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawStatus {
    #[serde(deserialize_with = "lenient_code")]
    code: Option<Code>,
}

impl<'de> Deserialize<'de> for ViewSummary {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawView::deserialize(d)?;
        let health = raw
            .vm_health
            .and_then(|h| h.status)
            .and_then(|s| s.code)
            .map(|c| {
                let s = c.as_str();
                Code::new(s.split_once('/').map_or(s, |(_, state)| state))
            });
        Ok(ViewSummary {
            provisioning: raw.statuses.0,
            power: raw.statuses.1,
            health,
        })
    }
}

/// `statuses`, folded as they are decoded into the first provisioning and power states
/// (elements that are not objects are skipped; `null` is empty; anything else fails, as
/// [`lenient_vec`]).
fn fold_statuses<'de, D>(d: D) -> Result<(Option<Code>, Option<Code>), D::Error>
where
    D: Deserializer<'de>,
{
    use serde::de::{SeqAccess, Visitor};
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = (Option<Code>, Option<Code>);
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of statuses")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok((None, None))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok((None, None))
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_seq(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let (mut prov, mut power) = (None, None);
            while let Some(s) = seq.next_element::<ObjectOrSkip<RawStatus>>()? {
                let Some(code) = s.0.and_then(|s| s.code) else {
                    continue;
                };
                if let Some(p) = code.suffix("ProvisioningState/") {
                    prov = prov.or(Some(Code::new(p)));
                } else if let Some(p) = code.suffix("PowerState/") {
                    power = power.or(Some(Code::new(p)));
                }
            }
            Ok((prov, power))
        }
    }
    d.deserialize_option(V)
}

/// A scale set VM as discovery reads it from `VirtualMachineScaleSetVMs_List` with
/// `$expand=instanceView`: its id, provisioning state and instance view only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ScaleSetVmView {
    /// Trimmed and lower-cased.
    #[serde(deserialize_with = "lower_id")]
    pub id: Option<String>,
    #[serde(deserialize_with = "null_default")]
    pub properties: ScaleSetVmViewProperties,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ScaleSetVmViewProperties {
    #[serde(deserialize_with = "lenient_code")]
    pub provisioning_state: Option<Code>,
    #[serde(deserialize_with = "null_default")]
    pub instance_view: Option<ViewSummary>,
}

/// A VM as discovery reads it from `VirtualMachines_List` / `_ListAll` (Flexible members
/// and standalone VMs): what selects it, joins it to its NIC and says its state.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VmRow {
    /// Trimmed and lower-cased.
    #[serde(deserialize_with = "lower_id")]
    pub id: Option<String>,
    #[serde(deserialize_with = "lenient_code")]
    pub location: Option<Code>,
    #[serde(deserialize_with = "lenient_tags")]
    pub tags: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_default")]
    pub properties: VmRowProperties,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VmRowProperties {
    #[serde(deserialize_with = "lenient_code")]
    pub provisioning_state: Option<Code>,
    /// The scale set the VM belongs to (Flexible orchestration), if any.
    #[serde(deserialize_with = "null_default")]
    pub virtual_machine_scale_set: Option<SubResource>,
    #[serde(deserialize_with = "null_default")]
    pub network_profile: NetworkProfile,
    /// Present with `$expand=instanceView` (and with `statusOnly=true`).
    #[serde(deserialize_with = "null_default")]
    pub instance_view: Option<ViewSummary>,
}

impl VmRow {
    /// Lower-cased id of the scale set the VM belongs to.
    pub fn scale_set_key(&self) -> Option<String> {
        self.properties
            .virtual_machine_scale_set
            .as_ref()?
            .id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_ascii_lowercase)
    }

    /// The id of the primary NIC (the only NIC when none is flagged), as ARM wrote it.
    pub fn primary_nic(&self) -> Option<&str> {
        self.properties.network_profile.primary()
    }
}

impl NetworkProfile {
    /// The id of the primary NIC (the only NIC when none is flagged), trimmed.
    pub fn primary(&self) -> Option<&str> {
        let nics = &self.network_interfaces;
        let only = match nics.as_slice() {
            [only] => Some(only),
            _ => None,
        };
        nics.iter()
            .find(|n| n.properties.primary == Some(true))
            .or(only)
            .and_then(|n| n.id.as_deref())
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
}

/// A list page: `{"value": [...], "nextLink": "..."}`. `value` is required
/// (a body without it is not a page).
#[derive(Debug, Clone, Deserialize)]
pub struct Page<T> {
    pub value: Vec<T>,
    #[serde(rename = "nextLink", default, deserialize_with = "lenient_string")]
    pub next_link: Option<String>,
}

/// Decodes a list page element by element, handing each element to `f` as soon as it is
/// decoded and keeping only what `f` returns: a page of a thousand full models is never
/// held at once. Returns the page's `nextLink`. Same rules as [`Page`]: `value` is
/// required and each element must decode as `T`.
pub fn decode_page_with<T, U, F>(
    body: &[u8],
    f: &mut F,
    out: &mut Vec<U>,
) -> Result<Option<String>, serde_json::Error>
where
    T: serde::de::DeserializeOwned + 'static,
    F: FnMut(T) -> Option<U>,
{
    // A body checked as UTF-8 once, as a whole, is decoded from `str`: serde_json then does
    // not check each string it reads again (a tenth of a cycle's CPU at 10,000 instances).
    // A body that is not UTF-8 is decoded from its bytes, for serde_json's own error.
    let kept = out.len();
    let Ok(text) = std::str::from_utf8(body) else {
        let slow = decode_page_from(serde_json::Deserializer::from_slice(body), f, out);
        if slow.is_err() {
            out.truncate(kept);
        }
        return slow;
    };
    // The lean rows first, read by purpose-made readers (`rows`), then any other type
    // through the fast reader (`json`: values the models do not read are skipped by a byte
    // scanner). It refuses whatever serde_json refuses; when it refuses a page, serde_json
    // decodes it again and its answer stands (its error, with line and column). `f` may
    // then have seen some of the page's elements twice; what it gave for them the first
    // time is dropped. A refused page keeps nothing.
    let fast = if rows::has_reader::<T>() {
        rows::page(text, f, out).map_err(|_| ())
    } else {
        super::json::decode(
            text,
            PageSeed {
                f: &mut *f,
                out: &mut *out,
                _t: std::marker::PhantomData::<fn() -> T>,
            },
        )
        .map_err(|_| ())
    };
    match fast {
        Ok(next) => Ok(next),
        Err(_) => {
            out.truncate(kept);
            let slow = decode_page_from(serde_json::Deserializer::from_str(text), f, out);
            if slow.is_err() {
                out.truncate(kept);
            }
            slow
        }
    }
}

fn decode_page_from<'de, R, T, U, F>(
    mut de: serde_json::Deserializer<R>,
    f: &mut F,
    out: &mut Vec<U>,
) -> Result<Option<String>, serde_json::Error>
where
    R: serde_json::de::Read<'de>,
    T: serde::de::DeserializeOwned,
    F: FnMut(T) -> Option<U>,
{
    use serde::de::DeserializeSeed;
    let next = PageSeed {
        f,
        out,
        _t: std::marker::PhantomData::<fn() -> T>,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(next)
}

struct PageSeed<'a, T, U, F> {
    f: &'a mut F,
    out: &'a mut Vec<U>,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<'de, T, U, F> serde::de::DeserializeSeed<'de> for PageSeed<'_, T, U, F>
where
    T: serde::de::DeserializeOwned,
    F: FnMut(T) -> Option<U>,
{
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T, U, F> serde::de::Visitor<'de> for PageSeed<'_, T, U, F>
where
    T: serde::de::DeserializeOwned,
    F: FnMut(T) -> Option<U>,
{
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list page")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut next = None;
        let mut value = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "value" if !value => {
                    value = true;
                    map.next_value_seed(Elements {
                        f: &mut *self.f,
                        out: &mut *self.out,
                        _t: std::marker::PhantomData::<fn() -> T>,
                    })?;
                }
                "nextLink" => {
                    next = match map.next_value::<Option<serde_json::Value>>()? {
                        Some(serde_json::Value::String(s)) => Some(s),
                        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                        _ => None,
                    };
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        if !value {
            return Err(serde::de::Error::missing_field("value"));
        }
        Ok(next)
    }
}

struct Elements<'a, T, U, F> {
    f: &'a mut F,
    out: &'a mut Vec<U>,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<'de, T, U, F> serde::de::DeserializeSeed<'de> for Elements<'_, T, U, F>
where
    T: serde::de::DeserializeOwned,
    F: FnMut(T) -> Option<U>,
{
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T, U, F> serde::de::Visitor<'de> for Elements<'_, T, U, F>
where
    T: serde::de::DeserializeOwned,
    F: FnMut(T) -> Option<U>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of resources")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<T>()? {
            if let Some(u) = (self.f)(item) {
                self.out.push(u);
            }
        }
        Ok(())
    }
}

/// Purpose-made readers of the lean rows (`ScaleSetVmView`, `VmRow`, `NicSummary` and the
/// `ViewSummary` in them) over the fast reader's pull methods: no serde visitor per field.
/// Each reads only the plain shape ARM sends (objects where the model has structs, strings
/// without escapes, `true`/`false`, `null`) with the same rules as the serde models (null
/// is the default, unknown fields skipped, a field twice refused, a list's non-objects
/// dropped); on anything else ([`Odd`](super::json::Odd)) the element is read again through serde from
/// where it started (`row`), and when that fails too, the whole page through serde_json
/// (`decode_page_with`). The tests hold every reader to the serde models.
mod rows {
    use super::super::json::{Fast, Odd};
    use super::*;
    use std::any::{Any, TypeId};

    type R<T> = std::result::Result<T, Odd>;

    pub(super) fn has_reader<T: 'static>() -> bool {
        let t = TypeId::of::<T>();
        t == TypeId::of::<ScaleSetVmView>()
            || t == TypeId::of::<VmRow>()
            || t == TypeId::of::<NicSummary>()
    }

    /// A list page of rows (the rules of [`Page`]).
    pub(super) fn page<T, U, F>(text: &str, f: &mut F, out: &mut Vec<U>) -> R<Option<String>>
    where
        T: serde::de::DeserializeOwned + 'static,
        F: FnMut(T) -> Option<U>,
    {
        let mut de = Fast::new(text);
        let mut next = None;
        let mut value = false;
        de.object(|de, key| match key {
            "value" if !value => {
                value = true;
                de.array(|de| {
                    if let Some(u) = f(row::<T>(de)?) {
                        out.push(u);
                    }
                    Ok(())
                })
            }
            "nextLink" => {
                next = de.str_or_null()?.map(str::to_owned);
                Ok(())
            }
            _ => de.skip_any(),
        })?;
        if !value || !de.at_end() {
            return Err(Odd);
        }
        Ok(next)
    }

    /// One element: its reader, else serde from where it started.
    fn row<T: serde::de::DeserializeOwned + 'static>(de: &mut Fast) -> R<T> {
        let mark = de.mark();
        let mut slot: Option<T> = None;
        let any: &mut dyn Any = &mut slot;
        let read = if let Some(s) = any.downcast_mut::<Option<ScaleSetVmView>>() {
            scale_set_vm_view(de).map(|v| *s = Some(v))
        } else if let Some(s) = any.downcast_mut::<Option<VmRow>>() {
            vm_row(de).map(|v| *s = Some(v))
        } else if let Some(s) = any.downcast_mut::<Option<NicSummary>>() {
            nic_summary(de).map(|v| *s = Some(v))
        } else {
            Err(Odd)
        };
        match (read, slot) {
            (Ok(()), Some(t)) => Ok(t),
            _ => {
                de.rewind(mark);
                T::deserialize(&mut *de).map_err(|_| Odd)
            }
        }
    }

    /// A field read once (serde's models refuse a field twice).
    fn once(seen: &mut u32, bit: u32) -> R<()> {
        if *seen & bit != 0 {
            return Err(Odd);
        }
        *seen |= bit;
        Ok(())
    }

    /// `null` → the default, else an object read by `read` (`null_default`).
    fn or_default<T: Default>(de: &mut Fast, read: impl FnOnce(&mut Fast) -> R<T>) -> R<T> {
        if de.null() {
            Ok(T::default())
        } else {
            read(de)
        }
    }

    /// `null` → None, else `Some` of an object read by `read` (`Option` with `null_default`).
    fn or_none<T>(de: &mut Fast, read: impl FnOnce(&mut Fast) -> R<T>) -> R<Option<T>> {
        if de.null() {
            Ok(None)
        } else {
            read(de).map(Some)
        }
    }

    /// `null` → empty, else an array whose objects are read by `read` and whose other
    /// elements are dropped (`lenient_vec`).
    fn objects<T>(de: &mut Fast, mut read: impl FnMut(&mut Fast) -> R<T>) -> R<Vec<T>> {
        let mut v = Vec::new();
        if de.null() {
            return Ok(v);
        }
        de.array(|de| {
            if de.peek() == Some(b'{') {
                v.push(read(de)?);
                Ok(())
            } else {
                de.skip_any()
            }
        })?;
        Ok(v)
    }

    fn code(de: &mut Fast) -> R<Option<Code>> {
        Ok(de.str_or_null()?.map(Code::new))
    }

    fn scale_set_vm_view(de: &mut Fast) -> R<ScaleSetVmView> {
        let mut v = ScaleSetVmView::default();
        let mut seen = 0;
        de.object(|de, key| match key {
            "id" => {
                once(&mut seen, 1)?;
                v.id = de.str_or_null()?.and_then(lower_id_of);
                Ok(())
            }
            "properties" => {
                once(&mut seen, 2)?;
                v.properties = or_default(de, |de| {
                    let mut p = ScaleSetVmViewProperties::default();
                    let mut seen = 0;
                    de.object(|de, key| match key {
                        "provisioningState" => {
                            once(&mut seen, 1)?;
                            p.provisioning_state = code(de)?;
                            Ok(())
                        }
                        "instanceView" => {
                            once(&mut seen, 2)?;
                            p.instance_view = or_none(de, view_summary)?;
                            Ok(())
                        }
                        _ => de.skip_any(),
                    })?;
                    Ok(p)
                })?;
                Ok(())
            }
            _ => de.skip_any(),
        })?;
        Ok(v)
    }

    /// `{"code": …}` (`RawStatus`).
    fn status_code(de: &mut Fast) -> R<Option<Code>> {
        let mut c = None;
        let mut seen = 0;
        de.object(|de, key| match key {
            "code" => {
                once(&mut seen, 1)?;
                c = code(de)?;
                Ok(())
            }
            _ => de.skip_any(),
        })?;
        Ok(c)
    }

    fn view_summary(de: &mut Fast) -> R<ViewSummary> {
        let mut v = ViewSummary::default();
        let mut seen = 0;
        de.object(|de, key| match key {
            "statuses" => {
                once(&mut seen, 1)?;
                if de.null() {
                    return Ok(());
                }
                let (mut prov, mut power) = (None, None);
                de.array(|de| {
                    if de.peek() != Some(b'{') {
                        return de.skip_any();
                    }
                    let Some(code) = status_code(de)? else {
                        return Ok(());
                    };
                    if let Some(p) = code.suffix("ProvisioningState/") {
                        prov = prov.or(Some(Code::new(p)));
                    } else if let Some(p) = code.suffix("PowerState/") {
                        power = power.or(Some(Code::new(p)));
                    }
                    Ok(())
                })?;
                v.provisioning = prov;
                v.power = power;
                Ok(())
            }
            "vmHealth" => {
                once(&mut seen, 2)?;
                let health = or_none(de, |de| {
                    let mut status = None;
                    let mut seen = 0;
                    de.object(|de, key| match key {
                        "status" => {
                            once(&mut seen, 1)?;
                            status = or_none(de, status_code)?.flatten();
                            Ok(())
                        }
                        _ => de.skip_any(),
                    })?;
                    Ok(status)
                })?;
                v.health = health.flatten().map(|c| {
                    let s = c.as_str();
                    Code::new(s.split_once('/').map_or(s, |(_, state)| state))
                });
                Ok(())
            }
            _ => de.skip_any(),
        })?;
        Ok(v)
    }

    fn vm_row(de: &mut Fast) -> R<VmRow> {
        let mut v = VmRow::default();
        let mut seen = 0;
        de.object(|de, key| match key {
            "id" => {
                once(&mut seen, 1)?;
                v.id = de.str_or_null()?.and_then(lower_id_of);
                Ok(())
            }
            "location" => {
                once(&mut seen, 2)?;
                v.location = code(de)?;
                Ok(())
            }
            "tags" => {
                once(&mut seen, 4)?;
                if de.null() {
                    return Ok(());
                }
                let tags = &mut v.tags;
                de.object(|de, key| {
                    // The last of a repeated key counts; `null` drops it (`lenient_tags`).
                    match de.str_or_null()? {
                        Some(s) => tags.insert(key.to_owned(), s.to_owned()),
                        None => tags.remove(key),
                    };
                    Ok(())
                })
            }
            "properties" => {
                once(&mut seen, 8)?;
                v.properties = or_default(de, vm_row_properties)?;
                Ok(())
            }
            _ => de.skip_any(),
        })?;
        Ok(v)
    }

    fn vm_row_properties(de: &mut Fast) -> R<VmRowProperties> {
        let mut p = VmRowProperties::default();
        let mut seen = 0;
        de.object(|de, key| match key {
            "provisioningState" => {
                once(&mut seen, 1)?;
                p.provisioning_state = code(de)?;
                Ok(())
            }
            "virtualMachineScaleSet" => {
                once(&mut seen, 2)?;
                p.virtual_machine_scale_set = or_none(de, |de| {
                    let mut id = None;
                    let mut seen = 0;
                    de.object(|de, key| match key {
                        "id" => {
                            once(&mut seen, 1)?;
                            id = de.str_or_null()?.map(str::to_owned);
                            Ok(())
                        }
                        _ => de.skip_any(),
                    })?;
                    Ok(SubResource { id })
                })?;
                Ok(())
            }
            "networkProfile" => {
                once(&mut seen, 4)?;
                p.network_profile = or_default(de, |de| {
                    let mut n = NetworkProfile::default();
                    let mut seen = 0;
                    de.object(|de, key| match key {
                        "networkInterfaces" => {
                            once(&mut seen, 1)?;
                            n.network_interfaces = objects(de, nic_reference)?;
                            Ok(())
                        }
                        _ => de.skip_any(),
                    })?;
                    Ok(n)
                })?;
                Ok(())
            }
            "instanceView" => {
                once(&mut seen, 8)?;
                p.instance_view = or_none(de, view_summary)?;
                Ok(())
            }
            _ => de.skip_any(),
        })?;
        Ok(p)
    }

    fn nic_reference(de: &mut Fast) -> R<NetworkInterfaceReference> {
        let mut r = NetworkInterfaceReference::default();
        let mut seen = 0;
        de.object(|de, key| match key {
            "id" => {
                once(&mut seen, 1)?;
                r.id = de.str_or_null()?.map(str::to_owned);
                Ok(())
            }
            "properties" => {
                once(&mut seen, 2)?;
                r.properties = or_default(de, |de| {
                    let mut p = NetworkInterfaceReferenceProperties::default();
                    let mut seen = 0;
                    de.object(|de, key| match key {
                        "primary" => {
                            once(&mut seen, 1)?;
                            p.primary = de.bool_or_null()?;
                            Ok(())
                        }
                        _ => de.skip_any(),
                    })?;
                    Ok(p)
                })?;
                Ok(())
            }
            _ => de.skip_any(),
        })?;
        Ok(r)
    }

    fn nic_summary(de: &mut Fast) -> R<NicSummary> {
        let mut n = NicSummary::default();
        let mut seen = 0;
        de.object(|de, key| match key {
            "id" => {
                once(&mut seen, 1)?;
                n.id_hash = match de.str_or_null()? {
                    Some(s) => last_segment_hash(s).unwrap_or_else(|| lower_hash("")),
                    None => lower_hash(""),
                };
                Ok(())
            }
            "properties" => {
                once(&mut seen, 2)?;
                n.properties = or_default(de, nic_summary_properties)?;
                Ok(())
            }
            _ => de.skip_any(),
        })?;
        Ok(n)
    }

    fn nic_summary_properties(de: &mut Fast) -> R<NicSummaryProperties> {
        let mut p = NicSummaryProperties::default();
        let mut seen = 0;
        de.object(|de, key| match key {
            "primary" => {
                once(&mut seen, 1)?;
                p.primary = de.bool_or_null()?;
                Ok(())
            }
            "virtualMachine" => {
                once(&mut seen, 2)?;
                p.virtual_machine = or_none(de, |de| {
                    let mut id = None;
                    let mut seen = 0;
                    de.object(|de, key| match key {
                        "id" => {
                            once(&mut seen, 1)?;
                            id = de.str_or_null()?.and_then(lower_id_of);
                            Ok(())
                        }
                        _ => de.skip_any(),
                    })?;
                    Ok(VmRef { id })
                })?;
                Ok(())
            }
            "ipConfigurations" => {
                once(&mut seen, 4)?;
                p.ip_configurations = objects(de, |de| {
                    let mut c = IpConfigurationSummary::default();
                    let mut seen = 0;
                    de.object(|de, key| match key {
                        "properties" => {
                            once(&mut seen, 1)?;
                            c.properties = or_default(de, ip_configuration_properties)?;
                            Ok(())
                        }
                        _ => de.skip_any(),
                    })?;
                    Ok(c)
                })?;
                Ok(())
            }
            _ => de.skip_any(),
        })?;
        Ok(p)
    }

    fn ip_configuration_properties(de: &mut Fast) -> R<IpConfigurationSummaryProperties> {
        let mut p = IpConfigurationSummaryProperties::default();
        let mut seen = 0;
        de.object(|de, key| match key {
            "privateIPAddress" => {
                once(&mut seen, 1)?;
                p.private_ip_address = de.str_or_null()?.and_then(parse_ipv4_lenient);
                Ok(())
            }
            "privateIPAddressVersion" => {
                once(&mut seen, 2)?;
                p.private_ip_address_version = code(de)?;
                Ok(())
            }
            "primary" => {
                once(&mut seen, 4)?;
                p.primary = de.bool_or_null()?;
                Ok(())
            }
            _ => de.skip_any(),
        })?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn nic(json: serde_json::Value) -> NetworkInterface {
        serde_json::from_value(json).expect("nic parses")
    }

    #[test]
    fn tolerant_of_nulls_and_unknown_fields() {
        let v: VirtualMachineScaleSet = serde_json::from_value(serde_json::json!({
            "id": null, "name": "x", "tags": null, "sku": null, "zones": null,
            "properties": {"orchestrationMode": null, "provisioningState": "succeeded", "brandNew": {"a": 1}},
            "extra": [1, 2, 3]
        }))
        .expect("parses");
        assert_eq!(v.orchestration_mode(), &OrchestrationMode::Uniform);
        assert!(v.is_succeeded());
        assert_eq!(v.sku.capacity, None);

        let v: VirtualMachineScaleSet = serde_json::from_value(serde_json::json!({
            "sku": {"capacity": "3"}, "tags": {"a": "b", "n": 1, "z": null},
            "properties": {"orchestrationMode": "flexible", "provisioningState": "Updating"}
        }))
        .expect("parses");
        assert_eq!(v.orchestration_mode(), &OrchestrationMode::Flexible);
        assert_eq!(v.capacity(), 3);
        assert_eq!(v.tags.get("n").map(String::as_str), Some("1"));
        assert!(!v.tags.contains_key("z"));
        assert_eq!(
            v.properties.provisioning_state,
            Some(ProvisioningState::Updating)
        );

        let vm: VirtualMachineScaleSetVm = serde_json::from_value(serde_json::json!({
            "instanceId": "3",
            "properties": {"provisioningState": "SUCCEEDED", "networkProfile": null,
              "instanceView": {"statuses": [{"code": "ProvisioningState/succeeded"}, {"code": "PowerState/Running"}, null],
                               "vmHealth": {"status": {"code": "HealthState/healthy"}}}}
        }))
        .expect("parses");
        assert!(vm.is_succeeded());
        assert_eq!(vm.power_state().as_deref(), Some("running"));
        assert_eq!(vm.health_state().as_deref(), Some("healthy"));
    }

    #[test]
    fn primary_ipv4_rules() {
        let n = nic(
            serde_json::json!({"properties": {"virtualMachine": {"id": "/Subs/X/VirtualMachines/0"},
            "ipConfigurations": [
                {"properties": {"primary": false, "privateIPAddress": "10.0.0.9"}},
                {"properties": {"primary": true, "privateIPAddress": "10.0.0.4/28", "privateIPAddressVersion": "IPv4"}}
            ]}}),
        );
        assert_eq!(primary_ipv4(&n), Some(Ipv4Addr::new(10, 0, 0, 4)));
        assert_eq!(
            scale_set_instance_id_of_nic(&n).as_deref(),
            Some("/subs/x/virtualmachines/0")
        );

        let v6 = nic(serde_json::json!({"properties": {"ipConfigurations": [
            {"properties": {"primary": true, "privateIPAddress": "fd00::4", "privateIPAddressVersion": "IPv6"}}]}}));
        assert_eq!(primary_ipv4(&v6), None);
        let v6b = nic(serde_json::json!({"properties": {"ipConfigurations": [
            {"properties": {"primary": true, "privateIPAddress": "fd00::4"}}]}}));
        assert_eq!(primary_ipv4(&v6b), None);
        let unflagged = nic(serde_json::json!({"properties": {"ipConfigurations": [
            {"properties": {"privateIPAddress": "10.1.2.3"}}]}}));
        assert_eq!(primary_ipv4(&unflagged), Some(Ipv4Addr::new(10, 1, 2, 3)));
        let none = nic(serde_json::json!({"properties": null}));
        assert_eq!(primary_ipv4(&none), None);
        assert_eq!(scale_set_instance_id_of_nic(&none), None);
        let garbage = nic(serde_json::json!({"properties": {"ipConfigurations": [
            {"properties": {"primary": true, "privateIPAddress": "not-an-ip"}}]}}));
        assert_eq!(primary_ipv4(&garbage), None);
    }

    fn examples_dir() -> Option<PathBuf> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/azure-examples");
        dir.is_dir().then_some(dir)
    }

    fn example_body(dir: &std::path::Path, file: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(dir.join(file)).expect("example readable");
        let v: serde_json::Value = serde_json::from_str(&text).expect("example is JSON");
        v["responses"]["200"]["body"].clone()
    }

    #[test]
    fn azure_examples_parse() {
        let Some(dir) = examples_dir() else {
            println!("skipped: ../shared not present");
            return;
        };

        let vmss: VirtualMachineScaleSet =
            serde_json::from_value(example_body(&dir, "VirtualMachineScaleSets_Get.json"))
                .expect("VMSS get parses");
        assert_eq!(vmss.name.as_deref(), Some("myVirtualMachineScaleSet"));
        assert_eq!(vmss.orchestration_mode(), &OrchestrationMode::Uniform);
        assert!(vmss.is_succeeded(), "lower-case 'succeeded' is Succeeded");
        assert_eq!(vmss.sku.capacity, Some(4));
        assert_eq!(vmss.sku.name.as_deref(), Some("Standard_D2s_v3"));
        assert_eq!(
            vmss.tags.get("myTag1").map(String::as_str),
            Some("tagValue1")
        );

        let list: Page<VirtualMachineScaleSet> = serde_json::from_value(example_body(
            &dir,
            "VirtualMachineScaleSets_List_MinimumSet.json",
        ))
        .expect("VMSS list parses");
        assert_eq!(list.value.len(), 2);
        assert!(list.next_link.is_none());

        let nics: Page<NetworkInterface> = serde_json::from_value(example_body(
            &dir,
            "NetworkInterfaces_ListVirtualMachineScaleSetNetworkInterfaces.json",
        ))
        .expect("VMSS NIC list parses");
        assert_eq!(nics.value.len(), 2);
        assert_eq!(
            primary_ipv4(&nics.value[0]),
            Some(Ipv4Addr::new(10, 0, 0, 4))
        );
        assert_eq!(
            primary_ipv4(&nics.value[1]),
            Some(Ipv4Addr::new(10, 0, 0, 5))
        );
        assert_eq!(
            scale_set_instance_id_of_nic(&nics.value[1]).as_deref(),
            Some("/subscriptions/subid/resourcegroups/rg1/providers/microsoft.compute/virtualmachinescalesets/vmss1/virtualmachines/1")
        );
        assert_eq!(nics.value[0].properties.primary, Some(true));

        let nic: NetworkInterface =
            serde_json::from_value(example_body(&dir, "NetworkInterfaces_Get.json"))
                .expect("NIC get parses");
        assert_eq!(primary_ipv4(&nic), Some(Ipv4Addr::new(172, 20, 2, 4)));
        assert_eq!(nic.properties.ip_configurations.len(), 2);
        assert_eq!(
            nic.properties.ip_configurations[1]
                .properties
                .private_ip_address
                .as_deref()
                .and_then(parse_ipv4_lenient),
            Some(Ipv4Addr::new(172, 20, 2, 16))
        );

        let flex: Page<VirtualMachineScaleSetVm> = serde_json::from_value(example_body(
            &dir,
            "VirtualMachineScaleSetVMs_List_Flex.json",
        ))
        .expect("VMSS VM list (flex) parses");
        assert!(!flex.value.is_empty());
        assert!(flex
            .value
            .iter()
            .all(|v| v.properties.virtual_machine_resource_id.is_some()));

        let iv: VmInstanceView = serde_json::from_value(example_body(
            &dir,
            "VirtualMachineScaleSetVMs_GetInstanceView.json",
        ))
        .expect("VMSS VM instance view parses");
        assert_eq!(iv.power_state().as_deref(), Some("running"));

        let iv: VmInstanceView =
            serde_json::from_value(example_body(&dir, "VirtualMachines_InstanceView.json"))
                .expect("VM instance view parses");
        assert_eq!(iv.power_state().as_deref(), Some("running"));
        assert_eq!(iv.health_state(), None);

        let vms: Page<VirtualMachineScaleSetVm> = serde_json::from_value(example_body(
            &dir,
            "VirtualMachines_ListAll_MinimumSet.json",
        ))
        .expect("VM list parses");
        assert_eq!(vms.value.len(), 2);
    }

    /// `body` through `decode_page_with` (the fast reader first) as `T`, against `Page<T>`
    /// through serde_json: the same rows, the same `nextLink`, or both refused.
    fn page_same<T>(body: &str) -> Result<usize, String>
    where
        T: serde::de::DeserializeOwned + fmt::Debug + 'static,
    {
        let mut out: Vec<T> = Vec::new();
        let fast = decode_page_with::<T, T, _>(body.as_bytes(), &mut Some, &mut out)
            .map(|next| format!("{out:?} {next:?}"));
        let slow = serde_json::from_str::<Page<T>>(body)
            .map(|p| format!("{:?} {:?}", p.value, p.next_link));
        match (fast, slow) {
            (Ok(a), Ok(b)) if a == b => Ok(out.len()),
            (Err(a), Err(b)) if a.to_string() == b.to_string() => Ok(0),
            (a, b) => Err(format!(
                "{}: fast {a:?}, serde_json {b:?}",
                std::any::type_name::<T>()
            )),
        }
    }

    fn every_page_type_same(body: &str) -> Result<(), String> {
        page_same::<NicSummary>(body)?;
        page_same::<ScaleSetVmView>(body)?;
        page_same::<VmRow>(body)?;
        page_same::<NetworkInterface>(body)?;
        page_same::<VirtualMachine>(body)?;
        page_same::<VirtualMachineScaleSet>(body)?;
        page_same::<VirtualMachineScaleSetVm>(body)?;
        page_same::<serde_json::Value>(body)?;
        Ok(())
    }

    #[test]
    fn every_azure_example_decodes_the_same_through_the_fast_reader() {
        let Some(dir) = examples_dir() else {
            println!("skipped: ../shared not present");
            return;
        };
        let mut pages = 0;
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("examples readable")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        assert!(!files.is_empty());
        for path in files {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let body = example_body(&dir, name);
            for text in [
                serde_json::to_string(&body).expect("serializes"),
                serde_json::to_string_pretty(&body).expect("serializes"),
            ] {
                if body.get("value").is_some_and(serde_json::Value::is_array) {
                    pages += 1;
                    every_page_type_same(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
                    // Elements alone, as single resources.
                }
                let one = |t: &str| -> Result<(), String> {
                    let f = |r: Result<String, serde_json::Error>| r.map_err(|e| e.to_string());
                    macro_rules! same {
                        ($t:ty) => {{
                            let a = f(super::super::json::decode(
                                t,
                                std::marker::PhantomData::<$t>,
                            )
                            .map(|v| format!("{v:?}")));
                            let b = f(serde_json::from_str::<$t>(t).map(|v| format!("{v:?}")));
                            if a.is_ok() != b.is_ok() || (a.is_ok() && a != b) {
                                return Err(format!("{}: {a:?} / {b:?}", stringify!($t)));
                            }
                        }};
                    }
                    same!(NicSummary);
                    same!(ScaleSetVmView);
                    same!(VmRow);
                    same!(NetworkInterface);
                    same!(VirtualMachine);
                    same!(VirtualMachineScaleSet);
                    same!(VirtualMachineScaleSetVm);
                    same!(VmInstanceView);
                    Ok(())
                };
                one(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        assert!(pages >= 8, "list examples read: {pages}");
    }

    #[test]
    fn a_page_the_fast_reader_refuses_is_decoded_by_serde_json_whose_answer_stands() {
        // Nested deeper than the scanner follows, in a field no model reads: serde_json
        // skips it, and the rows are what serde_json gives.
        let deep = format!("{}{}", "[".repeat(150), "]".repeat(150));
        let body = format!(
            r#"{{"value": [{{"id": "/A/b", "extra": {deep}, "properties": {{"provisioningState": "Succeeded"}}}}, {{"id": "/c"}}], "nextLink": "https://n"}}"#
        );
        assert!(
            super::super::json::decode(&body, std::marker::PhantomData::<Page<VmRow>>).is_err()
        );
        assert_eq!(page_same::<VmRow>(&body), Ok(2));
        let mut out = vec![String::from("kept")];
        let next = decode_page_with(body.as_bytes(), &mut |v: VmRow| v.id, &mut out)
            .expect("serde_json reads it");
        assert_eq!(out, ["kept", "/a/b", "/c"]);
        assert_eq!(next.as_deref(), Some("https://n"));
        // Malformed pages: serde_json's own error (line and column), nothing kept.
        for bad in [
            r#"{"value": [{"id": "x"}, {"id": }]}"#,
            r#"{"value": [{"id": "x"}], "nextLink": "a"#,
            "{\"value\": [{\"id\": \"x\u{1}\"}]}",
            r#"{"value": [{"id": "x", "id": "y"}]}"#,
            r#"{"value": [{"properties": {"instanceView": {"statuses": 3}}}]}"#,
        ] {
            let mut out: Vec<Option<String>> = vec![None];
            let err = decode_page_with(bad.as_bytes(), &mut |v: VmRow| Some(v.id), &mut out)
                .expect_err(bad);
            let serde = serde_json::from_str::<Page<VmRow>>(bad).expect_err(bad);
            assert_eq!(err.to_string(), serde.to_string());
            assert!(err.to_string().contains("line 1 column"), "{err}");
            assert_eq!(out.len(), 1, "{bad}");
            assert_eq!(page_same::<VmRow>(bad), Ok(0));
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_json_never_panics(s in ".{0,200}") {
            let _ = serde_json::from_str::<NetworkInterface>(&s);
            let _ = serde_json::from_str::<VirtualMachineScaleSetVm>(&s);
            let _ = serde_json::from_str::<VirtualMachineScaleSet>(&s);
        }

        #[test]
        fn ipv4_with_any_prefix(a in proptest::prelude::any::<[u8; 4]>(), p in 0u8..=32) {
            let ip = Ipv4Addr::from(a);
            proptest::prop_assert_eq!(parse_ipv4_lenient(&format!("{ip}/{p}")), Some(ip));
            proptest::prop_assert_eq!(parse_ipv4_lenient(&ip.to_string()), Some(ip));
        }
    }

    #[test]
    fn iso8601_durations_of_the_terminate_notification() {
        let secs = |s: &str| iso8601_duration(s).map(|d| d.as_secs_f64());
        assert_eq!(secs("PT5M"), Some(300.0));
        assert_eq!(secs("PT15M"), Some(900.0));
        assert_eq!(secs("pt1h30m"), Some(5400.0));
        assert_eq!(secs("P1DT2S"), Some(86_402.0));
        assert_eq!(secs("PT7.5S"), Some(7.5));
        assert_eq!(secs(" PT0S "), Some(0.0));
        for bad in [
            "", "P", "PT", "5M", "PT5", "PTM", "PT5S5M", "P1M", "P1W", "PT-5M", "PTxM",
        ] {
            assert_eq!(secs(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn terminate_notification_read_from_the_scale_set_model() {
        let set = |profile: serde_json::Value| -> VirtualMachineScaleSet {
            serde_json::from_value(serde_json::json!({
                "properties": {"virtualMachineProfile": {"scheduledEventsProfile": profile}}
            }))
            .expect("parses")
        };
        let on = set(serde_json::json!({
            "terminateNotificationProfile": {"notBeforeTimeout": "PT10M", "enable": true}
        }));
        assert_eq!(
            on.terminate_delay(),
            Some(std::time::Duration::from_secs(600))
        );
        let default = set(serde_json::json!({"terminateNotificationProfile": {"enable": "true"}}));
        assert_eq!(
            default.terminate_delay(),
            Some(std::time::Duration::from_secs(300))
        );
        let off = set(serde_json::json!({
            "terminateNotificationProfile": {"notBeforeTimeout": "PT10M", "enable": false}
        }));
        assert_eq!(off.terminate_delay(), None);
        assert_eq!(set(serde_json::Value::Null).terminate_delay(), None);
        assert_eq!(VirtualMachineScaleSet::default().terminate_delay(), None);
    }

    #[test]
    fn a_page_is_reduced_element_by_element_with_the_rules_of_page() {
        let mut keep_even = |v: serde_json::Value| v["n"].as_u64().filter(|n| n % 2 == 0);
        let mut out = Vec::new();
        let body = br#"{"value": [{"n": 1}, {"n": 2}, {"n": 4}], "extra": {"x": [1]}, "nextLink": "https://x/next"}"#;
        let next = decode_page_with(body, &mut keep_even, &mut out).expect("decodes");
        assert_eq!(out, [2, 4]);
        assert_eq!(next.as_deref(), Some("https://x/next"));
        // The same answers as `Page` for what is not a page.
        for bad in [
            &br#"{"nextLink": null}"#[..],
            br#"{"value": null}"#,
            br#"[1]"#,
            br#"{"value": []} x"#,
        ] {
            let mut out: Vec<u64> = Vec::new();
            assert!(decode_page_with(bad, &mut keep_even, &mut out).is_err());
            assert!(serde_json::from_slice::<Page<serde_json::Value>>(bad).is_err());
        }
        let mut out = Vec::new();
        assert_eq!(
            decode_page_with(br#"{"value": []}"#, &mut keep_even, &mut out).expect("empty page"),
            None
        );
    }
}

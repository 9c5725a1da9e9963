//! The one check on a URL an agent hands the platform (register, heartbeat, the A2A proxy):
//! http(s) only, no credentials, never a link-local or cloud metadata address.

use std::net::IpAddr;

/// Agent URLs must be http(s) and never point at link-local or cloud metadata addresses.
pub fn validate_agent_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("the agent url must be http or https")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("the agent url must not carry credentials");
    }
    let host = if let Some(h) = authority.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    if host.is_empty() {
        return Err("the agent url has no host");
    }
    let lower = host.to_ascii_lowercase();
    if lower == "metadata"
        || lower == "metadata.google.internal"
        || lower.ends_with(".metadata.google.internal")
    {
        return Err("the agent url points at a metadata service");
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        let v4_bad =
            |v4: std::net::Ipv4Addr| v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast();
        let bad = match ip {
            IpAddr::V4(v4) => v4_bad(v4),
            IpAddr::V6(v6) => {
                (v6.segments()[0] & 0xffc0) == 0xfe80
                    || v6.is_unspecified()
                    // The EC2 instance metadata service over IPv6.
                    || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                    || v6.to_ipv4_mapped().is_some_and(v4_bad)
            }
        };
        if bad {
            return Err("the agent url points at a link-local or unspecified address");
        }
    }
    Ok(())
}

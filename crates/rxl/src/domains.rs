//! Naming domains as xl does: `domid` takes a name, `domname` an ID (read as `strtol` reads
//! it), with xl's messages; and xl's guard against destroying Domain-0, which in rxen is the
//! host itself and cannot be destroyed at all.

use rxen_proto::api::DomainInfo;

/// Why a name, an ID or a destroy was refused, in xl's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// `rxl domid NAME` of a name no domain has.
    #[error("Can't get domid of domain name '{0}', maybe this domain does not exist.")]
    NoSuchName(String),
    /// `rxl domname TEXT` where TEXT has no digits.
    #[error("Invalid domain id.\n")]
    InvalidId,
    /// `rxl domname ID` of an ID no domain has.
    #[error("Can't get domain name of domain id '{0}', maybe this domain does not exist.")]
    NoSuchId(u32),
    /// `rxl destroy 0` without `-f`: xl's words.
    #[error("Not destroying domain 0; use -f to force.\nIn rxen, Domain-0 is the host itself: not even -f destroys it.\n")]
    Domain0,
    /// `rxl destroy -f 0`: xl would try; rxen cannot.
    #[error("Not destroying domain 0: in rxen, Domain-0 is the host itself.")]
    Domain0Forced,
}

/// Reads a domain ID as xl's `domname` does (`strtol`, base 10): leading blanks, a sign and the
/// digits that follow; the rest is ignored; a negative number wraps as it does in C.
pub fn parse_domid(text: &str) -> Result<u32, DomainError> {
    let crate::cnum::Leading { negative, digits } = crate::cnum::leading(text);
    if digits.is_empty() {
        return Err(DomainError::InvalidId);
    }
    // strtol saturates at LONG_MAX; the cast to uint32_t then keeps the low 32 bits.
    let value = digits.parse::<i64>().unwrap_or(i64::MAX);
    let value = if negative {
        value.wrapping_neg()
    } else {
        value
    };
    Ok(value as u32)
}

/// `rxl domid NAME`: the ID of the domain with exactly this name (an ID is not a name).
pub fn domid_of(domains: &[DomainInfo], name: &str) -> Result<u32, DomainError> {
    domains
        .iter()
        .find(|d| d.name == name)
        .map(|d| d.domid)
        .ok_or_else(|| DomainError::NoSuchName(name.to_string()))
}

/// `rxl domname ID`: the name of the domain with this ID.
pub fn name_of<'a>(domains: &'a [DomainInfo], id: &str) -> Result<&'a str, DomainError> {
    let domid = parse_domid(id)?;
    domains
        .iter()
        .find(|d| d.domid == domid)
        .map(|d| d.name.as_str())
        .ok_or(DomainError::NoSuchId(domid))
}

/// `rxl destroy [-f] DOMAIN` once DOMAIN is known to be `domid`: Domain-0 is refused.
pub fn may_destroy(domid: u32, force: bool) -> Result<(), DomainError> {
    match (domid, force) {
        (0, false) => Err(DomainError::Domain0),
        (0, true) => Err(DomainError::Domain0Forced),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dom(domid: u32, name: &str) -> DomainInfo {
        DomainInfo {
            domid,
            name: name.into(),
            uuid: String::new(),
            memory_mib: 0,
            maxmem_mib: 0,
            vcpus: 1,
            state: "-b----".into(),
            cpu_time_s: 0.0,
            uptime_s: 0.0,
            config: None,
            config_path: None,
        }
    }

    #[test]
    fn domid_takes_a_name_and_domname_an_id() {
        let ds = [dom(0, "Domain-0"), dom(3, "web"), dom(7, "12")];
        assert_eq!(domid_of(&ds, "web"), Ok(3));
        // A number is a name to domid, as in xl.
        assert_eq!(domid_of(&ds, "12"), Ok(7));
        assert_eq!(
            domid_of(&ds, "3").map_err(|e| e.to_string()),
            Err("Can't get domid of domain name '3', maybe this domain does not exist.".into())
        );
        assert_eq!(name_of(&ds, "3"), Ok("web"));
        assert_eq!(name_of(&ds, " 0"), Ok("Domain-0"));
        assert_eq!(name_of(&ds, "3xyz"), Ok("web"));
        assert_eq!(name_of(&ds, "web"), Err(DomainError::InvalidId));
        assert_eq!(DomainError::InvalidId.to_string(), "Invalid domain id.\n");
        assert_eq!(
            name_of(&ds, "9").map_err(|e| e.to_string()),
            Err("Can't get domain name of domain id '9', maybe this domain does not exist.".into())
        );
        assert_eq!(parse_domid("-1"), Ok(u32::MAX));
        assert_eq!(parse_domid(""), Err(DomainError::InvalidId));
        assert_eq!(parse_domid("-"), Err(DomainError::InvalidId));
    }

    #[test]
    fn domain_0_is_never_destroyed() {
        assert!(DomainError::Domain0
            .to_string()
            .starts_with("Not destroying domain 0; use -f to force.\n"));
        assert_eq!(may_destroy(0, false), Err(DomainError::Domain0));
        assert_eq!(may_destroy(0, true), Err(DomainError::Domain0Forced));
        assert_eq!(may_destroy(5, false), Ok(()));
    }
}

//! `rxl trigger DOMAIN TRIGGER [VCPU]`: xl's triggers, read as libxl names them. `power`
//! presses the guest's power button (as `shutdown`), `reset` resets it at once, `nmi` injects
//! a non-maskable interrupt into one vCPU (0 unless VCPU says otherwise); the others need
//! what rxen's VMM does not have and are refused with the reason.

/// A trigger by xl's name (`libxl_trigger_from_string`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The ACPI power button (the test guest's power-off request).
    Power,
    /// A hard reset: the domain ends as rebooted, without asking the guest.
    Reset,
    /// A non-maskable interrupt.
    Nmi,
    /// An INIT IPI.
    Init,
    /// The ACPI sleep button.
    Sleep,
    /// Resume from ACPI S3.
    S3Resume,
}

/// What rxl does not do with a trigger, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    /// Not a trigger xl knows: xl's own message.
    #[error("Invalid trigger \"{0}\"")]
    Invalid(String),
    /// A trigger rxen cannot deliver.
    #[error("trigger {0} is not supported: {1}")]
    Unsupported(&'static str, &'static str),
}

impl Trigger {
    /// Reads a trigger name as libxl does (case-insensitively).
    pub fn parse(name: &str) -> Result<Trigger, TriggerError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "power" => Trigger::Power,
            "reset" => Trigger::Reset,
            "nmi" => Trigger::Nmi,
            "init" => Trigger::Init,
            "sleep" => Trigger::Sleep,
            "s3resume" => Trigger::S3Resume,
            _ => return Err(TriggerError::Invalid(name.to_string())),
        })
    }

    /// `Ok` for the triggers rxen delivers, the reason for the others.
    pub fn supported(self) -> Result<Trigger, TriggerError> {
        let why = match self {
            Trigger::Power | Trigger::Reset | Trigger::Nmi => return Ok(self),
            Trigger::Init => ("init", "rxen's VMM does not send INIT to a vCPU"),
            Trigger::Sleep => (
                "sleep",
                "rxen domains have no ACPI sleep button or S3 state",
            ),
            Trigger::S3Resume => (
                "s3resume",
                "rxen domains have no ACPI S3 state to resume from",
            ),
        };
        Err(TriggerError::Unsupported(why.0, why.1))
    }
}

/// Reads xl's VCPU argument as xl does (`strtol`, base 10: leading blanks, a sign, digits,
/// anything after ignored). Returns the number (saturated) and whether any digit was read:
/// without one xl warns and uses vCPU 0.
pub fn parse_vcpu(arg: &str) -> (i64, bool) {
    let s = arg.trim_start();
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut value: i64 = 0;
    let mut any = false;
    for b in digits.bytes().take_while(u8::is_ascii_digit) {
        any = true;
        value = value.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    if !any {
        return (0, false);
    }
    (if negative { -value } else { value }, true)
}

/// The vCPU index an NMI goes to, or the reason a number cannot name one.
pub fn nmi_vcpu(value: i64) -> Result<u32, String> {
    u32::try_from(value)
        .map_err(|_| format!("vCPU {value} is out of range: vCPUs are numbered from 0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_argument_is_read_as_strtol() {
        assert_eq!(parse_vcpu("1"), (1, true));
        assert_eq!(parse_vcpu("  +7x"), (7, true));
        assert_eq!(parse_vcpu("-2"), (-2, true));
        assert_eq!(parse_vcpu("x"), (0, false));
        assert_eq!(parse_vcpu(""), (0, false));
        assert_eq!(parse_vcpu("99999999999999999999999").0, i64::MAX);
        assert_eq!(nmi_vcpu(5), Ok(5));
        assert!(nmi_vcpu(-1).expect_err("negative").contains("out of range"));
        assert!(nmi_vcpu(1 << 33).is_err());
    }

    #[test]
    fn names_are_libxls_and_power_reset_and_nmi_are_delivered() {
        assert_eq!(Trigger::parse("power"), Ok(Trigger::Power));
        assert_eq!(Trigger::parse("RESET"), Ok(Trigger::Reset));
        assert_eq!(
            Trigger::parse("kick").map_err(|e| e.to_string()),
            Err("Invalid trigger \"kick\"".to_string())
        );
        for name in ["init", "sleep", "s3resume"] {
            let t = Trigger::parse(name).expect(name);
            let e = t.supported().expect_err(name).to_string();
            assert!(
                e.starts_with(&format!("trigger {name} is not supported: ")),
                "{e}"
            );
        }
        assert_eq!(Trigger::Power.supported(), Ok(Trigger::Power));
        assert_eq!(
            Trigger::parse("NMI").and_then(Trigger::supported),
            Ok(Trigger::Nmi)
        );
    }
}

//! `rxl trigger DOMAIN TRIGGER [VCPU]`: xl's triggers, read as libxl names them. `power`
//! presses the guest's power button (as `shutdown`), `reset` resets it at once; the others
//! need what rxen's VMM does not have and are refused with the reason.

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
            Trigger::Power | Trigger::Reset => return Ok(self),
            Trigger::Nmi => ("nmi", "rxen's VMM does not inject NMIs into its guests"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_libxls_and_only_power_and_reset_are_delivered() {
        assert_eq!(Trigger::parse("power"), Ok(Trigger::Power));
        assert_eq!(Trigger::parse("RESET"), Ok(Trigger::Reset));
        assert_eq!(
            Trigger::parse("kick").map_err(|e| e.to_string()),
            Err("Invalid trigger \"kick\"".to_string())
        );
        for name in ["nmi", "init", "sleep", "s3resume"] {
            let t = Trigger::parse(name).expect(name);
            let e = t.supported().expect_err(name).to_string();
            assert!(
                e.starts_with(&format!("trigger {name} is not supported: ")),
                "{e}"
            );
        }
        assert_eq!(Trigger::Power.supported(), Ok(Trigger::Power));
    }
}

//! `rxl shutdown -w` and `rxl reboot -w`: following each domain until it has shut down (`-w`)
//! or is gone (`-ww`), with xl's lines: `Domain N has been shut down, reason code R`,
//! `Domain N continue waiting for death`, `Domain N has been destroyed`.

use rxen_proto::vmspec::ExitReason;

/// What a look at rxend showed about one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Still listed under its ID, with xl's six-letter state.
    Listed(String),
    /// No longer listed; how it ended, if rxend remembers.
    Gone(Option<ExitReason>),
}

/// xl's shutdown reason code (libxl's `shutdown_reason`): poweroff 0, reboot 1, suspend 2,
/// crash 3, watchdog 4. A domain saved or migrated away was suspended; a destroyed one never
/// shut down.
pub fn reason_code(reason: ExitReason) -> Option<u32> {
    match reason {
        ExitReason::Poweroff => Some(0),
        ExitReason::Reboot => Some(1),
        ExitReason::Saved | ExitReason::Migrated => Some(2),
        ExitReason::Crash => Some(3),
        ExitReason::Watchdog => Some(4),
        ExitReason::Destroyed => None,
    }
}

/// One domain being waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    /// Its ID.
    pub domid: u32,
    /// Wait for its death, not only its shutdown (`-ww`).
    pub until_death: bool,
    shut_down: bool,
    done: bool,
}

impl Waiter {
    /// Starts waiting for domain `domid`.
    pub fn new(domid: u32, until_death: bool) -> Waiter {
        Waiter {
            domid,
            until_death,
            shut_down: false,
            done: false,
        }
    }

    /// True once there is nothing more to wait for.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Takes in one look at the domain; returns the lines to print, in order.
    pub fn observe(&mut self, seen: &Seen) -> Vec<String> {
        let mut lines = Vec::new();
        if self.done {
            return lines;
        }
        let id = self.domid;
        let code = match seen {
            Seen::Listed(state) => crate::format::shutdown_code(state),
            Seen::Gone(reason) => reason.and_then(reason_code),
        };
        if let (Some(code), false) = (code, self.shut_down) {
            self.shut_down = true;
            lines.push(format!(
                "Domain {id} has been shut down, reason code {code}"
            ));
            if !self.until_death {
                self.done = true;
                return lines;
            }
            lines.push(format!("Domain {id} continue waiting for death"));
        }
        if matches!(seen, Seen::Gone(_)) {
            lines.push(format!("Domain {id} has been destroyed"));
            self.done = true;
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_w_ends_at_the_shutdown_with_its_reason_code() {
        let mut w = Waiter::new(5, false);
        assert!(w.observe(&Seen::Listed("-b----".into())).is_empty());
        assert_eq!(
            w.observe(&Seen::Gone(Some(ExitReason::Poweroff))),
            ["Domain 5 has been shut down, reason code 0"]
        );
        assert!(w.done());
        let mut w = Waiter::new(6, false);
        assert_eq!(
            w.observe(&Seen::Listed("---sc-".into())),
            ["Domain 6 has been shut down, reason code 3"]
        );
        assert!(w.done());
    }

    #[test]
    fn two_w_go_on_until_the_domain_is_gone() {
        let mut w = Waiter::new(7, true);
        assert_eq!(
            w.observe(&Seen::Listed("---sr-".into())),
            [
                "Domain 7 has been shut down, reason code 1",
                "Domain 7 continue waiting for death"
            ]
        );
        assert!(!w.done());
        assert!(w.observe(&Seen::Listed("---sr-".into())).is_empty());
        assert_eq!(
            w.observe(&Seen::Gone(Some(ExitReason::Reboot))),
            ["Domain 7 has been destroyed"]
        );
        assert!(w.done());
        let mut w = Waiter::new(8, true);
        assert_eq!(
            w.observe(&Seen::Gone(Some(ExitReason::Poweroff))),
            [
                "Domain 8 has been shut down, reason code 0",
                "Domain 8 continue waiting for death",
                "Domain 8 has been destroyed"
            ]
        );
    }

    #[test]
    fn a_destroyed_domain_never_shut_down() {
        let mut w = Waiter::new(9, false);
        assert_eq!(
            w.observe(&Seen::Gone(Some(ExitReason::Destroyed))),
            ["Domain 9 has been destroyed"]
        );
        let mut w = Waiter::new(10, false);
        assert_eq!(
            w.observe(&Seen::Gone(None)),
            ["Domain 10 has been destroyed"]
        );
        assert_eq!(reason_code(ExitReason::Saved), Some(2));
    }
}

//! Who may do what: root may do everything; another user may act on a
//! domain only if its config names him in `xen_shell`, and sees only those.

use nix::unistd::{Uid, User};

use crate::record::DomainRecord;

/// The caller of a request, from the socket's peer credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Numeric user ID.
    pub uid: u32,
    /// User name, if the user database knows it.
    pub user: Option<String>,
}

impl Caller {
    /// The caller with user ID `uid`, its name looked up.
    pub fn from_uid(uid: u32) -> Caller {
        let user = User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        Caller { uid, user }
    }

    /// True for root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// A short description for log lines, e.g. `marlowe (uid 1001)`.
    pub fn describe(&self) -> String {
        match &self.user {
            Some(u) => format!("{u} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }

    /// True if this caller may see and manage the domain.
    pub fn may_manage(&self, rec: &DomainRecord) -> bool {
        self.is_root()
            || self
                .user
                .as_ref()
                .is_some_and(|u| rec.config.xen_shell.iter().any(|s| s == u))
    }
}

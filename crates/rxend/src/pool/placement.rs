//! Placement: which host of the pool a domain goes to (`rxl create --pool`, `rxl restore
//! --pool`, `rxl host-evacuate`). A pure chooser over the hosts' figures, so that every rule is
//! tested without a pool.
//!
//! A host can take a domain when its lease is alive, it is enabled, it is not excluded (the
//! host being evacuated) and its free memory (rxend's admission figure) is at least the
//! domain's RAM. Among those: `pool_host` names the one host allowed; else hosts that hold no
//! domain of the domain's `pool_anti_affinity` group come first (best-effort: when none has
//! room, any host with room will do), then the most free memory, then the lowest load, then
//! the name.

use std::cmp::Ordering;

/// A host as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Its name in the pool.
    pub name: String,
    /// Its lease is alive.
    pub alive: bool,
    /// It is not disabled.
    pub enabled: bool,
    /// Memory domains may still be given, MiB.
    pub mem_free_mib: u64,
    /// Its one-minute load average.
    pub load: f64,
    /// The anti-affinity groups of the domains on it (repeats allowed).
    pub groups: Vec<String>,
}

/// What the domain needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Need {
    /// The domain's name (for messages).
    pub name: String,
    /// Its RAM, MiB (what admission control counts).
    pub memory_mib: u64,
    /// `pool_host`: the only host it may go to.
    pub pool_host: Option<String>,
    /// `pool_anti_affinity`: its group.
    pub anti_affinity: Option<String>,
    /// Hosts it may not go to (the host being evacuated).
    pub exclude: Vec<String>,
}

/// Why no host was chosen; one line for the user.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlacementError {
    /// `pool_host` names no host of the pool.
    #[error("pool_host = \"{host}\" of domain {name}: the pool has no such host")]
    HostAbsent {
        /// The domain.
        name: String,
        /// The host asked for.
        host: String,
    },
    /// `pool_host`'s host cannot take the domain.
    #[error("pool_host = \"{host}\" of domain {name}: that host {why}")]
    HostUnfit {
        /// The domain.
        name: String,
        /// The host asked for.
        host: String,
        /// Why not (down, disabled, being emptied, too little memory).
        why: String,
    },
    /// No host can take the domain.
    #[error("no host of the pool can take domain {name} ({need} MiB): {why}")]
    NoRoom {
        /// The domain.
        name: String,
        /// Its memory, MiB.
        need: u64,
        /// What the hosts lack.
        why: String,
    },
}

/// Why `c` cannot take `need`, if it cannot.
fn unfit(c: &Candidate, need: &Need) -> Option<String> {
    if need.exclude.contains(&c.name) {
        Some("is the host being emptied".into())
    } else if !c.alive {
        Some("is down (its lease expired)".into())
    } else if !c.enabled {
        Some("is disabled".into())
    } else if c.mem_free_mib < need.memory_mib {
        Some(format!(
            "has {} MiB free, the domain needs {} MiB",
            c.mem_free_mib, need.memory_mib
        ))
    } else {
        None
    }
}

/// Most free memory first, then the lowest load, then the name.
fn better(a: &Candidate, b: &Candidate) -> Ordering {
    b.mem_free_mib
        .cmp(&a.mem_free_mib)
        .then(a.load.total_cmp(&b.load))
        .then(a.name.cmp(&b.name))
}

/// The host `need` goes to.
pub fn choose_host(hosts: &[Candidate], need: &Need) -> Result<String, PlacementError> {
    if let Some(want) = &need.pool_host {
        let Some(c) = hosts.iter().find(|c| &c.name == want) else {
            return Err(PlacementError::HostAbsent {
                name: need.name.clone(),
                host: want.clone(),
            });
        };
        return match unfit(c, need) {
            None => Ok(c.name.clone()),
            Some(why) => Err(PlacementError::HostUnfit {
                name: need.name.clone(),
                host: want.clone(),
                why,
            }),
        };
    }
    let mut fit: Vec<&Candidate> = hosts.iter().filter(|c| unfit(c, need).is_none()).collect();
    if fit.is_empty() {
        let why = if hosts.is_empty() {
            "the pool has no hosts".to_string()
        } else {
            let mut v: Vec<&Candidate> = hosts.iter().collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v.iter()
                .map(|c| format!("{} {}", c.name, unfit(c, need).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(PlacementError::NoRoom {
            name: need.name.clone(),
            need: need.memory_mib,
            why,
        });
    }
    if let Some(group) = &need.anti_affinity {
        let apart: Vec<&Candidate> = fit
            .iter()
            .copied()
            .filter(|c| !c.groups.contains(group))
            .collect();
        if !apart.is_empty() {
            fit = apart;
        } else {
            // Best-effort: every host with room holds the group already; the fewest first.
            fit.sort_by(|a, b| {
                let n = |c: &Candidate| c.groups.iter().filter(|g| *g == group).count();
                n(a).cmp(&n(b)).then(better(a, b))
            });
            return Ok(fit[0].name.clone());
        }
    }
    fit.sort_by(|a, b| better(a, b));
    Ok(fit[0].name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, free: u64, load: f64) -> Candidate {
        Candidate {
            name: name.into(),
            alive: true,
            enabled: true,
            mem_free_mib: free,
            load,
            groups: Vec::new(),
        }
    }

    fn need(mib: u64) -> Need {
        Need {
            name: "d".into(),
            memory_mib: mib,
            ..Default::default()
        }
    }

    #[test]
    fn most_free_memory_then_load_then_name() {
        let hs = [
            host("a", 100, 0.0),
            host("b", 300, 2.0),
            host("c", 200, 0.0),
        ];
        assert_eq!(choose_host(&hs, &need(50)), Ok("b".into()));
        let hs = [
            host("a", 300, 1.0),
            host("b", 300, 0.5),
            host("c", 200, 0.0),
        ];
        assert_eq!(choose_host(&hs, &need(50)), Ok("b".into()));
        let hs = [host("b", 300, 0.5), host("a", 300, 0.5)];
        assert_eq!(choose_host(&hs, &need(50)), Ok("a".into()));
    }

    #[test]
    fn down_disabled_excluded_and_full_hosts_are_skipped() {
        let mut down = host("down", 900, 0.0);
        down.alive = false;
        let mut off = host("off", 800, 0.0);
        off.enabled = false;
        let hs = [
            down,
            off,
            host("gone", 700, 0.0),
            host("full", 40, 0.0),
            host("ok", 60, 9.0),
        ];
        let mut n = need(50);
        n.exclude = vec!["gone".into()];
        assert_eq!(choose_host(&hs, &n), Ok("ok".into()));
        n.memory_mib = 61;
        let e = choose_host(&hs, &n).expect_err("no room");
        let text = e.to_string();
        for part in [
            "down is down",
            "off is disabled",
            "gone is the host being emptied",
            "full has 40 MiB free",
            "ok has 60 MiB free, the domain needs 61 MiB",
        ] {
            assert!(text.contains(part), "{text}");
        }
        assert!(matches!(
            choose_host(&[], &need(1)),
            Err(PlacementError::NoRoom { .. })
        ));
    }

    #[test]
    fn memory_exactly_free_fits() {
        assert_eq!(
            choose_host(&[host("a", 64, 0.0)], &need(64)),
            Ok("a".into())
        );
    }

    #[test]
    fn pool_host_is_the_only_choice() {
        let mut off = host("off", 800, 0.0);
        off.enabled = false;
        let hs = [host("big", 900, 0.0), host("small", 100, 0.0), off];
        let mut n = need(50);
        n.pool_host = Some("small".into());
        assert_eq!(choose_host(&hs, &n), Ok("small".into()));
        n.pool_host = Some("nowhere".into());
        assert!(matches!(
            choose_host(&hs, &n),
            Err(PlacementError::HostAbsent { .. })
        ));
        n.pool_host = Some("off".into());
        let e = choose_host(&hs, &n).expect_err("disabled");
        assert!(
            e.to_string()
                .contains("off\" of domain d: that host is disabled"),
            "{e}"
        );
        n.pool_host = Some("small".into());
        n.memory_mib = 101;
        assert!(matches!(
            choose_host(&hs, &n),
            Err(PlacementError::HostUnfit { .. })
        ));
        // Evacuating its host: it has nowhere to go.
        n.memory_mib = 1;
        n.exclude = vec!["small".into()];
        let e = choose_host(&hs, &n).expect_err("excluded");
        assert!(e.to_string().contains("being emptied"), "{e}");
    }

    #[test]
    fn anti_affinity_spreads_a_group_while_it_can() {
        let mut a = host("a", 900, 0.0);
        a.groups = vec!["web".into()];
        let mut b = host("b", 500, 0.0);
        b.groups = vec!["db".into()];
        let c = host("c", 100, 0.0);
        let mut n = need(50);
        n.anti_affinity = Some("web".into());
        // a has the most memory but holds a web domain: b.
        assert_eq!(
            choose_host(&[a.clone(), b.clone(), c.clone()], &n),
            Ok("b".into())
        );
        // Without the group, a.
        n.anti_affinity = None;
        assert_eq!(
            choose_host(&[a.clone(), b.clone(), c.clone()], &n),
            Ok("a".into())
        );
        // Only hosts with room count: c is too small, b holds web too: the fewest web first.
        n.anti_affinity = Some("web".into());
        n.memory_mib = 200;
        b.groups.push("web".into());
        a.groups.push("web".into());
        assert_eq!(
            choose_host(&[a.clone(), b.clone(), c.clone()], &n),
            Ok("b".into())
        );
        // Best-effort: with every host holding it equally, most memory wins.
        b.groups.push("web".into());
        assert_eq!(choose_host(&[a, b, c], &n), Ok("a".into()));
    }
}

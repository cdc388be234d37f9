//! `rxl config-update`: a new config for a domain, kept in its record and used the next time
//! rxend creates the domain again (an `on_reboot`/`on_poweroff`/`on_crash` restart), as xl
//! keeps it in libxl's userdata for its own restarts. rxend also remembers the file for
//! `rxl boot`. The running domain is not touched.

use super::{capped, Created, Daemon, DaemonError};
use crate::auth::Caller;
use crate::known::KnownConfig;
use crate::record::NextConfig;

impl Daemon {
    /// Parses `text` (read from `path`, with `overrides`) and stores it as the config of
    /// domain `r`'s next restart. Root only, as `create`. Returns the domain's ID and name,
    /// with the parser's warnings.
    pub fn config_update(
        &self,
        caller: &Caller,
        r: &str,
        path: &str,
        text: &str,
        overrides: &[String],
        ignore_unsupported: bool,
    ) -> Result<Created, DaemonError> {
        self.only_root(caller, "update domain configurations")?;
        let (id, _) = self.guest(caller, r, "given a new configuration")?;
        let parsed =
            xlcfg::parse(text, path, overrides).map_err(|e| DaemonError::Config(e.to_string()))?;
        let mut warnings = Vec::new();
        let mut refused = Vec::new();
        for d in &parsed.diagnostics {
            if matches!(d.kind, xlcfg::DiagnosticKind::Unsupported) {
                refused.push(d.to_string());
            } else {
                warnings.push(d.to_string());
            }
        }
        let config = parsed.config;
        if !refused.is_empty() {
            if !ignore_unsupported {
                return Err(DaemonError::Config(format!(
                    "refusing the configuration of domain \"{}\": it uses what rxen does not support:\n  {}\n(pass --ignore-unsupported to use it without them)",
                    config.name,
                    capped(refused).join("\n  ")
                )));
            }
            warnings.extend(refused.into_iter().map(|r| format!("ignored: {r}")));
        }
        super::check_name(&config.name)?;
        let new_name = config.name.clone();
        let rec = {
            let mut t = self.table();
            if t.domains
                .values()
                .any(|e| e.rec.name == new_name && e.rec.domid != id)
            {
                return Err(DaemonError::NameTaken(new_name));
            }
            let Some(e) = t.domains.get_mut(&id) else {
                return Err(DaemonError::NoSuchDomain(r.to_string()));
            };
            e.rec.next_config = Some(NextConfig {
                config,
                path: path.to_string(),
            });
            e.rec.clone()
        };
        self.save(&rec)?;
        let known = KnownConfig {
            path: path.to_string(),
            overrides: overrides.to_vec(),
            ignore_unsupported,
        };
        if let Err(e) = self.known.remember(&new_name, known) {
            self.log.error(format!(
                "domain {}: rxend cannot remember its new config file for boot: {e}",
                rec.name
            ));
        }
        self.log.info(format!(
            "domain {id} ({}): configuration for the next restart set from {path} by {}",
            rec.name,
            caller.describe()
        ));
        Ok(Created {
            domid: id,
            name: rec.name,
            warnings: capped(warnings),
        })
    }
}

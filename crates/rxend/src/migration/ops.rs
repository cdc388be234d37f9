//! Save, restore and migration, the daemon's side (the VMM moves the bytes): `rxl save`,
//! `rxl restore`, `rxl migrate` (the source: connect, [`handshake`], hand the connection
//! to the VMM) and the target's reservation check and receiving VMM. An `impl Daemon` block.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rxen_proto::api::ConfigText;
use rxen_proto::stream::{self, ConfigRecord, RecordType, StreamReader};
use rxen_proto::vmctl::{AfterSave, TransferStats, VmRequest, VmResponse};
use xlcfg::DomainConfig;

use super::handshake::{self, Reservation, RuntimeSettings};
use super::savefile::SaveFile;
use crate::auth::Caller;
use crate::daemon::{Busy, Created, Daemon, DaemonError};
use crate::record::DomainState;
use crate::vmm::{self, VmmError};

/// How long a save or a migration may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `rxl migrate`'s options, as rxend gets them.
#[derive(Debug)]
pub struct MigrateOptions {
    /// Target host.
    pub host: String,
    /// Target relocation port.
    pub port: u16,
    /// Key file (else rxend's configured one).
    pub key_file: Option<String>,
    /// Live pre-copy.
    pub live: bool,
    /// Most pre-copy rounds.
    pub max_rounds: u32,
    /// Downtime target in milliseconds.
    pub downtime_ms: u64,
    /// Leave paused on the target.
    pub paused: bool,
    /// The connection to the receiver, for the ssh transport (else rxend connects).
    pub channel: Option<OwnedFd>,
    /// Copy the disks in the stream (`--copy-storage`): the target does not share them.
    pub copy_storage: bool,
}

fn transfer_err(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Vmm(VmmError::Control(e.to_string()))
}

/// Reads the config that rides in a save file (checking only the header and that record).
pub fn config_of_save_file(path: &Path) -> Result<ConfigRecord, DaemonError> {
    let f = fs::File::open(path).map_err(|e| {
        DaemonError::Config(format!("cannot open save file {}: {e}", path.display()))
    })?;
    let mut r = StreamReader::new(std::io::BufReader::new(f))
        .map_err(|e| DaemonError::Config(format!("{}: {e}", path.display())))?;
    let body = r
        .expect(RecordType::Config)
        .map_err(|e| DaemonError::Config(format!("{}: {e}", path.display())))?;
    stream::from_json("config", &body)
        .map_err(|e| DaemonError::Config(format!("{}: {e}", path.display())))
}

/// Reads a VMM's progress file: empty when no transfer runs; rewritten in
/// place while one does, so a read may catch it half-written: then it is read again.
pub fn read_progress(path: &Path) -> Option<rxen_proto::vmctl::TransferProgress> {
    for _ in 0..5 {
        let data = vmm::read_run_file(path)?;
        if data.is_empty() {
            return None;
        }
        if let Ok(p) = serde_json::from_slice(&data) {
            return Some(p);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

impl Daemon {
    fn parse_config(&self, c: &ConfigText) -> Result<DomainConfig, DaemonError> {
        xlcfg::parse(&c.text, &c.path, &[])
            .map(|p| p.config)
            .map_err(|e| DaemonError::Config(e.to_string()))
    }

    /// The config record and VMM process of a running, idle domain, marked `busy`.
    fn begin(
        &self,
        caller: &Caller,
        r: &str,
        verb: &'static str,
        busy: Busy,
        config: Option<&ConfigText>,
    ) -> Result<(u32, PathBuf, ConfigRecord, crate::record::DomainRecord), DaemonError> {
        let (id, dir, rec) = self.mark_busy(caller, r, verb, busy)?;
        let record = match config {
            Some(c) => match self.parse_config(c) {
                Ok(cfg) => ConfigRecord {
                    config: serde_json::to_value(&cfg).unwrap_or_default(),
                    config_path: Some(c.path.clone()),
                },
                Err(e) => {
                    self.set_busy(id, None);
                    return Err(e);
                }
            },
            None => ConfigRecord {
                config: serde_json::to_value(&rec.config).unwrap_or_default(),
                config_path: rec.config_path.clone(),
            },
        };
        Ok((id, dir, record, rec))
    }

    /// `rxl save`: writes the domain to `path`; it then stops, keeps running (`checkpoint`) or stays paused.
    pub fn save_domain(
        &self,
        caller: &Caller,
        r: &str,
        path: &str,
        checkpoint: bool,
        paused: bool,
        config: Option<&ConfigText>,
    ) -> Result<(String, TransferStats), DaemonError> {
        self.only_root(caller, "save domains")?;
        let (id, dir, record, rec) = self.begin(caller, r, "saved", Busy::Saving, config)?;
        let then = if paused {
            AfterSave::Pause
        } else if checkpoint {
            AfterSave::Resume
        } else {
            AfterSave::Exit
        };
        let name = rec.name.clone();
        let fail = |message: String| {
            self.set_busy(id, None);
            self.log.error(format!(
                "domain {id} ({name}): save to {path} failed: {message}"
            ));
            transfer_err(message)
        };
        // The stream goes to an unnamed file beside `path`, made here and passed to the VMM
        // (which opens no path once its guest runs); it takes `path`'s name only once the
        // VMM wrote all of it: a failed or interrupted save leaves whatever was there untouched.
        let target = SaveFile::create(Path::new(path)).map_err(|e| fail(e.to_string()))?;
        let fd = target.descriptor().map_err(|e| fail(e.to_string()))?;
        // A plain save holds the domain stopped until the file is in place: it exits only
        // then, and goes on as before when the file cannot be put there.
        let req = VmRequest::Save {
            path: PathBuf::from(path),
            config: record,
            then: if then == AfterSave::Exit {
                AfterSave::Hold
            } else {
                then
            },
        };
        let resp = vmm::request_long(&dir, &req, Some(&fd), TRANSFER_TIMEOUT);
        drop(fd);
        let stats = match resp {
            Ok(VmResponse::Transferred(s)) => s,
            Ok(VmResponse::Error { message }) => return Err(fail(message)),
            Ok(other) => {
                self.set_busy(id, None);
                return Err(transfer_err(format!("unexpected answer {other:?}")));
            }
            Err(e) => {
                self.set_busy(id, None);
                return Err(e.into());
            }
        };
        let committed = target.commit();
        if then == AfterSave::Exit {
            let finish = VmRequest::SaveFinish {
                path: PathBuf::from(path),
                committed: committed.is_ok(),
            };
            if let Err(e) = vmm::command(&dir, &finish) {
                if committed.is_ok() {
                    self.set_busy(id, None);
                    self.log.error(format!(
                        "domain {id} ({name}): saved to {path}, but its VMM did not stop: {e}"
                    ));
                    return Err(e.into());
                }
                self.log.error(format!(
                    "domain {id} ({name}): cannot resume it after a failed save: {e}"
                ));
            }
        }
        if let Err(e) = committed {
            return Err(fail(e.to_string()));
        }
        self.log.info(format!(
            "domain {id} ({name}) saved to {path}: {} bytes in {:.0} ms{}; {}",
            stats.bytes,
            stats.total_ms,
            match then {
                AfterSave::Exit | AfterSave::Hold => "",
                AfterSave::Resume => ", still running",
                AfterSave::Pause => ", left paused",
            },
            stop_copy_line(&stats)
        ));
        match then {
            AfterSave::Exit | AfterSave::Hold => self.finish_gone(id, &rec),
            AfterSave::Resume => self.set_busy(id, None),
            AfterSave::Pause => {
                let saved = self.update_record(id, |rec| {
                    if let DomainState::Running { paused, .. } = &mut rec.state {
                        *paused = true;
                    }
                });
                self.set_busy(id, None);
                saved?;
            }
        }
        Ok((name, stats))
    }

    /// How far a save or migration of `r` has got (`None` when none runs),
    /// from the file its VMM keeps up to date.
    pub fn transfer_progress(
        &self,
        caller: &Caller,
        r: &str,
    ) -> Result<Option<rxen_proto::vmctl::TransferProgress>, DaemonError> {
        self.only_root(caller, "follow transfers")?;
        let (_, dir) = self.guest(caller, r, "followed")?;
        let path = dir.join(rxen_proto::vmspec::files::TRANSFER_PROGRESS);
        Ok(read_progress(&path))
    }

    /// `rxl restore`: starts a domain from a save file (its own config, or `config`).
    pub fn restore_domain(
        &self,
        caller: &Caller,
        path: &str,
        config: Option<&ConfigText>,
        paused: bool,
    ) -> Result<Created, DaemonError> {
        self.only_root(caller, "restore domains")?;
        let file = PathBuf::from(path);
        let inside = config_of_save_file(&file)?;
        let (config, config_path) = match config {
            Some(c) => (self.parse_config(c)?, Some(c.path.clone())),
            None => (
                serde_json::from_value::<DomainConfig>(inside.config)
                    .map_err(|e| e.to_string())
                    .and_then(|c| xlcfg::check_config(&c).map(|()| c))
                    .map_err(|e| {
                        DaemonError::Config(format!("{path}: the config inside is unusable: {e}"))
                    })?,
                inside.config_path,
            ),
        };
        let created = self.start_from(config, config_path, paused, Some(file), None)?;
        self.log.info(format!(
            "domain {} ({}) restored from {path}",
            created.domid, created.name
        ));
        Ok(created)
    }

    /// `rxl migrate`: moves a domain to another host; it stops here only once it runs there.
    pub fn migrate_domain(
        &self,
        caller: &Caller,
        r: &str,
        opts: MigrateOptions,
    ) -> Result<(String, TransferStats), DaemonError> {
        self.only_root(caller, "migrate domains")?;
        let (id, dir, record, rec) = self.begin(caller, r, "migrated", Busy::Migrating, None)?;
        let name = rec.name.clone();
        let target = if opts.channel.is_some() {
            "ssh".to_string()
        } else {
            format!("{}:{}", opts.host, opts.port)
        };
        let result = self.migrate_inner(id, &dir, record, &rec, &opts);
        match result {
            Ok(stats) => {
                self.log.info(format!(
                    "domain {id} ({name}) migrated to {target}: {} rounds, {} bytes sent{}, total {:.0} ms, downtime {:.1} ms; {}",
                    stats.rounds, stats.bytes,
                    if stats.disk_bytes > 0 {
                        format!(" ({} disk bytes, {} in the last round)", stats.disk_bytes, stats.last_round_disk_bytes)
                    } else {
                        String::new()
                    },
                    stats.total_ms, stats.downtime_ms,
                    stop_copy_line(&stats)
                ));
                self.finish_gone(id, &rec);
                Ok((name, stats))
            }
            Err(e) => {
                self.set_busy(id, None);
                self.log.error(format!(
                    "domain {id} ({name}): migration to {target} failed: {e}"
                ));
                Err(e)
            }
        }
    }

    fn migrate_inner(
        &self,
        id: u32,
        dir: &Path,
        record: ConfigRecord,
        rec: &crate::record::DomainRecord,
        opts: &MigrateOptions,
    ) -> Result<TransferStats, DaemonError> {
        let reservation = Reservation {
            name: rec.name.clone(),
            memory_mib: crate::record::ram_mib(&rec.config),
            vcpus: rec.config.vcpus,
            config: rec.config.clone(),
            config_path: record.config_path.clone(),
            paused: opts.paused,
            runtime: RuntimeSettings {
                mem_target_mib: rec.mem_target_mib,
                mem_max_mib: rec.mem_max_mib,
                online_vcpus: rec.online_vcpus,
            },
            copy_storage: if opts.copy_storage {
                Some(super::storage::describe_disks(&rec.config).map_err(transfer_err)?)
            } else {
                None
            },
        };
        let channel: OwnedFd = match &opts.channel {
            Some(fd) => fd.try_clone().map_err(transfer_err)?,
            None => {
                let key_path = opts
                    .key_file
                    .clone()
                    .map(PathBuf::from)
                    .or_else(|| self.relocation_key_file())
                    .ok_or_else(|| {
                        DaemonError::Config(
                            "no relocation key: pass --key FILE or set relocation.key-file in rxend's config".into(),
                        )
                    })?;
                let key = handshake::read_key(&key_path).map_err(transfer_err)?;
                let sock = handshake::connect(
                    &opts.host,
                    (opts.host.as_str(), opts.port),
                    Duration::from_secs(10),
                )
                .map_err(transfer_err)?;
                handshake::client_handshake(&sock, &key, &reservation).map_err(transfer_err)?;
                let _ = sock.set_nodelay(true);
                OwnedFd::from(sock)
            }
        };
        if opts.channel.is_some() {
            handshake::ssh_sender_handshake(&channel, &reservation).map_err(transfer_err)?;
        }
        self.log.info(
            format!(
                "domain {id} ({}): sending to {} ({} MiB, {})",
                rec.name,
                if opts.channel.is_some() {
                    "ssh"
                } else {
                    &opts.host
                },
                rec.config.memory_mib,
                if opts.live { "live" } else { "non-live" }
            ) + if opts.copy_storage {
                ", with its disks"
            } else {
                ""
            },
        );
        let req = if opts.copy_storage {
            VmRequest::MigrateSendStorage {
                config: record,
                live: opts.live,
                max_rounds: opts.max_rounds,
                downtime_ms: opts.downtime_ms,
            }
        } else {
            VmRequest::MigrateSend {
                config: record,
                live: opts.live,
                max_rounds: opts.max_rounds,
                downtime_ms: opts.downtime_ms,
            }
        };
        let resp = vmm::request_long(dir, &req, Some(&channel), TRANSFER_TIMEOUT)?;
        drop(channel);
        match resp {
            VmResponse::Transferred(s) => Ok(s),
            VmResponse::Error { message } => Err(transfer_err(message)),
            other => Err(transfer_err(format!("unexpected answer {other:?}"))),
        }
    }

    /// Checks a reservation: name free, memory and vCPUs available, disks openable.
    pub fn reserve(&self, r: &Reservation) -> Result<DomainConfig, String> {
        let config = r.config.clone();
        xlcfg::check_config(&config)
            .map_err(|e| format!("the domain's config is unusable here: {e}"))?;
        if config.name != r.name
            || crate::record::ram_mib(&config) != r.memory_mib
            || config.vcpus != r.vcpus
        {
            return Err("the reservation does not match the domain's config".into());
        }
        r.runtime
            .check(&config)
            .map_err(|e| format!("the domain's runtime settings are unusable here: {e}"))?;
        crate::daemon::check_name(&r.name).map_err(|e| e.to_string())?;
        if self.name_in_use(&r.name) {
            return Err(format!("domain name \"{}\" is already in use here", r.name));
        }
        let pool = self.config_pool(&config).map_err(|e| format!("{e} here"))?;
        if pool.cpus.is_empty() {
            return Err(format!("cpupool '{}' has no CPUs here", pool.name));
        }
        let free_mib = crate::hostinfo::memory().free_kib / 1024;
        if r.memory_mib > free_mib {
            return Err(format!(
                "not enough memory: the domain needs {} MiB, {free_mib} MiB are available",
                r.memory_mib
            ));
        }
        let cpus = crate::hostinfo::nr_cpus();
        if r.vcpus == 0 || r.vcpus > 255 {
            return Err(format!("{} vCPUs cannot run here (1..=255)", r.vcpus));
        }
        if r.vcpus > cpus.saturating_mul(8) {
            return Err(format!(
                "{} vCPUs is over 8 per host CPU ({cpus} CPUs here)",
                r.vcpus
            ));
        }
        // A storage migration's disks are made here once the reservation holds.
        let shared = r.copy_storage.is_none();
        for d in config.disks.iter().filter(|_| shared) {
            let Some(target) = d.target.as_deref().filter(|t| !t.is_empty()) else {
                continue;
            };
            let write = !matches!(d.access, xlcfg::DiskAccess::ReadOnly) && !d.is_cdrom;
            fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open(target)
                .map_err(|e| format!("disk {} ({target}) cannot be opened here: {e}", d.vdev))?;
        }
        Ok(config)
    }

    /// Starts a receiving VMM for a reserved domain on the connection `channel`.
    pub fn receive(
        &self,
        config: DomainConfig,
        r: &Reservation,
        channel: OwnedFd,
        from: &str,
    ) -> Result<Created, DaemonError> {
        let vifs = config.vifs.len();
        let created =
            self.start_from(config, r.config_path.clone(), r.paused, None, Some(channel))?;
        self.update_record(created.domid, |rec| {
            rec.mem_target_mib = r.runtime.mem_target_mib;
            rec.mem_max_mib = r.runtime.mem_max_mib;
            rec.online_vcpus = r.runtime.online_vcpus;
        })?;
        // The VMM announces each NIC's MAC (a RARP broadcast into its TAP, as
        // QEMU does) once the guest runs, so that bridges learn the new port.
        self.log.info(format!(
            "domain {} ({}) received from {from}; it runs here now{}",
            created.domid,
            created.name,
            if vifs > 0 {
                format!(" and its {vifs} NIC(s) announced their MACs")
            } else {
                String::new()
            }
        ));
        Ok(created)
    }
}

/// The stop-and-copy breakdown of a save or migration for rxend's log line.
fn stop_copy_line(stats: &TransferStats) -> String {
    match &stats.stop_copy {
        Some(p) => format!(
            "downtime {:.1} ms: {}, not broken down {} us",
            stats.downtime_ms,
            p.summary(),
            ((stats.downtime_ms * 1000.0) as u64).saturating_sub(p.accounted_us())
        ),
        None => "the VMM gave no stop-and-copy breakdown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_carries_the_breakdown_and_old_vmms_still_parse() {
        // A VMM from before the breakdown answers without `stop_copy`.
        let old = r#"{"rounds":1,"bytes":10,"pages":1,"zero_pages":0,"last_round_pages":1,"total_ms":2.0,"downtime_ms":1.5}"#;
        let s: TransferStats = serde_json::from_str(old).expect("old stats");
        assert_eq!(s.stop_copy, None);
        assert_eq!(
            stop_copy_line(&s),
            "the VMM gave no stop-and-copy breakdown"
        );
        let s = TransferStats {
            downtime_ms: 1.5,
            stop_copy: Some(rxen_proto::vmctl::StopCopyBreakdown {
                vcpu_pause_us: 100,
                page_list_us: Some(50),
                state_capture_us: 300,
                last_round_bytes: 4096,
                last_round_wire_us: 700,
                file_sync_us: Some(20),
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = serde_json::to_string(&s).expect("json");
        assert_eq!(
            serde_json::from_str::<TransferStats>(&json).expect("back"),
            s
        );
        assert_eq!(
            stop_copy_line(&s),
            "downtime 1.5 ms: vCPU pause 100 us, device freeze 0 us, page list 50 us, \
             state capture 300 us, last round on the wire 700 us, file sync 20 us, \
             last round 4096 bytes, not broken down 330 us"
        );
    }

    #[test]
    fn progress_is_none_when_empty_or_torn() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("transfer.json");
        assert_eq!(read_progress(&path), None);
        fs::write(&path, b"").expect("write");
        assert_eq!(read_progress(&path), None);
        let p = rxen_proto::vmctl::TransferProgress {
            round: 2,
            ram_pages: 10,
            ..Default::default()
        };
        let json = serde_json::to_vec(&p).expect("json");
        // A shorter record over a longer one, caught before the truncation.
        let mut torn = json.clone();
        torn.extend_from_slice(b"0,\"paused\":false}");
        fs::write(&path, &torn).expect("write");
        assert_eq!(read_progress(&path), None);
        fs::write(&path, &json).expect("write");
        assert_eq!(read_progress(&path), Some(p));
    }
}

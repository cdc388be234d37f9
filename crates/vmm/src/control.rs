//! The control protocol (`rxen_proto::vmctl`) on `control.sock`: line
//! framing, request decoding and dispatch to a [`ControlTarget`].

use std::os::fd::OwnedFd;
use std::path::Path;

use rxen_proto::jsonline::MAX_LINE;
use rxen_proto::stream::ConfigRecord;
use rxen_proto::vmctl::{AfterSave, DirtyDisk, TransferStats, VmRequest, VmResponse, VmStats};
use rxen_proto::vmspec::{DiskDevice, NicDevice};

/// Errors a control operation reports back to the client.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The operation failed.
    #[error("{0}")]
    Failed(String),
    /// The request line was too long.
    #[error("request longer than {MAX_LINE} bytes")]
    TooLong,
}

/// What the control socket can ask of the VM.
pub trait ControlTarget {
    /// Stops every vCPU; returns once none is in the guest.
    fn pause(&mut self) -> Result<(), ControlError>;
    /// Lets the vCPUs run again.
    fn unpause(&mut self) -> Result<(), ControlError>;
    /// Asks the guest to power off.
    fn shutdown(&mut self) -> Result<(), ControlError>;
    /// Asks the guest to reboot.
    fn reboot(&mut self) -> Result<(), ControlError>;
    /// Ends the VM now (the caller then writes the exit record and exits).
    fn destroy(&mut self) -> Result<(), ControlError>;
    /// Current counters.
    fn stats(&mut self) -> Result<VmStats, ControlError>;
    /// Asks the guest to have its first `online` vCPUs online.
    fn set_vcpus(&mut self, _online: u32) -> Result<(), ControlError> {
        Err(ControlError::Failed("vCPU hotplug is not supported".into()))
    }
    /// Sets the balloon so that the guest keeps `target_mib` MiB.
    fn set_balloon(&mut self, _target_mib: u64) -> Result<(), ControlError> {
        Err(ControlError::Failed("ballooning is not supported".into()))
    }
    /// Writes the save stream to `file` (rxend's, named `path` once done),
    /// then exits, resumes or stays paused.
    fn save(
        &mut self,
        _file: Option<OwnedFd>,
        _path: &Path,
        _config: &ConfigRecord,
        _then: AfterSave,
    ) -> Result<TransferStats, ControlError> {
        Err(ControlError::Failed("save is not supported".into()))
    }
    /// Ends a domain that a `save` held, as saved to `path` (`committed`), or
    /// lets it go on as before the save.
    fn save_finish(&mut self, _path: &Path, _committed: bool) -> Result<(), ControlError> {
        Err(ControlError::Failed("save is not supported".into()))
    }
    /// Sends the domain over `sock`; on success the VMM must exit.
    fn migrate(
        &mut self,
        _sock: Option<OwnedFd>,
        _config: &ConfigRecord,
        _live: bool,
        _max_rounds: u32,
        _downtime_ms: u64,
        _copy_storage: bool,
    ) -> Result<TransferStats, ControlError> {
        Err(ControlError::Failed("migration is not supported".into()))
    }
    /// Writes an ELF core of the guest to `file` (rxend's, named `path` once done); returns
    /// its size in bytes.
    fn dump_core(&mut self, _file: Option<OwnedFd>, _path: &Path) -> Result<u64, ControlError> {
        Err(ControlError::Failed("dump-core is not supported".into()))
    }
    /// Puts the medium `file` in the cdrom drive `devid`; returns its capacity in sectors.
    fn change_media(&mut self, _devid: u32, _file: Option<OwnedFd>) -> Result<u64, ControlError> {
        Err(ControlError::Failed(
            "media changes are not supported".into(),
        ))
    }
    /// Sends a BREAK and then `key` on the serial console (a magic SysRq).
    fn sysrq(&mut self, _key: u8) -> Result<(), ControlError> {
        Err(ControlError::Failed("sysrq is not supported".into()))
    }

    /// Injects an NMI into vCPU `vcpu`.
    fn nmi(&mut self, _vcpu: u32) -> Result<(), ControlError> {
        Err(ControlError::Failed("nmi is not supported".into()))
    }
    /// Hot-plugs a disk whose image rxend opened (`file`), with the backing files of a qcow2
    /// image's chain (`backing`: the path the chain names, and the file rxend opened).
    fn attach_disk(
        &mut self,
        _disk: &DiskDevice,
        _file: Option<OwnedFd>,
        _backing: Vec<(std::path::PathBuf, OwnedFd)>,
    ) -> Result<(), ControlError> {
        Err(ControlError::Failed(
            "device hotplug is not supported".into(),
        ))
    }
    /// Hot-plugs a NIC on the TAP queue rxend opened (`tap`).
    fn attach_nic(&mut self, _nic: &NicDevice, _tap: Option<OwnedFd>) -> Result<(), ControlError> {
        Err(ControlError::Failed(
            "device hotplug is not supported".into(),
        ))
    }
    /// Hot-unplugs the disk (`disk`) or NIC with device ID `devid`.
    fn detach(&mut self, _disk: bool, _devid: u32) -> Result<(), ControlError> {
        Err(ControlError::Failed(
            "device hotplug is not supported".into(),
        ))
    }
    /// Reads and clears every disk's dirty map (the domain must be paused).
    fn take_dirty(&mut self) -> Result<Vec<DirtyDisk>, ControlError> {
        Err(ControlError::Failed("dirty maps are not supported".into()))
    }
    /// Gives a disk's taken dirty map back.
    fn merge_dirty(&mut self, _disk: &DirtyDisk) -> Result<(), ControlError> {
        Err(ControlError::Failed("dirty maps are not supported".into()))
    }
}

/// The answer to one line, and whether the VMM must end after sending it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The response to send.
    pub response: VmResponse,
    /// True after a successful `destroy`.
    pub finish: bool,
}

fn error(message: impl std::fmt::Display) -> VmResponse {
    VmResponse::Error {
        message: message.to_string(),
    }
}

/// Decodes one request line and carries it out on `target`.
pub fn handle_line(line: &[u8], target: &mut impl ControlTarget) -> Reply {
    handle_line_with_fd(line, target, None)
}

/// Like [`handle_line`], with a file descriptor that came with the line (SCM_RIGHTS).
pub fn handle_line_with_fd(
    line: &[u8],
    target: &mut impl ControlTarget,
    fd: Option<OwnedFd>,
) -> Reply {
    handle_line_with_fds(line, target, &mut fd.into_iter().collect())
}

/// Like [`handle_line`], taking the descriptors the request carries from the front of `fds`
/// (those received on the connection, oldest first): one, or for a disk attached with
/// backing files one more per backing file.
pub fn handle_line_with_fds(
    line: &[u8],
    target: &mut impl ControlTarget,
    fds: &mut Vec<OwnedFd>,
) -> Reply {
    let request: VmRequest = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            return Reply {
                response: error(format!("malformed request: {e}")),
                finish: false,
            }
        }
    };
    let wanted = match &request {
        VmRequest::AttachDisk { backing, .. } => 1 + backing.len(),
        _ => 1,
    };
    let mut taken = fds.drain(..wanted.min(fds.len()));
    let fd = taken.next();
    let extra: Vec<OwnedFd> = taken.collect();
    if matches!(request, VmRequest::Stats | VmRequest::MergeDirty { .. }) {
        tracing::debug!(?request, "control request");
    } else {
        tracing::info!(?request, "control request");
    }
    let ok = |r: Result<(), ControlError>| match r {
        Ok(()) => VmResponse::Ok,
        Err(e) => error(e),
    };
    let mut finish = false;
    let response = match request {
        VmRequest::Pause => ok(target.pause()),
        VmRequest::Unpause => ok(target.unpause()),
        VmRequest::Shutdown => ok(target.shutdown()),
        VmRequest::Reboot => ok(target.reboot()),
        VmRequest::Destroy => {
            let r = target.destroy();
            finish = r.is_ok();
            ok(r)
        }
        VmRequest::Stats => match target.stats() {
            Ok(s) => VmResponse::Stats(s),
            Err(e) => error(e),
        },
        VmRequest::SetBalloon { target_mib } => ok(target.set_balloon(target_mib)),
        VmRequest::SetVcpus { online } => ok(target.set_vcpus(online)),
        VmRequest::Save { path, config, then } => match target.save(fd, &path, &config, then) {
            Ok(s) => {
                finish = then == AfterSave::Exit;
                VmResponse::Transferred(s)
            }
            Err(e) => error(e),
        },
        VmRequest::SaveFinish { path, committed } => {
            let r = target.save_finish(&path, committed);
            finish = r.is_ok() && committed;
            ok(r)
        }
        VmRequest::MigrateSend {
            config,
            live,
            max_rounds,
            downtime_ms,
        } => match target.migrate(fd, &config, live, max_rounds, downtime_ms, false) {
            Ok(s) => {
                finish = true;
                VmResponse::Transferred(s)
            }
            Err(e) => error(e),
        },
        VmRequest::MigrateSendStorage {
            config,
            live,
            max_rounds,
            downtime_ms,
        } => match target.migrate(fd, &config, live, max_rounds, downtime_ms, true) {
            Ok(s) => {
                finish = true;
                VmResponse::Transferred(s)
            }
            Err(e) => error(e),
        },
        VmRequest::DumpCore { path } => ok(target.dump_core(fd, &path).map(|_| ())),
        VmRequest::Sysrq { key } => ok(target.sysrq(key)),
        VmRequest::Nmi { vcpu } => ok(target.nmi(vcpu)),
        VmRequest::FenceDeadline { ms } => ok(crate::fence::arm(ms).map_err(ControlError::Failed)),
        VmRequest::ChangeMedia { devid } => ok(target.change_media(devid, fd).map(|_| ())),
        VmRequest::AttachDisk { disk, backing } => {
            if extra.len() == backing.len() {
                ok(target.attach_disk(&disk, fd, backing.into_iter().zip(extra).collect()))
            } else {
                error(format!(
                    "attach_disk names {} backing files but carries {} descriptors for them",
                    backing.len(),
                    extra.len()
                ))
            }
        }
        VmRequest::AttachNic { nic } => ok(target.attach_nic(&nic, fd)),
        VmRequest::DetachDisk { devid } => ok(target.detach(true, devid)),
        VmRequest::DetachNic { devid } => ok(target.detach(false, devid)),
        VmRequest::TakeDirty => match target.take_dirty() {
            Ok(disks) => VmResponse::Dirty { disks },
            Err(e) => error(e),
        },
        VmRequest::MergeDirty { disk } => ok(target.merge_dirty(&disk)),
    };
    Reply { response, finish }
}

/// Encodes a response as one JSON line.
pub fn encode(response: &VmResponse) -> Vec<u8> {
    let mut v = serde_json::to_vec(response).unwrap_or_else(|e| {
        format!("{{\"status\":\"error\",\"message\":\"cannot encode response: {e}\"}}").into_bytes()
    });
    v.push(b'\n');
    v
}

/// Accumulates bytes from a client and splits them into lines.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
}

impl LineBuffer {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next complete line (without its `\n`, trailing `\r` removed);
    /// `Err` when the pending partial line is over the limit (the buffer is then cleared).
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, ControlError> {
        match self.buf.iter().position(|&b| b == b'\n') {
            Some(pos) if pos <= MAX_LINE => {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Ok(Some(line))
            }
            Some(pos) => {
                self.buf.drain(..=pos);
                Err(ControlError::TooLong)
            }
            None if self.buf.len() > MAX_LINE => {
                self.buf.clear();
                Err(ControlError::TooLong)
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        calls: Vec<&'static str>,
    }

    impl ControlTarget for Fake {
        fn pause(&mut self) -> Result<(), ControlError> {
            self.calls.push("pause");
            Ok(())
        }
        fn unpause(&mut self) -> Result<(), ControlError> {
            self.calls.push("unpause");
            Err(ControlError::Failed("nope".into()))
        }
        fn shutdown(&mut self) -> Result<(), ControlError> {
            self.calls.push("shutdown");
            Ok(())
        }
        fn reboot(&mut self) -> Result<(), ControlError> {
            self.calls.push("reboot");
            Ok(())
        }
        fn destroy(&mut self) -> Result<(), ControlError> {
            self.calls.push("destroy");
            Ok(())
        }
        fn stats(&mut self) -> Result<VmStats, ControlError> {
            Ok(VmStats {
                paused: true,
                memory_mib: 1,
                vcpus: vec![],
                rss_kib: 2,
                disks: vec![],
                nics: vec![],
                balloon: None,
                online_mask: None,
            })
        }
    }

    #[test]
    fn requests_dispatch() {
        let mut f = Fake::default();
        assert_eq!(
            handle_line(br#"{"cmd":"pause"}"#, &mut f).response,
            VmResponse::Ok
        );
        let r = handle_line(br#"{"cmd":"unpause"}"#, &mut f);
        assert_eq!(
            r.response,
            VmResponse::Error {
                message: "nope".into()
            }
        );
        let r = handle_line(br#"{"cmd":"destroy"}"#, &mut f);
        assert!(r.finish);
        let r = handle_line(br#"{"cmd":"stats"}"#, &mut f);
        assert!(matches!(
            r.response,
            VmResponse::Stats(VmStats { paused: true, .. })
        ));
        assert_eq!(f.calls, vec!["pause", "unpause", "destroy"]);
    }

    #[test]
    fn garbage_gets_error() {
        let mut f = Fake::default();
        for bad in [
            &b"garbage"[..],
            b"{}",
            br#"{"cmd":"fly"}"#,
            b"\xff\xfe",
            b"",
        ] {
            let r = handle_line(bad, &mut f);
            assert!(matches!(r.response, VmResponse::Error { .. }));
            assert!(!r.finish);
        }
        assert!(f.calls.is_empty());
        let text = String::from_utf8(encode(&handle_line(b"x", &mut f).response)).expect("utf8");
        assert!(text.starts_with("{\"status\":\"error\""));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn line_buffer_splits_and_limits() {
        let mut b = LineBuffer::default();
        b.push(b"{\"cmd\":\"st");
        assert_eq!(b.next_line().expect("ok"), None);
        b.push(b"ats\"}\r\nnext\n");
        assert_eq!(
            b.next_line().expect("ok"),
            Some(b"{\"cmd\":\"stats\"}".to_vec())
        );
        assert_eq!(b.next_line().expect("ok"), Some(b"next".to_vec()));
        assert_eq!(b.next_line().expect("ok"), None);
        b.push(&vec![b'a'; MAX_LINE + 1]);
        assert!(b.next_line().is_err());
        assert_eq!(b.next_line().expect("ok"), None);
    }
}

//! Writing the stream: the config and the VM's shape, pre-copy rounds while
//! the guest runs (KVM's dirty log and the VMM's bitmap), the pause, the last pages, then
//! vCPU, VM and device state. A save writes it to a file; a migration to the
//! target VMM's connection, with the handshake of [`super::channel`].

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use rxen_proto::stream::{self as pstream, ConfigRecord, Header, RecordType, StreamWriter};
use rxen_proto::vmctl::{AfterSave, StopCopyBreakdown, TransferStats};
use rxen_proto::vmspec::ExitReason;

use super::channel::{self, read_line, set_timeout, target_timings};
use super::memory::{self as pages, merge_sorted, DirtyLog, PageSender};
use super::storage::StorageSender;
use super::TransferError;
use crate::memory;
use crate::micros;
use crate::vm::Vm;

/// What [`Vm::send_stream`] leaves behind once the stream is written: the guest is paused.
pub struct Sent<W> {
    /// The writer, flushed.
    pub writer: W,
    /// The figures so far.
    pub stats: TransferStats,
    /// When the guest was paused for the last round.
    pub paused_at: Instant,
    /// The same moment in microseconds since the Unix epoch (a target reports its resume so).
    pub paused_unix_us: u64,
    /// Whether the guest was paused before the transfer began.
    pub was_paused: bool,
    /// When the transfer began.
    pub started: Instant,
    /// A storage migration's dirty maps, to give back if the target fails after all.
    pub storage: Option<StorageSender>,
}

/// How to send the stream.
pub struct SendOptions<'a> {
    /// The config record.
    pub config: &'a ConfigRecord,
    /// Pre-copy while the guest runs.
    pub live: bool,
    /// Most pre-copy rounds.
    pub max_rounds: u32,
    /// Downtime target in milliseconds.
    pub downtime_ms: u64,
    /// A migration's connection: the guest is paused only once the target
    /// says `ready` on it (its VM is built), so that the downtime does not
    /// include the target's start-up.
    pub wait_ready: Option<&'a File>,
    /// Copy the disks in the stream too (a storage migration, see [`super::storage`]).
    pub copy_storage: bool,
}

/// Fewer dirty pages than this go straight to stop-and-copy (Xen's threshold).
const DIRTY_THRESHOLD: usize = 50;

impl Vm {
    /// Writes the whole stream to `out`. Live: pre-copy rounds with dirty
    /// logging while the guest runs, then pause and the last pages; else pause
    /// first and send every page once. Returns with the guest paused; on an
    /// error the guest runs again as before.
    pub fn send_stream<W: Write>(
        &mut self,
        out: W,
        opts: &SendOptions<'_>,
    ) -> Result<Sent<W>, TransferError> {
        let started = Instant::now();
        let was_paused = self.is_paused();
        let mut storage = None;
        let sent = self.send_inner(out, opts, was_paused, &mut storage);
        if sent.is_err() {
            if let Some(s) = storage.take() {
                s.give_back();
            }
        }
        match sent {
            Ok((writer, stats, (paused_at, paused_unix_us))) => Ok(Sent {
                writer,
                stats,
                paused_at,
                paused_unix_us,
                was_paused,
                started,
                storage,
            }),
            Err(e) => {
                self.resume_after_transfer(was_paused);
                Err(e)
            }
        }
    }

    fn send_inner<W: Write>(
        &mut self,
        out: W,
        opts: &SendOptions<'_>,
        was_paused: bool,
        storage: &mut Option<StorageSender>,
    ) -> Result<(W, TransferStats, (Instant, u64)), TransferError> {
        // A live migration's target acknowledges each round, so that the guest is paused only
        // once the target has caught up with the stream (its backlog would be downtime).
        let acks = opts.wait_ready.filter(|_| opts.live && !was_paused);
        let header = match acks {
            Some(_) => Header::new(opts.live).with_round_acks(),
            None => Header::new(opts.live),
        };
        let mut ready_seen = false;
        let mut w = StreamWriter::new(out, header)?;
        w.record(RecordType::Config, &pstream::json_body(opts.config)?)?;
        w.record(RecordType::VmInfo, &pstream::json_body(&self.shape())?)?;
        let mut stats = TransferStats::default();
        let mut sender = PageSender::with_pagemap(self.pagemap());
        let mut meter = pages::ProgressFile::new(
            self.progress_file(),
            memory::ram_bytes(self.mem()) / pstream::PAGE_SIZE as u64,
        );
        let mut log = None;
        // Pages the last pre-copy round left dirty: collected (and so cleared in the log) but
        // not sent yet; they go in the stop-and-copy round.
        let mut pending = Vec::new();
        if opts.copy_storage {
            // Before the first memory round: from here every write is in a dirty map.
            let t = Instant::now();
            let s = storage.insert(StorageSender::start(self.slots())?);
            s.send_all(self.slots(), &mut w)?;
            tracing::info!(
                disk_mib = s.bytes >> 20,
                ms = t.elapsed().as_millis() as u64,
                "disks copied; their dirty blocks follow each round"
            );
        }
        if opts.live && !was_paused {
            let dirty = log.insert(DirtyLog::start(self.kvm(), self.mem())?);
            let mut pfns = pages::all_pfns(self.mem());
            let mut round = 1u32;
            loop {
                let t = Instant::now();
                let before = w.bytes;
                meter.round(round, pfns.len() as u64, false, w.bytes);
                sender.send(&mut w, self.mem(), &pfns, &mut stats, |n| meter.advance(n))?;
                if let Some(s) = storage.as_mut() {
                    s.send_dirty(self.slots(), &mut w)?;
                }
                w.record(RecordType::RoundEnd, &round.to_le_bytes())?;
                stats.rounds = round;
                if let Some(sock) = acks {
                    w.flush()?;
                    channel::expect_applied(sock, round, &mut ready_seen)?;
                }
                let rate = (w.bytes - before) as f64 / t.elapsed().as_secs_f64().max(1e-6);
                let sent_pages = pfns.len();
                pfns = dirty.collect(self.kvm(), self.mem())?;
                let estimate_ms = pfns.len() as f64 * pstream::PAGE_SIZE as f64 / rate * 1000.0;
                tracing::info!(
                    round,
                    sent_mib = (w.bytes - before) >> 20,
                    dirty = pfns.len(),
                    estimate_ms,
                    "pre-copy round done"
                );
                // Within the downtime target, another round is still worth it while it
                // halves the dirty set: the pause then sends less (the target is only a bound).
                let converging = pfns.len() * 2 <= sent_pages;
                if pfns.len() < DIRTY_THRESHOLD
                    || (estimate_ms <= opts.downtime_ms as f64 && !converging)
                    || round >= opts.max_rounds
                {
                    pending = std::mem::take(&mut pfns);
                    break;
                }
                round += 1;
            }
        }
        if let Some(sock) = opts.wait_ready.filter(|_| !ready_seen) {
            // Let the target take what was sent while it finishes building its VM.
            w.flush()?;
            channel::expect(sock, channel::READY)?;
        }
        if opts.live && !was_paused {
            // Each disk's state is saved with a flush inside the pause; what the guest wrote
            // so far is made durable now, while it runs, so that that flush has only the last
            // moments' writes left (a disk of 64 MiB written just before: 40 ms of downtime).
            self.slots().flush_disks();
        }
        // The downtime starts with the pause request: the first vCPU stops
        // as soon as it is kicked.
        let paused_at = Instant::now();
        let paused_unix_us = crate::unix_micros();
        let mut phases = StopCopyBreakdown::default();
        // Each vCPU settles (finishes the port I/O it was in) on its own thread as it parks,
        // then reads its state there while this thread sends the last pages.
        let vcpu_states = self.capture_vcpus_at_park()?;
        self.pause_all()
            .map_err(|e| TransferError::Peer(e.to_string()))?;
        phases.vcpu_pause_us = micros(paused_at.elapsed());
        // From here no device writes guest memory: the last pages and the
        // queues' progress describe the same moment.
        let t = Instant::now();
        self.slots().freeze_all();
        phases.device_freeze_us = micros(t.elapsed());
        let last = match log.as_ref() {
            Some(d) => {
                // What the last pre-copy round left dirty, and what the guest wrote since.
                let t = Instant::now();
                let logged = merge_sorted(
                    std::mem::take(&mut pending),
                    d.collect(self.kvm(), self.mem())?,
                );
                phases.dirty_sync_us = Some(micros(t.elapsed()));
                logged
            }
            _ => {
                let t = Instant::now();
                let all = pages::all_pfns(self.mem());
                phases.page_list_us = Some(micros(t.elapsed()));
                all
            }
        };
        stats.last_round_pages = last.len() as u64;
        let last_from = w.bytes;
        meter.round(stats.rounds + 1, last.len() as u64, true, w.bytes);
        let t = Instant::now();
        sender.send(&mut w, self.mem(), &last, &mut stats, |n| meter.advance(n))?;
        let mut wire = t.elapsed();
        stats.rounds += 1;
        if let Some(s) = storage.as_mut() {
            // Devices are frozen: no request is in flight, the maps are final.
            let t = Instant::now();
            stats.last_round_disk_bytes = s.send_dirty(self.slots(), &mut w)?;
            phases.disk_last_round_us = Some(micros(t.elapsed()));
            stats.disk_bytes = s.bytes;
        }
        let t = Instant::now();
        let vcpus = vcpu_states
            .collect()?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let vm = super::vcpu_state::capture_vm(&self.kvm().fd)?;
        let devices = self
            .device_records()
            .iter()
            .map(pstream::json_body)
            .collect::<Result<Vec<_>, _>>()?;
        phases.state_capture_us = micros(t.elapsed());
        let t = Instant::now();
        for body in vcpus {
            w.record(RecordType::Vcpu, &body)?;
        }
        w.record(RecordType::VmState, &vm)?;
        for body in devices {
            w.record(RecordType::Device, &body)?;
        }
        w.record(RecordType::End, &[])?;
        w.flush()?;
        wire += t.elapsed();
        phases.last_round_wire_us = micros(wire);
        phases.last_round_bytes = w.bytes - last_from;
        stats.bytes = w.bytes;
        stats.stop_copy = Some(phases);
        Ok((w.into_inner(), stats, (paused_at, paused_unix_us)))
    }

    /// Saves the domain to `file`, then exits, resumes or stays paused. rxend
    /// made `file` (an unnamed file beside `path`, which names it in messages)
    /// and gives it `path`'s name once this succeeded: a failed or interrupted
    /// save leaves whatever was there untouched.
    pub fn save_to(
        &mut self,
        file: File,
        path: &Path,
        config: &ConfigRecord,
        then: AfterSave,
    ) -> Result<TransferStats, TransferError> {
        let sync = file
            .try_clone()
            .map_err(|e| TransferError::Peer(format!("cannot write {}: {e}", path.display())))?;
        let opts = SendOptions {
            config,
            live: false,
            max_rounds: 1,
            downtime_ms: 0,
            wait_ready: None,
            copy_storage: false,
        };
        let sent = self.send_stream(BufWriter::with_capacity(1 << 20, file), &opts)?;
        let t = Instant::now();
        let flushed = sent
            .writer
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|_| sync.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", path.display()));
        let file_sync_us = micros(t.elapsed());
        if let Err(e) = flushed {
            self.resume_after_transfer(sent.was_paused);
            return Err(TransferError::Peer(e));
        }
        let mut stats = sent.stats;
        if let Some(p) = &mut stats.stop_copy {
            p.file_sync_us = Some(file_sync_us);
        }
        match then {
            AfterSave::Exit => self
                .exit()
                .request(ExitReason::Saved, format!("saved to {}", path.display())),
            AfterSave::Resume => self.resume_after_transfer(sent.was_paused),
            AfterSave::Pause => self.slots().thaw_all(),
            AfterSave::Hold => self.hold_save(sent.was_paused),
        }
        stats.downtime_ms = sent.paused_at.elapsed().as_secs_f64() * 1000.0;
        stats.total_ms = sent.started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            ?stats,
            file = %path.display(),
            stop_copy = %stats.stop_copy.map(|p| p.summary()).unwrap_or_default(),
            "domain saved"
        );
        Ok(stats)
    }

    /// Sends the domain over `sock` to a receiving VMM. Exits once the target
    /// says it runs the guest; any failure before the target is cleared to
    /// resume leaves the guest running here as it was.
    pub fn migrate_to(
        &mut self,
        sock: OwnedFd,
        opts: &SendOptions<'_>,
    ) -> Result<TransferStats, TransferError> {
        let sock = File::from(sock);
        set_timeout(&sock, Some(Duration::from_secs(60)));
        let opts = SendOptions {
            wait_ready: Some(&sock),
            ..*opts
        };
        let mut sent = self.send_stream(BufWriter::with_capacity(1 << 20, &sock), &opts)?;
        // Dropped once the target runs the guest: freeing its buffer unmaps it, which would
        // take this CPU from the target's restore on a small host.
        let writer = sent.writer;
        let storage = std::cell::Cell::new(sent.storage.take());
        // The target takes the disks' locks once the stream is in.
        self.slots().release_disk_locks();
        let resume_here = |vm: &Self, e: TransferError| {
            if let Err(lock) = vm.slots().take_disk_locks(Duration::from_secs(5)) {
                tracing::error!("resuming after a failed migration: {lock}");
            }
            if let Some(s) = storage.take() {
                s.give_back();
            }
            vm.resume_after_transfer(sent.was_paused);
            tracing::warn!("migration failed, domain resumed here: {e}");
            e
        };
        if let Err(e) = channel::expect(&sock, channel::RECEIVED) {
            return Err(resume_here(self, e));
        }
        if let Err(e) = channel::say(&sock, channel::GO) {
            return Err(resume_here(
                self,
                TransferError::Peer(format!("the target went away: {e}")),
            ));
        }
        let go_at = Instant::now();
        // From here on the target owns the domain: never resume it here.
        // Not polled: the target's new vCPU threads need this CPU more than this wait does.
        match read_line(&sock) {
            Ok(l) if l == channel::RESUMED => {}
            other => {
                tracing::error!(
                    "the target did not confirm that the domain runs ({other:?}); it stays paused here"
                );
                return Err(TransferError::Peer(
                    "the target did not confirm that the domain runs there; the domain stays paused here".into(),
                ));
            }
        }
        let confirmed_at = Instant::now();
        drop(writer);
        let mut stats = sent.stats;
        stats.total_ms = sent.started.elapsed().as_secs_f64() * 1000.0;
        self.exit()
            .request(ExitReason::Migrated, "migrated to another host");
        // The guest runs there: its side of the downtime, if it says (a target from before
        // the breakdown closes the connection instead).
        set_timeout(&sock, Some(Duration::from_secs(2)));
        let timings = match read_line(&sock).map(|l| target_timings(&l)) {
            Ok(Some(t)) => Some(t),
            Ok(None) => {
                tracing::warn!("the target's timings line is garbled");
                None
            }
            Err(e) => {
                tracing::info!("the target reported no timings: {e}");
                None
            }
        };
        if let (Some(t), Some(p)) = (&timings, &mut stats.stop_copy) {
            p.target_restore_us = Some(t.restore_us);
            p.target_resume_us = Some(t.resume_us);
        }
        let down_us = downtime_us(
            micros(go_at - sent.paused_at),
            micros(confirmed_at - sent.paused_at),
            timings
                .and_then(|t| t.running_at_unix_us)
                .and_then(|r| r.checked_sub(sent.paused_unix_us)),
        );
        stats.downtime_ms = down_us as f64 / 1000.0;
        tracing::info!(
            ?stats,
            stop_copy = %stats.stop_copy.map(|p| p.summary()).unwrap_or_default(),
            "domain migrated"
        );
        Ok(stats)
    }
}

/// A migration's downtime in microseconds: from the pause to the guest's run on the target as
/// the target reports it (`reported`, by its clock), kept between what the source saw itself:
/// the guest cannot run there before the source said "go" (`go`), and ran by the time the
/// source read "resumed" (`confirmed`). Without a report, `confirmed`.
fn downtime_us(go: u64, confirmed: u64, reported: Option<u64>) -> u64 {
    reported.map_or(confirmed, |r| r.clamp(go, confirmed.max(go)))
}

#[cfg(test)]
mod tests {
    use super::downtime_us;

    #[test]
    fn the_target_s_report_is_bounded_by_what_the_source_saw() {
        assert_eq!(downtime_us(700, 1000, Some(800)), 800);
        assert_eq!(downtime_us(700, 1000, None), 1000);
        // A target clock behind or ahead of the source's cannot move it outside the bounds.
        assert_eq!(downtime_us(700, 1000, Some(10)), 700);
        assert_eq!(downtime_us(700, 1000, Some(50_000)), 1000);
        assert_eq!(downtime_us(700, 600, Some(650)), 700);
    }
}

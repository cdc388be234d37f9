//! The receiving side: reads a whole save file or migration stream into
//! guest memory and checks every record (vCPUs, VM state, devices) before
//! anything runs.

use std::io::Read;

use rxen_proto::stream::{
    self, decode_pages, RecordType, StreamError, StreamReader, VmInfo, PAGE_SIZE, ZERO_PAGE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::devices::DeviceRecord;
use super::regcheck::CpuLimits;
use super::storage::DiskSink;
use super::vcpu_state::{self as snapshot, VcpuState, VmState};
use super::TransferError;
use crate::memory::{self, GuestMemory};

/// Everything a stream carried besides memory, checked and ready to apply.
pub struct Received {
    /// The VM's shape and kernel kind.
    pub info: VmInfo,
    /// One state per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// Interrupt controllers, PIT, clock.
    pub vm: VmState,
    /// Device states.
    pub devices: Vec<DeviceRecord>,
    /// Stream bytes read.
    pub bytes: u64,
}

/// The kernel kinds a stream may name (`VmInfo::kernel`).
pub const KERNEL_KINDS: [&str; 2] = ["testguest", "linux"];

/// Where a stream comes from: a save file ends with its end record; a migration connection
/// stays open after it (the target answers on it).
#[derive(Debug, Clone, Copy)]
pub enum StreamSource<'a> {
    /// A save file: nothing may follow the end record.
    File,
    /// A migration connection; the socket is where the target says `applied N` after each
    /// round when the source asks for it ([`stream::FLAG_ROUND_ACKS`]).
    Connection(Option<&'a std::fs::File>),
}

/// Reads a whole stream into `mem` and returns the rest of the state. The
/// stream must describe a VM of `memory_mib` MiB with `vcpus` vCPUs whose
/// registers keep to `cpu` (the limits of the vCPUs built for it). Nothing
/// runs until the caller applies the result, so any error here leaves no guest running.
/// A storage migration's disk blocks go to `disks` (flushed at the end of the stream); a
/// stream that carries some where no sink is given (a save file) is refused.
pub fn receive<R: Read>(
    input: R,
    mem: &GuestMemory,
    memory_mib: u64,
    vcpus: u32,
    cpu: &CpuLimits,
    source: StreamSource<'_>,
    disks: Option<&dyn DiskSink>,
) -> Result<Received, TransferError> {
    let mut r = StreamReader::new(input)?;
    // The source waits for this side to have applied each round before the next step.
    let acks = match source {
        StreamSource::Connection(sock) if r.header.round_acks() => Some(sock.ok_or_else(|| {
            TransferError::Mismatch(
                "the stream asks for round acknowledgements, which only a migration's \
                 connection carries"
                    .into(),
            )
        })?),
        StreamSource::File if r.header.round_acks() => {
            return Err(TransferError::Mismatch(
                "the save file's header asks for round acknowledgements (corrupt or not a \
                 save file)"
                    .into(),
            ))
        }
        _ => None,
    };
    // The daemon took what it needs from the config record (or was given
    // another config); here it must at least be one.
    let config: stream::ConfigRecord = stream::from_json("config", &r.expect(RecordType::Config)?)?;
    if !config.config.is_object() {
        return Err(StreamError::Malformed {
            what: "config",
            why: "the domain config is not a JSON object".into(),
        }
        .into());
    }
    let info: VmInfo = stream::from_json("vm info", &r.expect(RecordType::VmInfo)?)?;
    if !KERNEL_KINDS.contains(&info.kernel.as_str()) {
        return Err(TransferError::Mismatch(format!(
            "the stream holds a kernel of kind \"{}\", which this VMM does not know",
            info.kernel.escape_debug()
        )));
    }
    if info.memory_mib != memory_mib || info.vcpus != vcpus {
        return Err(TransferError::Mismatch(format!(
            "the stream holds a domain of {} MiB with {} vCPUs, not {memory_mib} MiB with {vcpus}",
            info.memory_mib, info.vcpus
        )));
    }
    let ram_end = memory::ram_end(mem);
    let mut states: Vec<Option<VcpuState>> = (0..vcpus).map(|_| None).collect();
    let mut vm = None;
    let mut devices = Vec::new();
    let mut page = vec![0u8; PAGE_SIZE];
    // Pages this stream has written: any other page is still fresh (zero), so
    // a zero page there needs no work, and reading it would fault it in.
    let mut written = vec![0u64; (ram_end >> stream::PAGE_SHIFT).div_ceil(64) as usize];
    // Disk blocks written since the disks were last flushed: each round's are flushed at its
    // end, while the guest still runs on the source, so that the end record's flush (inside
    // the downtime) has only the last round's to write back.
    let mut unflushed_blocks = 0u64;
    loop {
        let rec = r.next_record()?;
        match rec.kind {
            RecordType::Pages => {
                let batch = decode_pages(&rec.body)?;
                let mut data = batch.data.chunks_exact(PAGE_SIZE);
                for e in batch.entries {
                    let addr = (e & !ZERO_PAGE) << stream::PAGE_SHIFT;
                    let in_ram = addr < ram_end
                        && mem.address_in_range(GuestAddress(addr))
                        && mem.address_in_range(GuestAddress(addr + PAGE_SIZE as u64 - 1));
                    if !in_ram {
                        return Err(TransferError::Mismatch(format!(
                            "the stream has a page at {addr:#x}, outside the guest's memory"
                        )));
                    }
                    let mem_err = |e: vm_memory::GuestMemoryError| TransferError::Memory {
                        addr,
                        why: e.to_string(),
                    };
                    let pfn = (addr >> stream::PAGE_SHIFT) as usize;
                    let (word, bit) = (pfn / 64, 1u64 << (pfn % 64));
                    let seen = written.get(word).is_some_and(|w| w & bit != 0);
                    if e & ZERO_PAGE != 0 {
                        // Only a page this stream filled before needs clearing.
                        if seen {
                            page.fill(0);
                            mem.write_slice(&page, GuestAddress(addr))
                                .map_err(mem_err)?;
                        }
                    } else {
                        if let Some(w) = written.get_mut(word) {
                            *w |= bit;
                        }
                        let d = data.next().ok_or_else(|| {
                            TransferError::Peer("page batch shorter than its table".into())
                        })?;
                        mem.write_slice(d, GuestAddress(addr)).map_err(mem_err)?;
                    }
                }
            }
            RecordType::Vcpu => {
                let st = snapshot::decode_vcpu(&rec.body, cpu)?;
                let slot = states.get_mut(st.id as usize).ok_or_else(|| {
                    TransferError::Mismatch(format!(
                        "the stream holds state for vCPU {}, but the domain has vCPUs 0 to {}",
                        st.id,
                        vcpus.saturating_sub(1)
                    ))
                })?;
                if slot.is_some() {
                    return Err(TransferError::Mismatch(format!(
                        "the stream holds vCPU {} twice",
                        st.id
                    )));
                }
                *slot = Some(st);
            }
            RecordType::VmState => vm = Some(snapshot::decode_vm(&rec.body)?),
            RecordType::Device => devices.push(stream::from_json("device", &rec.body)?),
            RecordType::DiskBlocks => {
                let block = stream::decode_disk_block(&rec.body)?;
                let sink = disks.ok_or_else(|| {
                    TransferError::Mismatch(
                        "the stream carries disk blocks (a storage migration), which only a \
                         migration's target takes"
                            .into(),
                    )
                })?;
                sink.write_block(&block)?;
                unflushed_blocks += 1;
            }
            RecordType::End => {
                flush_written(disks, &mut unflushed_blocks)?;
                if matches!(source, StreamSource::File) {
                    let mut extra = [0u8; 1];
                    let n = r
                        .get_mut()
                        .read(&mut extra)
                        .map_err(|e| TransferError::Peer(format!("cannot read the file: {e}")))?;
                    if n != 0 {
                        return Err(TransferError::Mismatch(
                            "the save file goes on after its end record (corrupt or not a save file)"
                                .into(),
                        ));
                    }
                }
                break;
            }
            RecordType::RoundEnd => {
                flush_written(disks, &mut unflushed_blocks)?;
                if let Some(sock) = acks {
                    let round = rec
                        .body
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .map(u32::from_le_bytes)
                        .ok_or_else(|| StreamError::Malformed {
                            what: "round end",
                            why: "no round number".into(),
                        })?;
                    super::channel::say(sock, &super::channel::applied(round)).map_err(|e| {
                        TransferError::Peer(format!("cannot answer the source: {e}"))
                    })?;
                }
            }
            RecordType::Config | RecordType::VmInfo => {
                return Err(StreamError::Unexpected(rec.kind.name()).into())
            }
        }
    }
    let mut out = Vec::with_capacity(states.len());
    for (i, s) in states.into_iter().enumerate() {
        out.push(s.ok_or_else(|| {
            TransferError::Mismatch(format!("the stream has no state for vCPU {i}"))
        })?);
    }
    let vm = vm.ok_or_else(|| TransferError::Mismatch("the stream has no VM state".into()))?;
    Ok(Received {
        info,
        vcpus: out,
        vm,
        devices,
        bytes: r.bytes,
    })
}

/// Flushes the disks if blocks were written to them since the last flush (`unflushed`,
/// counted back to 0).
fn flush_written(disks: Option<&dyn DiskSink>, unflushed: &mut u64) -> Result<(), TransferError> {
    if let (Some(sink), true) = (disks, *unflushed > 0) {
        sink.flush_all()?;
        *unflushed = 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rxen_proto::stream::{encode_pages, StreamWriter};

    /// A config record as rxend writes one (trimmed).
    const CONFIG: &[u8] =
        br#"{"config":{"name":"guest","memory_mib":8,"vcpus":1},"config_path":null}"#;
    use super::super::vcpu_state::testing::{break_one, limits, vm_body, Parts, BREAKS};
    use proptest::prelude::*;

    /// Record types as written on the wire.
    const CONF: u32 = RecordType::Config as u32;
    const INFO: u32 = RecordType::VmInfo as u32;
    const PAGES: u32 = RecordType::Pages as u32;
    const VCPU: u32 = RecordType::Vcpu as u32;
    const VMSTATE: u32 = RecordType::VmState as u32;
    const DEVICE: u32 = RecordType::Device as u32;
    const ROUND_END: u32 = RecordType::RoundEnd as u32;
    const END: u32 = RecordType::End as u32;

    fn info_body(memory_mib: u64, vcpus: u32, kernel: &str) -> Vec<u8> {
        stream::json_body(&VmInfo {
            memory_mib,
            vcpus,
            kernel: kernel.into(),
        })
        .expect("json")
    }

    /// The records of a whole, plausible stream of an 8 MiB guest with `vcpus` vCPUs.
    fn records(vcpus: u32) -> Vec<(u32, Vec<u8>)> {
        let mut out = vec![
            (CONF, CONFIG.to_vec()),
            (INFO, info_body(8, vcpus, "testguest")),
        ];
        let mut pages = Vec::new();
        encode_pages(&[0x10, 0x11 | ZERO_PAGE], &[0x5A; PAGE_SIZE], &mut pages);
        out.push((PAGES, pages));
        out.push((ROUND_END, Vec::new()));
        for id in 0..vcpus {
            out.push((VCPU, Parts::sample(id).encode()));
        }
        out.push((VMSTATE, vm_body()));
        let serial = serde_json::json!({"name": "serial", "state": {"divisor": [1, 0], "regs": [0, 1, 3, 0x60, 8, 0xB0, 0], "fifo": []}});
        let serial: DeviceRecord = serde_json::from_value(serial).expect("a serial record");
        out.push((DEVICE, stream::json_body(&serial).expect("json")));
        out.push((END, Vec::new()));
        out
    }

    /// The stream of `recs`, every checksum right.
    fn write(recs: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new(), stream::Header::new(false)).expect("w");
        for (kind, body) in recs {
            w.raw_record(*kind, body).expect("record");
        }
        w.into_inner()
    }

    #[test]
    fn a_stream_asking_for_round_acks_gets_them_on_a_connection_and_is_refused_elsewhere() {
        let mut recs = records(1);
        // Round 1 ends with its number, as the source writes it.
        for (kind, body) in &mut recs {
            if *kind == ROUND_END {
                *body = 1u32.to_le_bytes().to_vec();
            }
        }
        let mut w =
            StreamWriter::new(Vec::new(), stream::Header::new(true).with_round_acks()).expect("w");
        for (kind, body) in &recs {
            w.raw_record(*kind, body).expect("record");
        }
        let bytes = w.into_inner();
        let mem = memory::create_guest_memory(8).expect("mem");
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let target = std::fs::File::from(std::os::fd::OwnedFd::from(a));
        let source = std::fs::File::from(std::os::fd::OwnedFd::from(b));
        let conn = StreamSource::Connection(Some(&target));
        receive(&bytes[..], &mem, 8, 1, &limits(), conn, None).expect("received");
        assert_eq!(
            super::super::channel::read_line(&source).expect("line"),
            "applied 1"
        );
        for source in [StreamSource::File, StreamSource::Connection(None)] {
            let e = receive(&bytes[..], &mem, 8, 1, &limits(), source, None)
                .err()
                .expect("refused");
            assert!(e.to_string().contains("round acknowledgements"), "{e}");
        }
    }

    /// `receive` into a fresh 8 MiB guest of `vcpus` vCPUs.
    fn take(bytes: &[u8], vcpus: u32) -> Result<Received, TransferError> {
        let mem = memory::create_guest_memory(8).expect("mem");
        receive(bytes, &mem, 8, vcpus, &limits(), StreamSource::File, None)
    }

    /// One write a sink got: devid, offset, length, data or zeros.
    type Got = (u32, u64, u64, Option<Vec<u8>>);

    /// A sink that keeps what it got and counts its flushes.
    #[derive(Default)]
    struct Sink {
        got: std::sync::Mutex<Vec<Got>>,
        flushes: std::sync::atomic::AtomicU32,
    }

    impl DiskSink for Sink {
        fn write_block(&self, b: &stream::DiskBlock<'_>) -> Result<(), TransferError> {
            if b.devid != 51712 {
                return Err(TransferError::Mismatch(format!("no disk {}", b.devid)));
            }
            self.got.lock().expect("lock").push((
                b.devid,
                b.offset,
                b.len,
                b.data.map(<[u8]>::to_vec),
            ));
            Ok(())
        }
        fn flush_all(&self) -> Result<(), TransferError> {
            self.flushes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn disk_blocks_reach_the_sink_and_are_flushed_and_a_save_file_refuses_them() {
        let mut recs = records(1);
        let mut body = Vec::new();
        let data = vec![0x3Cu8; 8192];
        stream::encode_disk_block(
            &stream::DiskBlock {
                devid: 51712,
                offset: 65536,
                len: 8192,
                data: Some(&data),
            },
            &mut body,
        );
        recs.insert(2, (RecordType::DiskBlocks as u32, body.clone()));
        let mut zero = Vec::new();
        stream::encode_disk_block(
            &stream::DiskBlock {
                devid: 51712,
                offset: 0,
                len: 4096,
                data: None,
            },
            &mut zero,
        );
        recs.insert(3, (RecordType::DiskBlocks as u32, zero));
        let bytes = write(&recs);
        let sink = Sink::default();
        let mem = memory::create_guest_memory(8).expect("mem");
        receive(
            &bytes[..],
            &mem,
            8,
            1,
            &limits(),
            StreamSource::File,
            Some(&sink),
        )
        .expect("received");
        assert_eq!(
            *sink.got.lock().expect("lock"),
            vec![(51712, 65536, 8192, Some(data)), (51712, 0, 4096, None)]
        );
        // Flushed at the round's end; the end record has nothing left to flush.
        assert_eq!(sink.flushes.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A block in the last round (after the round end) is flushed at the end record.
        let mut last = recs.clone();
        let round_end = last
            .iter()
            .position(|(kind, _)| *kind == ROUND_END)
            .expect("a round end");
        last.insert(round_end + 1, (RecordType::DiskBlocks as u32, body.clone()));
        let sink = Sink::default();
        receive(
            &write(&last)[..],
            &mem,
            8,
            1,
            &limits(),
            StreamSource::File,
            Some(&sink),
        )
        .expect("received");
        assert_eq!(sink.got.lock().expect("lock").len(), 3);
        assert_eq!(sink.flushes.load(std::sync::atomic::Ordering::SeqCst), 2);
        let e = take(&bytes, 1).err().expect("refused without a sink");
        assert!(e.to_string().contains("disk blocks"), "{e}");
        // A disk the domain does not have: refused.
        let mut other = Vec::new();
        stream::encode_disk_block(
            &stream::DiskBlock {
                devid: 7,
                offset: 0,
                len: 1,
                data: Some(&[1]),
            },
            &mut other,
        );
        let mut recs = records(1);
        recs.insert(2, (RecordType::DiskBlocks as u32, other));
        let mem = memory::create_guest_memory(8).expect("mem");
        let sink = Sink::default();
        assert!(receive(
            &write(&recs)[..],
            &mem,
            8,
            1,
            &limits(),
            StreamSource::File,
            Some(&sink)
        )
        .is_err());
    }

    /// Index of the `n`-th record of type `kind`.
    fn nth(recs: &[(u32, Vec<u8>)], kind: u32, n: usize) -> usize {
        recs.iter()
            .enumerate()
            .filter(|(_, (k, _))| *k == kind)
            .nth(n)
            .map(|(i, _)| i)
            .expect("record")
    }

    #[test]
    fn a_whole_stream_is_received() {
        let bytes = write(&records(3));
        let mem = memory::create_guest_memory(8).expect("mem");
        let r =
            receive(&bytes[..], &mem, 8, 3, &limits(), StreamSource::File, None).expect("received");
        assert_eq!(r.vcpus.len(), 3);
        assert!(r.vcpus.iter().enumerate().all(|(i, v)| v.id as usize == i));
        assert_eq!(r.devices.len(), 1);
        assert_eq!(r.bytes, bytes.len() as u64);
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(0x10 << 12))
            .expect("r");
        assert_eq!(got, [0x5A; 4]);
    }

    /// How many kinds of damage [`damage`] knows.
    const DAMAGES: usize = 16;

    /// Damages a plausible stream of `vcpus` vCPUs in one way (`kind`, with
    /// `seed` choosing the details); returns its bytes (checksums right) and
    /// a part of the message its refusal must carry.
    fn damage(kind: usize, seed: u64, vcpus: u32) -> (Vec<u8>, String) {
        let mut recs = records(vcpus);
        let id = (seed % u64::from(vcpus)) as u32;
        let at = nth(&recs, VCPU, id as usize);
        let want = match kind % DAMAGES {
            0 => {
                let mut p = Parts::sample(id);
                let reg = break_one(
                    &mut p,
                    (seed % BREAKS as u64) as usize,
                    seed >> 8,
                    &limits(),
                );
                recs[at].1 = p.encode();
                format!("vCPU {id}: impossible {reg}")
            }
            1 => {
                let out = vcpus + (seed % u64::from(u32::MAX - vcpus)) as u32;
                recs[at].1 = Parts::sample(out).encode();
                format!(
                    "the stream holds state for vCPU {out}, but the domain has vCPUs 0 to {}",
                    vcpus - 1
                )
            }
            2 => {
                let copy = recs[at].clone();
                recs.insert(
                    at + 1 + (seed >> 8) as usize % (vcpus as usize - id as usize),
                    copy,
                );
                format!("the stream holds vCPU {id} twice")
            }
            3 => {
                recs.remove(at);
                format!("the stream has no state for vCPU {id}")
            }
            4 => {
                let other = if seed % 2 == 0 {
                    (seed >> 1) as u32 % vcpus
                } else {
                    vcpus + 1 + ((seed >> 1) % 1000) as u32
                };
                recs[1].1 = info_body(8, other, "testguest");
                format!("a domain of 8 MiB with {other} vCPUs")
            }
            5 => {
                let other = if seed % 9 == 8 { 9 } else { seed % 8 };
                recs[1].1 = info_body(other, vcpus, "testguest");
                format!("a domain of {other} MiB")
            }
            6 => {
                let first = (8u64 << 20) >> 12;
                let pfn = first + seed % (stream::MAX_PFN - first);
                let mut body = Vec::new();
                encode_pages(&[pfn | ZERO_PAGE], &[], &mut body);
                recs.insert(nth(&recs, PAGES, 0) + 1, (PAGES, body));
                "outside the guest's memory".into()
            }
            7 => {
                // One section cut short, its length word telling the truth.
                let body = &recs[at].1;
                let mut parts = Vec::new();
                let mut rest = &body[4..];
                while rest.len() >= 8 {
                    let len = u32::from_le_bytes(rest[4..8].try_into().expect("len")) as usize;
                    parts.push((rest[..4].to_vec(), rest[8..8 + len].to_vec()));
                    rest = &rest[8 + len..];
                }
                // Any section but the MSR list, which may be shorter by whole entries.
                let msrs = 10u32.to_le_bytes().to_vec();
                let full: Vec<usize> = (0..parts.len())
                    .filter(|&i| parts[i].0 != msrs && !parts[i].1.is_empty())
                    .collect();
                let cut = full[(seed >> 8) as usize % full.len()];
                let n = parts[cut].1.len();
                parts[cut].1.truncate((seed >> 16) as usize % n);
                let mut out = body[..4].to_vec();
                for (t, b) in &parts {
                    out.extend_from_slice(t);
                    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    out.extend_from_slice(b);
                }
                recs[at].1 = out;
                format!("vCPU {id}: the ")
            }
            8 => {
                let mut bytes = write(&recs);
                bytes.extend((0..1 + seed % 64).map(|i| (seed >> (i % 8)) as u8));
                return (bytes, "after its end record".into());
            }
            9 => {
                let kernel = format!("kind-{seed:x}");
                recs[1].1 = info_body(8, vcpus, &kernel);
                "which this VMM does not know".into()
            }
            10 => {
                recs[0].1 = match seed % 4 {
                    0 => b"{}".to_vec(),
                    1 => br#"{"config":[1,2]}"#.to_vec(),
                    2 => b"not json".to_vec(),
                    _ => seed.to_le_bytes().to_vec(),
                };
                "config".into()
            }
            11 => {
                // One of the four VM state sections left out.
                let body = vm_body();
                let mut out = Vec::new();
                let mut rest = &body[..];
                let skip = (seed % 4) as usize;
                let mut i = 0;
                while rest.len() >= 8 {
                    let len = u32::from_le_bytes(rest[4..8].try_into().expect("len")) as usize;
                    if i != skip {
                        out.extend_from_slice(&rest[..8 + len]);
                    }
                    rest = &rest[8 + len..];
                    i += 1;
                }
                let v = nth(&recs, VMSTATE, 0);
                recs[v].1 = out;
                "interrupt controllers or PIT missing".into()
            }
            12 => {
                let v = nth(&recs, VMSTATE, 0);
                recs.remove(v);
                "no VM state".into()
            }
            13 => {
                let again = if seed % 2 == 0 {
                    recs[0].clone()
                } else {
                    recs[1].clone()
                };
                let at = 2 + (seed >> 8) as usize % (recs.len() - 2);
                recs.insert(at, again);
                "unexpected".into()
            }
            14 => {
                let mut body = Vec::new();
                let pages = 1 + (seed % 4) as usize;
                let entries: Vec<u64> = (0..pages as u64).map(|p| 0x20 + p).collect();
                encode_pages(&entries, &vec![1u8; (pages - 1) * PAGE_SIZE], &mut body);
                recs.insert(2, (PAGES, body));
                "malformed pages record".into()
            }
            _ => {
                let d = nth(&recs, DEVICE, 0);
                recs[d].1 = seed.to_le_bytes().to_vec();
                "malformed device record".into()
            }
        };
        (write(&recs), want)
    }

    #[test]
    fn each_kind_of_damage_is_refused() {
        for kind in 0..DAMAGES {
            for seed in [0, 1, 2, 3, 0x1234_5678_9ABC_DEF0, u64::MAX] {
                for vcpus in [1, 2, 3] {
                    let (bytes, want) = damage(kind, seed, vcpus);
                    let e = take(&bytes, vcpus)
                        .err()
                        .unwrap_or_else(|| panic!("damage {kind}, seed {seed:#x} accepted"));
                    assert!(
                        e.to_string().contains(&want),
                        "damage {kind}, seed {seed:#x}, {vcpus} vCPUs: {e} (expected {want})"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A plausible stream with one impossible thing in it, checksums
        /// right: refused with the reason, never a panic.
        #[test]
        fn a_damaged_stream_is_refused(kind in 0usize..DAMAGES, seed in any::<u64>(), vcpus in 1u32..5) {
            let (bytes, want) = damage(kind, seed, vcpus);
            let e = take(&bytes, vcpus);
            prop_assert!(e.is_err(), "damage {} accepted", kind);
            let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
            prop_assert!(msg.contains(&want), "{} (expected {})", msg, want);
        }

        /// Random records after a good start (random bodies, and real vCPU
        /// records with random bytes changed): an error or a result, never a panic.
        #[test]
        fn random_records_never_panic(
            recs in proptest::collection::vec(
                (
                    prop_oneof![Just(PAGES), Just(VCPU), Just(VMSTATE), Just(DEVICE), Just(END), Just(ROUND_END), Just(CONF), any::<u32>()],
                    proptest::collection::vec(any::<u8>(), 0..300),
                    proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                ),
                0..10,
            ),
        ) {
            let mut all = records(2);
            all.truncate(2);
            for (kind, body, flips) in recs {
                let body = if kind == VCPU && !flips.is_empty() {
                    let mut b = Parts::sample(1).encode();
                    for (at, v) in flips {
                        let n = b.len();
                        b[at % n] = v;
                    }
                    b
                } else {
                    body
                };
                all.push((kind, body));
            }
            let bytes = write(&all);
            let _ = take(&bytes, 2);
            let _ = take(&bytes[..bytes.len() / 2], 2);
        }
    }
}

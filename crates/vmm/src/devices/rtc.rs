//! The CMOS RTC (MC146818) on ports 0x70 (index) and 0x71 (data): the host's UTC clock plus an offset.
//!
//! 128 bytes of CMOS. The time registers (0x00 seconds, 0x02 minutes, 0x04
//! hours, 0x06 day of week, 0x07 day of month, 0x08 month, 0x09 year, 0x32
//! century) are computed on each read from the host's clock plus an offset, in
//! the format register B selects (DM bit 2: binary or BCD; bit 1: 24 or 12
//! hours with bit 7 for PM). While register B's SET bit is on, the clock is
//! frozen and the guest writes the time registers; clearing SET (as Linux's
//! `mc146818_set_time` does) turns what was written into a new offset. A time
//! register written without SET moves the offset at once. The alarm registers
//! (0x01, 0x03, 0x05) and the rest of the CMOS are plain storage.
//!
//! Register A reads back what was written (divider 0x26 at power-on) with UIP
//! (bit 7) set only in the last 244 µs before each second, as the chip does, and
//! never while SET is on or the divider is stopped. Register D reads 0x80 (RAM
//! and time valid). **No interrupt is ever raised** (no periodic, alarm or
//! update-ended interrupt on IRQ 8): register C always reads 0.
//!
//! Bit 7 of the index port (the NMI mask) is ignored; the index port reads 0xFF.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::pio_bus::BytePortDevice;

/// Index port (the data port follows it).
pub const RTC_PORT: u16 = 0x70;
/// Number of ports.
pub const RTC_LEN: u16 = 2;
/// The RTC's ISA interrupt (described to the guest; this model never raises it).
pub const RTC_IRQ: u8 = 8;
/// Data port.
pub const RTC_DATA_PORT: u16 = RTC_PORT + 1;
/// Bytes of CMOS.
pub const CMOS_SIZE: usize = 128;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0A;
const REG_B: u8 = 0x0B;
const REG_C: u8 = 0x0C;
const REG_D: u8 = 0x0D;
const REG_CENTURY: u8 = 0x32;

const A_UIP: u8 = 0x80;
const A_DIVIDER_MASK: u8 = 0x70;
/// Divider bits for the 32.768 kHz time base (the clock runs).
const A_DIVIDER_32K: u8 = 0x20;
const A_DEFAULT: u8 = 0x26;
const B_SET: u8 = 0x80;
const B_UIE: u8 = 0x10;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const B_DEFAULT: u8 = B_24H;
const D_VALID: u8 = 0x80;
const HOUR_PM: u8 = 0x80;
/// How long before each second boundary UIP reads set.
const UIP_NANOS: u32 = 244_000;
const NANOS_PER_SEC: u32 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// The RTC's state, for save/restore and migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtcState {
    /// The CMOS bytes ([`CMOS_SIZE`]; the time registers as last latched or written).
    pub cmos: Vec<u8>,
    /// Guest time minus host time (UTC), in seconds.
    pub offset_secs: i64,
    /// The selected CMOS index.
    #[serde(default)]
    pub index: u8,
    /// The century register was written since SET went on.
    #[serde(default)]
    pub century_written: bool,
}

type Clock = Box<dyn Fn() -> (i64, u32) + Send>;

/// The host's UTC time: seconds since the Unix epoch (floor) and nanoseconds.
fn host_clock() -> (i64, u32) {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => ((-secs).saturating_sub(1), NANOS_PER_SEC - n),
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (`month` 1..=12).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month 1..=12, day 1..=31) of a day counted from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is 1..=31 and month 1..=12 by construction.
    (year, month as u8, day as u8)
}

/// Broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tm {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 0 = Sunday.
    weekday: u8,
}

impl Tm {
    fn from_unix(t: i64) -> Self {
        let days = t.div_euclid(SECS_PER_DAY);
        let secs = t.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        // All below are < 60, < 24 or < 7.
        Self {
            year,
            month,
            day,
            hour: (secs / 3600) as u8,
            minute: (secs / 60 % 60) as u8,
            second: (secs % 60) as u8,
            weekday: days.saturating_add(4).rem_euclid(7) as u8,
        }
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> Option<u8> {
    let (hi, lo) = (v >> 4, v & 0x0F);
    (hi <= 9 && lo <= 9).then_some(hi * 10 + lo)
}

/// The MC146818 on ports 0x70-0x71.
pub struct Rtc {
    index: u8,
    cmos: [u8; CMOS_SIZE],
    offset: i64,
    century_written: bool,
    clock: Clock,
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl Rtc {
    /// Creates the RTC at the host's time (offset 0), 24-hour BCD, CMOS RAM zeroed.
    pub fn new() -> Self {
        Self::with_clock(Box::new(host_clock))
    }

    fn with_clock(clock: Clock) -> Self {
        let mut cmos = [0u8; CMOS_SIZE];
        cmos[usize::from(REG_A)] = A_DEFAULT;
        cmos[usize::from(REG_B)] = B_DEFAULT;
        cmos[usize::from(REG_D)] = D_VALID;
        Self {
            index: 0,
            cmos,
            offset: 0,
            century_written: false,
            clock,
        }
    }

    /// Creates the RTC in a saved state (a short CMOS image is padded with zeros).
    pub fn from_snapshot(state: &RtcState) -> Self {
        let mut rtc = Self::new();
        rtc.restore(state);
        rtc
    }

    fn restore(&mut self, state: &RtcState) {
        self.cmos = [0; CMOS_SIZE];
        for (dst, src) in self.cmos.iter_mut().zip(&state.cmos) {
            *dst = *src;
        }
        self.offset = state.offset_secs;
        self.index = state.index & 0x7F;
        self.century_written = state.century_written;
    }

    /// The RTC's state.
    pub fn snapshot(&self) -> RtcState {
        RtcState {
            cmos: self.cmos.to_vec(),
            offset_secs: self.offset,
            index: self.index,
            century_written: self.century_written,
        }
    }

    /// Guest time minus host time, in seconds.
    pub fn offset_secs(&self) -> i64 {
        self.offset
    }

    fn reg(&self, r: u8) -> u8 {
        self.cmos[usize::from(r & 0x7F)]
    }

    fn set_reg(&mut self, r: u8, v: u8) {
        self.cmos[usize::from(r & 0x7F)] = v;
    }

    fn binary(&self) -> bool {
        self.reg(REG_B) & B_BINARY != 0
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> Option<u8> {
        if self.binary() {
            Some(v)
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, h: u8) -> u8 {
        if self.reg(REG_B) & B_24H != 0 {
            return self.encode(h);
        }
        let h12 = match h % 12 {
            0 => 12,
            x => x,
        };
        self.encode(h12) | if h >= 12 { HOUR_PM } else { 0 }
    }

    fn decode_hour(&self, v: u8) -> Option<u8> {
        if self.reg(REG_B) & B_24H != 0 {
            return self.decode(v).filter(|&h| h < 24);
        }
        let h = self.decode(v & !HOUR_PM).filter(|h| (1..=12).contains(h))?;
        Some(h % 12 + if v & HOUR_PM != 0 { 12 } else { 0 })
    }

    /// Guest time: whole seconds and the nanoseconds into the current one.
    fn now(&self) -> (i64, u32) {
        let (secs, nanos) = (self.clock)();
        (secs.saturating_add(self.offset), nanos)
    }

    /// Copies the current guest time into the time registers.
    fn latch(&mut self) {
        let tm = Tm::from_unix(self.now().0);
        // rem_euclid keeps both below 100.
        let year = tm.year.rem_euclid(100) as u8;
        let century = tm.year.div_euclid(100).rem_euclid(100) as u8;
        let regs = [
            (REG_SECONDS, self.encode(tm.second)),
            (REG_MINUTES, self.encode(tm.minute)),
            (REG_HOURS, self.encode_hour(tm.hour)),
            (REG_WEEKDAY, self.encode(tm.weekday + 1)),
            (REG_DAY, self.encode(tm.day)),
            (REG_MONTH, self.encode(tm.month)),
            (REG_YEAR, self.encode(year)),
            (REG_CENTURY, self.encode(century)),
        ];
        for (r, v) in regs {
            self.set_reg(r, v);
        }
    }

    /// The Unix time the time registers hold, if they hold a valid time.
    fn registers_time(&self, century_from_register: bool) -> Option<i64> {
        let second = self.decode(self.reg(REG_SECONDS)).filter(|&v| v < 60)?;
        let minute = self.decode(self.reg(REG_MINUTES)).filter(|&v| v < 60)?;
        let hour = self.decode_hour(self.reg(REG_HOURS))?;
        let day = self
            .decode(self.reg(REG_DAY))
            .filter(|d| (1..=31).contains(d))?;
        let month = self
            .decode(self.reg(REG_MONTH))
            .filter(|m| (1..=12).contains(m))?;
        let year = self.decode(self.reg(REG_YEAR)).filter(|&y| y < 100)?;
        let century = if century_from_register {
            self.decode(self.reg(REG_CENTURY)).filter(|&c| c < 100)
        } else {
            None
        };
        // As Linux reads a two-digit year without a century register: 70-99 is 19xx.
        let century = century.unwrap_or(if year < 70 { 20 } else { 19 });
        let year = i64::from(century) * 100 + i64::from(year);
        let days = days_from_civil(year, i64::from(month), i64::from(day));
        Some(
            days * SECS_PER_DAY
                + i64::from(hour) * 3600
                + i64::from(minute) * 60
                + i64::from(second),
        )
    }

    /// Makes the time in the registers the guest's current time.
    fn commit(&mut self, century_from_register: bool) {
        match self.registers_time(century_from_register) {
            Some(t) => {
                let host = (self.clock)().0;
                self.offset = t.saturating_sub(host);
                tracing::debug!(offset = self.offset, "rtc: guest set the time");
            }
            None => tracing::debug!("rtc: guest wrote an invalid time; clock unchanged"),
        }
    }

    fn uip(&self) -> bool {
        let a = self.reg(REG_A);
        self.reg(REG_B) & B_SET == 0
            && a & A_DIVIDER_MASK == A_DIVIDER_32K
            && self.now().1 >= NANOS_PER_SEC - UIP_NANOS
    }

    fn is_time_reg(r: u8) -> bool {
        matches!(
            r,
            REG_SECONDS
                | REG_MINUTES
                | REG_HOURS
                | REG_WEEKDAY
                | REG_DAY
                | REG_MONTH
                | REG_YEAR
                | REG_CENTURY
        )
    }

    fn read_data(&mut self) -> u8 {
        let r = self.index;
        match r {
            _ if Self::is_time_reg(r) => {
                if self.reg(REG_B) & B_SET == 0 {
                    self.latch();
                }
                self.reg(r)
            }
            REG_A => (self.reg(REG_A) & !A_UIP) | if self.uip() { A_UIP } else { 0 },
            // No interrupt flag is ever set; reading clears them anyway.
            REG_C => 0,
            REG_D => D_VALID,
            _ => self.reg(r),
        }
    }

    fn write_data(&mut self, v: u8) {
        let r = self.index;
        match r {
            _ if Self::is_time_reg(r) => {
                if self.reg(REG_B) & B_SET != 0 {
                    self.set_reg(r, v);
                    if r == REG_CENTURY {
                        self.century_written = true;
                    }
                } else {
                    self.latch();
                    self.set_reg(r, v);
                    self.commit(true);
                }
            }
            REG_A => self.set_reg(REG_A, v & !A_UIP),
            REG_B => self.write_b(v),
            REG_C | REG_D => {}
            _ => self.set_reg(r, v),
        }
    }

    fn write_b(&mut self, v: u8) {
        let old = self.reg(REG_B);
        // SET stops update cycles, so it also clears the update-ended interrupt enable.
        let new = if v & B_SET != 0 { v & !B_UIE } else { v };
        match (old & B_SET != 0, new & B_SET != 0) {
            (false, true) => {
                self.set_reg(REG_B, new);
                self.latch();
                self.century_written = false;
            }
            (true, false) => {
                // The registers were written in the format in force while SET was on.
                self.commit(self.century_written);
                self.century_written = false;
                self.set_reg(REG_B, new);
            }
            _ => self.set_reg(REG_B, new),
        }
    }
}

impl BytePortDevice for Rtc {
    fn read_port(&mut self, port: u16) -> u8 {
        match port {
            RTC_DATA_PORT => self.read_data(),
            _ => 0xFF,
        }
    }

    fn write_port(&mut self, port: u16, v: u8) {
        match port {
            RTC_PORT => self.index = v & 0x7F,
            RTC_DATA_PORT => self.write_data(v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::devices::PioDevice;
    use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    /// A clock the test moves by hand.
    #[derive(Clone, Default)]
    struct FakeClock {
        secs: Arc<AtomicI64>,
        nanos: Arc<AtomicU32>,
    }

    impl FakeClock {
        fn at(secs: i64, nanos: u32) -> Self {
            let c = Self::default();
            c.set(secs, nanos);
            c
        }

        fn set(&self, secs: i64, nanos: u32) {
            self.secs.store(secs, Ordering::SeqCst);
            self.nanos.store(nanos, Ordering::SeqCst);
        }

        fn rtc(&self) -> Rtc {
            let c = self.clone();
            Rtc::with_clock(Box::new(move || {
                (
                    c.secs.load(Ordering::SeqCst),
                    c.nanos.load(Ordering::SeqCst),
                )
            }))
        }
    }

    fn rd(rtc: &mut Rtc, r: u8) -> u8 {
        let mut b = [0u8];
        rtc.write(RTC_PORT, 0, &[r | 0x80]); // the NMI mask bit must not matter
        rtc.read(RTC_PORT, 1, &mut b);
        b[0]
    }

    fn wr(rtc: &mut Rtc, r: u8, v: u8) {
        rtc.write(RTC_PORT, 0, &[r]);
        rtc.write(RTC_PORT, 1, &[v]);
    }

    /// Reads the time the way Linux's `mc146818_get_time` does; returns Unix seconds.
    fn linux_get_time(rtc: &mut Rtc) -> i64 {
        for _ in 0..1000 {
            let seconds = rd(rtc, REG_SECONDS);
            if rd(rtc, REG_A) & A_UIP != 0 {
                continue;
            }
            let b = rd(rtc, REG_B);
            let raw = [
                seconds,
                rd(rtc, REG_MINUTES),
                rd(rtc, REG_HOURS),
                rd(rtc, REG_DAY),
                rd(rtc, REG_MONTH),
                rd(rtc, REG_YEAR),
                rd(rtc, REG_CENTURY),
            ];
            if rd(rtc, REG_A) & A_UIP != 0 || rd(rtc, REG_SECONDS) != seconds {
                continue;
            }
            let dec = |v: u8| {
                if b & B_BINARY != 0 {
                    v
                } else {
                    from_bcd(v).expect("bcd")
                }
            };
            let [s, m, h, d, mo, y, c] = raw;
            let mut hour = dec(h & 0x7F);
            if b & B_24H == 0 {
                hour = hour % 12 + if h & 0x80 != 0 { 12 } else { 0 };
            }
            let year = i64::from(dec(c)) * 100 + i64::from(dec(y));
            let days = days_from_civil(year, i64::from(dec(mo)), i64::from(dec(d)));
            return days * SECS_PER_DAY
                + i64::from(hour) * 3600
                + i64::from(dec(m)) * 60
                + i64::from(dec(s));
        }
        panic!("UIP never cleared");
    }

    /// Sets the time the way Linux's `mc146818_set_time` does (no century, no weekday).
    fn linux_set_time(rtc: &mut Rtc, t: i64) {
        let tm = Tm::from_unix(t);
        let save_b = rd(rtc, REG_B);
        wr(rtc, REG_B, save_b | B_SET);
        let save_a = rd(rtc, REG_A);
        wr(rtc, REG_A, save_a | 0x60); // RTC_DIV_RESET2
        let enc = |v: u8| if save_b & B_BINARY != 0 { v } else { to_bcd(v) };
        let hour = if save_b & B_24H != 0 {
            enc(tm.hour)
        } else {
            let h12 = if tm.hour % 12 == 0 { 12 } else { tm.hour % 12 };
            enc(h12) | if tm.hour >= 12 { 0x80 } else { 0 }
        };
        wr(rtc, REG_YEAR, enc((tm.year % 100) as u8));
        wr(rtc, REG_MONTH, enc(tm.month));
        wr(rtc, REG_DAY, enc(tm.day));
        wr(rtc, REG_HOURS, hour);
        wr(rtc, REG_MINUTES, enc(tm.minute));
        wr(rtc, REG_SECONDS, enc(tm.second));
        wr(rtc, REG_B, save_b);
        wr(rtc, REG_A, save_a);
    }

    fn host_secs() -> i64 {
        host_clock().0
    }

    /// The host's own calendar for `t`, from libc.
    fn gmtime(t: i64) -> Tm {
        let tt: libc::time_t = t;
        // SAFETY: an all-zero `tm` is a valid value (integers and a nullable pointer).
        let mut out: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live locals of the right types for the call.
        let r = unsafe { libc::gmtime_r(&tt, &mut out) };
        assert!(!r.is_null(), "gmtime_r({t})");
        Tm {
            year: i64::from(out.tm_year) + 1900,
            month: (out.tm_mon + 1) as u8,
            day: out.tm_mday as u8,
            hour: out.tm_hour as u8,
            minute: out.tm_min as u8,
            second: out.tm_sec as u8,
            weekday: out.tm_wday as u8,
        }
    }

    #[test]
    fn calendar_known_dates() {
        for (y, m, d, t, wday) in [
            (1970, 1, 1, 0, 4),
            (2000, 2, 29, 951_782_400, 2),
            (2024, 12, 31, 1_735_603_200, 2),
            (1969, 12, 31, -86_400, 3),
            (1900, 3, 1, -2_203_891_200, 4),
            (2100, 3, 1, 4_107_542_400, 1),
        ] {
            assert_eq!(days_from_civil(y, m, d) * SECS_PER_DAY, t, "{y}-{m}-{d}");
            let tm = Tm::from_unix(t);
            assert_eq!(
                (tm.year, tm.month, tm.day, tm.weekday),
                (y, m as u8, d as u8, wday)
            );
        }
    }

    #[test]
    fn calendar_matches_gmtime() {
        let mut t: i64 = -2_208_988_800; // 1900-01-01
        while t < 4_200_000_000 {
            assert_eq!(Tm::from_unix(t), gmtime(t), "t = {t}");
            t += 86_399 * 7 + 12_345;
        }
        let now = host_secs();
        assert_eq!(Tm::from_unix(now), gmtime(now));
    }

    #[test]
    fn defaults() {
        let mut rtc = Rtc::new();
        assert_eq!(rd(&mut rtc, REG_A) & 0x7F, 0x26);
        assert_eq!(rd(&mut rtc, REG_B), 0x02);
        assert_eq!(rd(&mut rtc, REG_C), 0);
        assert_eq!(rd(&mut rtc, REG_D), 0x80);
        let mut b = [0u8; 2];
        rtc.read(RTC_PORT, 0, &mut b);
        assert_eq!(b, [0xFF, 0]);
    }

    #[test]
    fn bcd_and_binary_time_match_the_host_clock() {
        let mut rtc = Rtc::new();
        for b in [0x02, 0x06, 0x00, 0x04] {
            wr(&mut rtc, REG_B, b);
            let before = host_secs();
            let t = linux_get_time(&mut rtc);
            let after = host_secs();
            assert!(
                before <= t && t <= after,
                "B={b:#x}: {before} <= {t} <= {after}"
            );
        }
        // BCD fields one by one against the host's own calendar.
        wr(&mut rtc, REG_B, 0x02);
        loop {
            let now = host_secs();
            let tm = gmtime(now);
            let got = [
                rd(&mut rtc, REG_SECONDS),
                rd(&mut rtc, REG_MINUTES),
                rd(&mut rtc, REG_HOURS),
                rd(&mut rtc, REG_WEEKDAY),
                rd(&mut rtc, REG_DAY),
                rd(&mut rtc, REG_MONTH),
                rd(&mut rtc, REG_YEAR),
                rd(&mut rtc, REG_CENTURY),
            ];
            if host_secs() != now {
                continue; // crossed a second: read again
            }
            let want = [
                to_bcd(tm.second),
                to_bcd(tm.minute),
                to_bcd(tm.hour),
                to_bcd(tm.weekday + 1),
                to_bcd(tm.day),
                to_bcd(tm.month),
                to_bcd((tm.year % 100) as u8),
                to_bcd((tm.year / 100) as u8),
            ];
            assert_eq!(got, want);
            break;
        }
    }

    #[test]
    fn formats_at_a_known_time() {
        // 2024-12-31 13:05:09, a Tuesday.
        let clock = FakeClock::at(1_735_603_200 + 13 * 3600 + 5 * 60 + 9, 0);
        let mut rtc = clock.rtc();
        let regs = [
            REG_SECONDS,
            REG_MINUTES,
            REG_HOURS,
            REG_WEEKDAY,
            REG_DAY,
            REG_MONTH,
            REG_YEAR,
            REG_CENTURY,
        ];
        let read_all = |rtc: &mut Rtc| regs.map(|r| rd(rtc, r));
        assert_eq!(
            read_all(&mut rtc),
            [0x09, 0x05, 0x13, 0x03, 0x31, 0x12, 0x24, 0x20]
        );
        wr(&mut rtc, REG_B, B_24H | B_BINARY);
        assert_eq!(read_all(&mut rtc), [9, 5, 13, 3, 31, 12, 24, 20]);
        wr(&mut rtc, REG_B, 0); // 12-hour BCD
        assert_eq!(rd(&mut rtc, REG_HOURS), 0x81);
        wr(&mut rtc, REG_B, B_BINARY); // 12-hour binary
        assert_eq!(rd(&mut rtc, REG_HOURS), 0x81);
        clock.set(1_735_603_200 + 30 * 60, 0); // 00:30 is 12 AM
        assert_eq!(rd(&mut rtc, REG_HOURS), 12);
        wr(&mut rtc, REG_B, 0);
        assert_eq!(rd(&mut rtc, REG_HOURS), 0x12);
        clock.set(1_735_603_200 + 12 * 3600, 0); // noon is 12 PM
        assert_eq!(rd(&mut rtc, REG_HOURS), 0x92);
    }

    #[test]
    fn set_time_moves_the_offset() {
        let host = 1_735_603_200 + 13 * 3600;
        let clock = FakeClock::at(host, 0);
        for b in [0x02, 0x06, 0x00, 0x04] {
            let mut rtc = clock.rtc();
            wr(&mut rtc, REG_B, b);
            // A date in 1999 and one in 2031, set without the century register.
            for target in [915_148_800 + 3600 * 15 + 61, 1_924_991_999] {
                linux_set_time(&mut rtc, target);
                assert_eq!(rtc.offset_secs(), target - host, "B={b:#x}");
                // The century follows the two-digit year as Linux reads it (70-99: 19xx).
                assert_eq!(linux_get_time(&mut rtc), target);
                assert_eq!(rd(&mut rtc, REG_B), b);
                // The guest clock runs on with the host's.
                clock.set(host + 100, 0);
                assert_eq!(linux_get_time(&mut rtc), target + 100);
                clock.set(host, 0);
            }
        }
    }

    #[test]
    fn frozen_while_set_and_century_written() {
        let host = 1_735_603_200;
        let clock = FakeClock::at(host, 0);
        let mut rtc = clock.rtc();
        wr(&mut rtc, REG_B, B_24H | B_SET);
        clock.set(host + 5, 0);
        assert_eq!(rd(&mut rtc, REG_SECONDS), 0, "frozen while SET");
        assert_eq!(rd(&mut rtc, REG_A) & A_UIP, 0);
        // 2101-03-01 00:00:00 with the century register.
        wr(&mut rtc, REG_YEAR, 0x01);
        wr(&mut rtc, REG_MONTH, 0x03);
        wr(&mut rtc, REG_DAY, 0x01);
        wr(&mut rtc, REG_CENTURY, 0x21);
        wr(&mut rtc, REG_B, B_24H);
        let target = days_from_civil(2101, 3, 1) * SECS_PER_DAY;
        assert_eq!(rtc.offset_secs(), target - (host + 5));
        assert_eq!(rd(&mut rtc, REG_CENTURY), 0x21);
        // An invalid time leaves the clock alone.
        let before = rtc.offset_secs();
        wr(&mut rtc, REG_B, B_24H | B_SET);
        wr(&mut rtc, REG_MONTH, 0x13);
        wr(&mut rtc, REG_B, B_24H);
        assert_eq!(rtc.offset_secs(), before);
        // A single register written while the clock runs moves it at once.
        wr(&mut rtc, REG_MINUTES, 0x10);
        assert_eq!(rtc.offset_secs(), before + 600);
    }

    #[test]
    fn uip_only_briefly_before_each_second() {
        let clock = FakeClock::at(1_000_000, 500_000_000);
        let mut rtc = clock.rtc();
        assert_eq!(rd(&mut rtc, REG_A), 0x26);
        clock.set(1_000_000, 999_900_000);
        assert_eq!(rd(&mut rtc, REG_A), 0xA6);
        clock.set(1_000_001, 0);
        assert_eq!(rd(&mut rtc, REG_A), 0x26);
        clock.set(1_000_001, 999_999_999);
        wr(&mut rtc, REG_A, 0x66); // divider in reset
        assert_eq!(rd(&mut rtc, REG_A), 0x66);
        wr(&mut rtc, REG_A, 0xA6); // UIP is read-only
        assert_eq!(rd(&mut rtc, REG_A), 0xA6);
        wr(&mut rtc, REG_B, B_24H | B_SET);
        assert_eq!(rd(&mut rtc, REG_A), 0x26);
    }

    #[test]
    fn alarm_and_ram_are_stored_c_and_d_read_only() {
        let mut rtc = Rtc::new();
        for r in [0x01, 0x03, 0x05, 0x0E, 0x10, 0x31, 0x33, 0x7F] {
            wr(&mut rtc, r, r ^ 0x5A);
            assert_eq!(rd(&mut rtc, r), r ^ 0x5A);
        }
        wr(&mut rtc, REG_C, 0xF0);
        wr(&mut rtc, REG_D, 0x00);
        assert_eq!(rd(&mut rtc, REG_C), 0);
        assert_eq!(rd(&mut rtc, REG_D), 0x80);
    }

    #[test]
    fn snapshot_round_trip() {
        let clock = FakeClock::at(1_735_603_200, 0);
        let mut rtc = clock.rtc();
        wr(&mut rtc, 0x40, 0x77);
        wr(&mut rtc, REG_B, 0x06);
        linux_set_time(&mut rtc, 1_000_000_000);
        rtc.write(RTC_PORT, 0, &[0x40]);
        let state = rtc.snapshot();
        assert_eq!(state.cmos.len(), CMOS_SIZE);
        assert_eq!(state.offset_secs, 1_000_000_000 - 1_735_603_200);
        let json = serde_json::to_string(&state).expect("encode");
        let back: RtcState = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, state);
        let mut rtc2 = clock.rtc();
        rtc2.restore(&back);
        assert_eq!(rtc2.snapshot(), state);
        let mut b = [0u8];
        rtc2.read(RTC_PORT, 1, &mut b);
        assert_eq!(b[0], 0x77, "the selected index survives");
        assert_eq!(linux_get_time(&mut rtc2), 1_000_000_000);
        assert_eq!(rd(&mut rtc2, REG_B), 0x06);
        // The public constructor uses the host clock with the saved offset.
        let mut rtc3 = Rtc::from_snapshot(&back);
        let t = linux_get_time(&mut rtc3);
        assert!((t - (host_secs() + state.offset_secs)).abs() <= 1);
        // A short or long CMOS image is fitted to 128 bytes.
        let odd = RtcState {
            cmos: vec![0xFF; 300],
            offset_secs: i64::MAX,
            index: 0xFF,
            century_written: true,
        };
        let mut rtc4 = Rtc::from_snapshot(&odd);
        assert_eq!(rtc4.snapshot().cmos.len(), CMOS_SIZE);
        rd(&mut rtc4, REG_YEAR);
        let short: RtcState =
            serde_json::from_str(r#"{"cmos":[1,2],"offset_secs":-5}"#).expect("old record");
        assert_eq!(Rtc::from_snapshot(&short).snapshot().cmos.len(), CMOS_SIZE);
    }

    #[test]
    fn every_index_and_value() {
        let clock = FakeClock::at(1_735_603_200, 999_999_000);
        let mut rtc = clock.rtc();
        for i in 0..=0xFFu8 {
            for v in 0..=0xFFu8 {
                wr(&mut rtc, i, v);
                rd(&mut rtc, i);
                let mut wide = [0u8; 4];
                rtc.read(RTC_PORT, 1, &mut wide);
            }
        }
        for t in [i64::MIN, -1, 0, i64::MAX] {
            clock.set(t, 0);
            for r in 0..0x80u8 {
                rd(&mut rtc, r);
            }
            linux_set_time(&mut rtc, 0);
        }
    }

    proptest! {
        #[test]
        fn random_accesses_never_panic(
            offset in any::<i64>(),
            host in any::<i64>(),
            ops in proptest::collection::vec((0u16..4, any::<u8>(), any::<bool>()), 0..200),
        ) {
            let clock = FakeClock::at(host, 0);
            let mut rtc = clock.rtc();
            rtc.restore(&RtcState {
                cmos: vec![0; CMOS_SIZE],
                offset_secs: offset,
                index: 0,
                century_written: false,
            });
            for (port, v, write) in ops {
                if write {
                    rtc.write(RTC_PORT - 1, port, &[v]);
                } else {
                    let mut b = [0u8];
                    rtc.read(RTC_PORT - 1, port, &mut b);
                }
            }
            prop_assert_eq!(rtc.snapshot().cmos.len(), CMOS_SIZE);
        }
    }
}

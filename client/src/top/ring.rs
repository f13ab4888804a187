//! The binary side of a tracefs instance: event `format` files (field offsets) and the
//! ring-buffer pages read from `per_cpu/cpuN/trace_pipe_raw`, decoded into [`Event`]s.
//!
//! Page layout (the instance's `events/header_page`): a u64 timestamp, a `commit` word whose
//! low bits give the bytes of data, then the data: records with a 32-bit header
//! (`type_len`: 5 bits, `time_delta`: 27 bits). `type_len` 1..=28 is a record of
//! `4 * type_len` bytes, 0 one whose length is in the next word, 29 padding, 30 a time
//! extension, 31 an absolute time stamp. Little-endian only (x86, arm64).

use std::collections::HashMap;

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Trace clock time, ns.
    pub ts: u64,
    /// The CPU whose buffer held it.
    pub cpu: u32,
    /// What happened.
    pub kind: Kind,
}

/// The events `top` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `sched_waking`: `pid` is being woken.
    Waking {
        /// The woken thread.
        pid: u32,
    },
    /// `sched_switch` from `prev` to `next`.
    Switch {
        /// The thread leaving the CPU.
        prev_pid: u32,
        /// Its name.
        prev_comm: String,
        /// Its state (0 or the preempted marker: still runnable).
        prev_state: u64,
        /// The thread taking the CPU.
        next_pid: u32,
        /// Its name.
        next_comm: String,
    },
    /// `sched_migrate_task`.
    Migrate {
        /// The moved thread.
        pid: u32,
        /// From.
        orig_cpu: u32,
        /// To.
        dest_cpu: u32,
    },
    /// `irq_handler_entry`.
    IrqEntry {
        /// IRQ number.
        irq: u32,
        /// Handler name (the action's name, as in /proc/interrupts).
        name: String,
    },
    /// `irq_handler_exit`.
    IrqExit {
        /// IRQ number.
        irq: u32,
    },
    /// `softirq_entry`.
    SoftirqEntry {
        /// Vector (0 HI, 1 TIMER, ...).
        vec: u32,
    },
    /// `softirq_exit`.
    SoftirqExit {
        /// Vector.
        vec: u32,
    },
    /// `irq_vectors:local_timer_entry` (x86): the tick or an hrtimer.
    TimerEntry,
    /// `irq_vectors:local_timer_exit`.
    TimerExit,
}

/// The events recorded on the traced CPUs (`system`, `event`; x86's `irq_vectors` optional).
pub const CPU_EVENTS: [(&str, &str); 5] = [
    ("sched", "sched_switch"),
    ("irq", "irq_handler_entry"),
    ("irq", "irq_handler_exit"),
    ("irq", "softirq_entry"),
    ("irq", "softirq_exit"),
];
/// With `--timers`: the local timer interrupt (the tick and hrtimers), x86 only.
pub const TIMER_EVENTS: [(&str, &str); 2] = [
    ("irq_vectors", "local_timer_entry"),
    ("irq_vectors", "local_timer_exit"),
];
/// The traced threads' events, wherever they happen.
pub const THREAD_EVENTS: [(&str, &str); 2] =
    [("sched", "sched_waking"), ("sched", "sched_migrate_task")];

/// Why a format or a page could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The format file has no `ID:` line.
    #[error("event format of {0} has no ID line")]
    NoId(String),
    /// A field `top` needs is missing.
    #[error("event {event} has no field {field} (kernel too different)")]
    NoField {
        /// The event.
        event: String,
        /// The field.
        field: String,
    },
}

/// Where a field is in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Byte offset from the record's start.
    pub offset: usize,
    /// Byte size.
    pub size: usize,
    /// `__data_loc` (offset/length word from the record start) or `__rel_loc` (from the
    /// field's end).
    pub loc: Loc,
}

/// How a field holds its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    /// In place.
    Inline,
    /// `__data_loc`.
    Data,
    /// `__rel_loc`.
    Rel,
}

/// A parsed `format` file: the event id and its fields by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// The event's name.
    pub name: String,
    /// Its id (the record's `common_type`).
    pub id: u16,
    /// Fields by name.
    pub fields: HashMap<String, Field>,
}

/// Parses one `events/SYSTEM/EVENT/format` file.
pub fn parse_format(text: &str) -> Result<Format, FormatError> {
    let mut name = String::new();
    let mut id = None;
    let mut fields = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("name:") {
            name = n.trim().to_owned();
        } else if let Some(i) = line.strip_prefix("ID:") {
            id = i.trim().parse::<u16>().ok();
        } else if let Some(rest) = line.strip_prefix("field:") {
            let mut decl = "";
            let (mut offset, mut size) = (None, None);
            for part in rest.split(';') {
                let part = part.trim();
                if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.parse().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.parse().ok();
                } else if decl.is_empty() {
                    decl = part;
                }
            }
            let (Some(offset), Some(size)) = (offset, size) else {
                continue;
            };
            let loc = if decl.starts_with("__data_loc") {
                Loc::Data
            } else if decl.starts_with("__rel_loc") {
                Loc::Rel
            } else {
                Loc::Inline
            };
            let Some(last) = decl.split_whitespace().last() else {
                continue;
            };
            let fname = last.split('[').next().unwrap_or(last).to_owned();
            fields.insert(fname, Field { offset, size, loc });
        }
    }
    let id = id.ok_or_else(|| FormatError::NoId(name.clone()))?;
    Ok(Format { name, id, fields })
}

/// The page header: where the commit word and the data are (from `events/header_page`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    /// Offset of the commit word.
    pub commit_offset: usize,
    /// Its size (8 on 64-bit kernels).
    pub commit_size: usize,
    /// Offset of the first record.
    pub data_offset: usize,
}

impl Default for PageHeader {
    fn default() -> Self {
        Self {
            commit_offset: 8,
            commit_size: 8,
            data_offset: 16,
        }
    }
}

/// Parses `events/header_page` (falls back to the 64-bit layout for what it lacks).
pub fn parse_header_page(text: &str) -> PageHeader {
    let mut h = PageHeader::default();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let get = |key: &str| {
            rest.split(';').find_map(|p| {
                p.trim()
                    .strip_prefix(key)
                    .and_then(|v| v.parse::<usize>().ok())
            })
        };
        if rest.contains(" commit;") {
            if let (Some(o), Some(s)) = (get("offset:"), get("size:")) {
                h.commit_offset = o;
                h.commit_size = s;
            }
        } else if rest.contains(" data;")
            && let Some(o) = get("offset:")
        {
            h.data_offset = o;
        }
    }
    h
}

#[derive(Debug, Clone, Copy)]
enum Tag {
    Waking,
    Switch,
    Migrate,
    IrqEntry,
    IrqExit,
    SoftirqEntry,
    SoftirqExit,
    TimerEntry,
    TimerExit,
}

#[derive(Debug, Clone)]
struct Layout {
    tag: Tag,
    f: Vec<Field>,
}

/// Decodes records of the known events, by id.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    header: PageHeader,
    by_id: HashMap<u16, Layout>,
    /// Pages whose `commit` word said events were lost (the buffer overflowed).
    pub missed_pages: u64,
}

fn need(f: &Format, names: &[&str]) -> Result<Vec<Field>, FormatError> {
    names
        .iter()
        .map(|n| {
            f.fields
                .get(*n)
                .copied()
                .ok_or_else(|| FormatError::NoField {
                    event: f.name.clone(),
                    field: (*n).to_owned(),
                })
        })
        .collect()
}

impl Decoder {
    /// A decoder for pages laid out as `header`.
    pub fn new(header: PageHeader) -> Self {
        Self {
            header,
            ..Self::default()
        }
    }

    /// Learns an event's layout from its format (events `top` does not use are ignored).
    pub fn add(&mut self, f: &Format) -> Result<(), FormatError> {
        let (tag, names): (Tag, &[&str]) = match f.name.as_str() {
            "sched_waking" => (Tag::Waking, &["pid"]),
            "sched_switch" => (
                Tag::Switch,
                &[
                    "prev_pid",
                    "prev_comm",
                    "prev_state",
                    "next_pid",
                    "next_comm",
                ],
            ),
            "sched_migrate_task" => (Tag::Migrate, &["pid", "orig_cpu", "dest_cpu"]),
            "irq_handler_entry" => (Tag::IrqEntry, &["irq", "name"]),
            "irq_handler_exit" => (Tag::IrqExit, &["irq"]),
            "softirq_entry" => (Tag::SoftirqEntry, &["vec"]),
            "softirq_exit" => (Tag::SoftirqExit, &["vec"]),
            "local_timer_entry" => (Tag::TimerEntry, &[]),
            "local_timer_exit" => (Tag::TimerExit, &[]),
            _ => return Ok(()),
        };
        let f2 = need(f, names)?;
        self.by_id.insert(f.id, Layout { tag, f: f2 });
        Ok(())
    }

    /// Decodes one page read from CPU `cpu`'s `trace_pipe_raw`, appending to `out`. A page
    /// too short or with a bad record ends early: what came before is kept.
    pub fn page(&mut self, cpu: u32, page: &[u8], out: &mut Vec<Event>) {
        let h = self.header;
        let Some(mut ts) = le(page, 0, 8) else {
            return;
        };
        let Some(commit) = le(page, h.commit_offset, h.commit_size) else {
            return;
        };
        // Bits 31 and 30: events were lost before this page (RB_MISSED_EVENTS/STORED).
        if commit & (3 << 30) != 0 {
            self.missed_pages += 1;
        }
        let len = (commit & ((1 << 27) - 1)) as usize;
        let end = (h.data_offset + len).min(page.len());
        let mut at = h.data_offset;
        while at + 4 <= end {
            let Some(word) = le(page, at, 4) else { break };
            let type_len = (word & 0x1f) as usize;
            let delta = word >> 5;
            match type_len {
                29 => {
                    // Padding: with no delta, the rest of the page is empty.
                    if delta == 0 {
                        break;
                    }
                    let Some(n) = le(page, at + 4, 4) else { break };
                    at += 4 + n as usize;
                }
                30 => {
                    let Some(hi) = le(page, at + 4, 4) else { break };
                    ts += (hi << 27) | delta;
                    at += 8;
                }
                31 => {
                    let Some(hi) = le(page, at + 4, 4) else { break };
                    let stamp = (hi << 27) | delta;
                    // The top bits come from the page's time stamp.
                    ts = (ts & !((1u64 << 59) - 1)) | stamp;
                    at += 8;
                }
                0 => {
                    let Some(n) = le(page, at + 4, 4) else { break };
                    let n = n as usize;
                    if n < 4 {
                        break;
                    }
                    ts += delta;
                    let rec = page.get(at + 8..(at + 4 + n).min(end)).unwrap_or(&[]);
                    self.record(ts, cpu, rec, out);
                    at += 4 + n;
                }
                n => {
                    ts += delta;
                    let rec = page.get(at + 4..(at + 4 + 4 * n).min(end)).unwrap_or(&[]);
                    self.record(ts, cpu, rec, out);
                    at += 4 + 4 * n;
                }
            }
        }
    }

    fn record(&self, ts: u64, cpu: u32, rec: &[u8], out: &mut Vec<Event>) {
        let Some(id) = le(rec, 0, 2) else { return };
        let Some(l) = self.by_id.get(&(id as u16)) else {
            return;
        };
        // A record cut short by a bad page is dropped.
        if let Some(kind) = Self::kind(l, rec) {
            out.push(Event { ts, cpu, kind });
        }
    }

    fn kind(l: &Layout, rec: &[u8]) -> Option<Kind> {
        let num = |i: usize| l.f.get(i).and_then(|f| le(rec, f.offset, f.size.min(8)));
        let u32_ = |i: usize| num(i).map(|v| v as u32);
        let text = |i: usize| l.f.get(i).map(|f| string(rec, f)).unwrap_or_default();
        Some(match l.tag {
            Tag::Waking => Kind::Waking { pid: u32_(0)? },
            Tag::Switch => Kind::Switch {
                prev_pid: u32_(0)?,
                prev_comm: text(1),
                prev_state: num(2)?,
                next_pid: u32_(3)?,
                next_comm: text(4),
            },
            Tag::Migrate => Kind::Migrate {
                pid: u32_(0)?,
                orig_cpu: u32_(1)?,
                dest_cpu: u32_(2)?,
            },
            Tag::IrqEntry => Kind::IrqEntry {
                irq: u32_(0)?,
                name: text(1),
            },
            Tag::IrqExit => Kind::IrqExit { irq: u32_(0)? },
            Tag::SoftirqEntry => Kind::SoftirqEntry { vec: u32_(0)? },
            Tag::SoftirqExit => Kind::SoftirqExit { vec: u32_(0)? },
            Tag::TimerEntry => Kind::TimerEntry,
            Tag::TimerExit => Kind::TimerExit,
        })
    }
}

/// A little-endian unsigned integer of `size` (1..=8) bytes at `at`, `None` past the end.
fn le(b: &[u8], at: usize, size: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(size)?)?;
    if size == 0 || size > 8 {
        return None;
    }
    Some(
        s.iter()
            .rev()
            .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte)),
    )
}

/// A string field: inline (`char x[16]`) or through a `__data_loc`/`__rel_loc` word; up to
/// its first NUL, lossily decoded.
fn string(rec: &[u8], f: &Field) -> String {
    let bytes = match f.loc {
        Loc::Inline => rec.get(f.offset..f.offset + f.size),
        Loc::Data | Loc::Rel => le(rec, f.offset, 4).and_then(|w| {
            let (off, len) = ((w & 0xffff) as usize, (w >> 16) as usize);
            let base = if f.loc == Loc::Rel { f.offset + 4 } else { 0 };
            rec.get(base + off..base + off + len)
        }),
    }
    .unwrap_or(&[]);
    let bytes = bytes.split(|b| *b == 0).next().unwrap_or(&[]);
    String::from_utf8_lossy(bytes).into_owned()
}

/// Builds raw pages and records the way the kernel writes them (tests, recorded fragments).
#[cfg(test)]
pub mod build {
    /// A sched_switch format as 6.12 prints it.
    pub const SWITCH: &str = "name: sched_switch\nID: 316\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:int prev_prio;\toffset:28;\tsize:4;\tsigned:1;\n\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;\n\tfield:char next_comm[16];\toffset:40;\tsize:16;\tsigned:0;\n\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;\n\tfield:int next_prio;\toffset:60;\tsize:4;\tsigned:1;\n\nprint fmt: \"prev_comm=%s\"\n";
    /// sched_waking.
    pub const WAKING: &str = "name: sched_waking\nID: 318\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;\n\tfield:int target_cpu;\toffset:32;\tsize:4;\tsigned:1;\n";
    /// irq_handler_entry (a `__data_loc` name).
    pub const IRQ_ENTRY: &str = "name: irq_handler_entry\nID: 120\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:int irq;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:__data_loc char[] name;\toffset:12;\tsize:4;\tsigned:1;\n";
    /// irq_handler_exit.
    pub const IRQ_EXIT: &str = "name: irq_handler_exit\nID: 119\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:int irq;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:int ret;\toffset:12;\tsize:4;\tsigned:1;\n";

    fn comm(name: &str) -> [u8; 16] {
        let mut c = [0u8; 16];
        for (d, s) in c.iter_mut().zip(name.bytes()) {
            *d = s;
        }
        c
    }

    /// A sched_switch record.
    pub fn switch(prev: (&str, u32), state: u64, next: (&str, u32)) -> Vec<u8> {
        let mut r = vec![0u8; 64];
        r[0..2].copy_from_slice(&316u16.to_le_bytes());
        r[8..24].copy_from_slice(&comm(prev.0));
        r[24..28].copy_from_slice(&prev.1.to_le_bytes());
        r[32..40].copy_from_slice(&state.to_le_bytes());
        r[40..56].copy_from_slice(&comm(next.0));
        r[56..60].copy_from_slice(&next.1.to_le_bytes());
        r
    }

    /// A sched_waking record.
    pub fn waking(pid: u32) -> Vec<u8> {
        let mut r = vec![0u8; 36];
        r[0..2].copy_from_slice(&318u16.to_le_bytes());
        r[24..28].copy_from_slice(&pid.to_le_bytes());
        r
    }

    /// An irq_handler_entry record (name through `__data_loc`).
    pub fn irq_entry(irq: u32, name: &str) -> Vec<u8> {
        let mut r = vec![0u8; 16];
        r[0..2].copy_from_slice(&120u16.to_le_bytes());
        r[8..12].copy_from_slice(&irq.to_le_bytes());
        let len = name.len() as u32 + 1;
        r[12..16].copy_from_slice(&(16 | (len << 16)).to_le_bytes());
        r.extend_from_slice(name.as_bytes());
        r.push(0);
        while !r.len().is_multiple_of(4) {
            r.push(0);
        }
        r
    }

    /// An irq_handler_exit record.
    pub fn irq_exit(irq: u32) -> Vec<u8> {
        let mut r = vec![0u8; 16];
        r[0..2].copy_from_slice(&119u16.to_le_bytes());
        r[8..12].copy_from_slice(&irq.to_le_bytes());
        r
    }

    /// A page starting at `ts0`, holding `records` as (delta from the previous, bytes); a
    /// delta over 27 bits gets a time extension first.
    pub fn page(ts0: u64, records: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut data = Vec::new();
        for (delta, rec) in records {
            let mut delta = *delta;
            if delta >= 1 << 27 {
                let ext = 30u32 | (((delta & ((1 << 27) - 1)) as u32) << 5);
                data.extend_from_slice(&ext.to_le_bytes());
                data.extend_from_slice(&((delta >> 27) as u32).to_le_bytes());
                delta = 0;
            }
            let words = rec.len().div_ceil(4);
            if words <= 28 && rec.len().is_multiple_of(4) {
                let hdr = words as u32 | ((delta as u32) << 5);
                data.extend_from_slice(&hdr.to_le_bytes());
            } else {
                let hdr = (delta as u32) << 5;
                data.extend_from_slice(&hdr.to_le_bytes());
                data.extend_from_slice(&(rec.len() as u32 + 4).to_le_bytes());
            }
            data.extend_from_slice(rec);
        }
        let mut p = Vec::with_capacity(4096);
        p.extend_from_slice(&ts0.to_le_bytes());
        p.extend_from_slice(&(data.len() as u64).to_le_bytes());
        p.extend_from_slice(&data);
        p.resize(4096, 0);
        p
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn decoder() -> Decoder {
        let mut d = Decoder::new(parse_header_page(
            "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;\n\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;\n\tfield: char data;\toffset:16;\tsize:4080;\tsigned:1;\n",
        ));
        for f in [
            build::SWITCH,
            build::WAKING,
            build::IRQ_ENTRY,
            build::IRQ_EXIT,
        ] {
            d.add(&parse_format(f).unwrap()).unwrap();
        }
        d
    }

    #[test]
    fn formats() {
        let f = parse_format(build::SWITCH).unwrap();
        assert_eq!(f.id, 316);
        assert_eq!(
            f.fields["prev_comm"],
            Field {
                offset: 8,
                size: 16,
                loc: Loc::Inline
            }
        );
        assert_eq!(f.fields["next_pid"].offset, 56);
        assert_eq!(
            parse_format(build::IRQ_ENTRY).unwrap().fields["name"].loc,
            Loc::Data
        );
        assert!(matches!(
            parse_format("name: x\n"),
            Err(FormatError::NoId(_))
        ));
        let mut d = Decoder::default();
        let broken = parse_format("name: sched_waking\nID: 3\nformat:\n").unwrap();
        assert_eq!(
            d.add(&broken),
            Err(FormatError::NoField {
                event: "sched_waking".into(),
                field: "pid".into()
            })
        );
    }

    #[test]
    fn a_page_of_records() {
        let mut d = decoder();
        let p = build::page(
            1_000_000,
            &[
                (0, build::waking(42)),
                (1500, build::switch(("spin", 7), 0, ("CPU 0/KVM", 42))),
                (200, build::irq_entry(24, "virtio0-input.0")),
                (3 << 27, build::irq_exit(24)),
            ],
        );
        let mut out = Vec::new();
        d.page(3, &p, &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(
            out[0],
            Event {
                ts: 1_000_000,
                cpu: 3,
                kind: Kind::Waking { pid: 42 }
            }
        );
        assert_eq!(
            out[1].kind,
            Kind::Switch {
                prev_pid: 7,
                prev_comm: "spin".into(),
                prev_state: 0,
                next_pid: 42,
                next_comm: "CPU 0/KVM".into()
            }
        );
        assert_eq!(out[1].ts, 1_001_500);
        assert_eq!(
            out[2].kind,
            Kind::IrqEntry {
                irq: 24,
                name: "virtio0-input.0".into()
            }
        );
        assert_eq!(out[3].ts, 1_001_700 + (3 << 27));
        assert_eq!(d.missed_pages, 0);
    }

    #[test]
    fn truncated_and_hostile_pages() {
        let mut d = decoder();
        let mut out = Vec::new();
        d.page(0, &[1, 2, 3], &mut out);
        let mut p = build::page(5, &[(0, build::waking(1))]);
        // A commit larger than the page, with the lost-events bit.
        p[8..16].copy_from_slice(&(0x8000_0000u64 | 0x7ff_ffff).to_le_bytes());
        d.page(0, &p, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(d.missed_pages, 1);
        // A record header claiming a length past the end.
        let mut p = build::page(5, &[]);
        p[8..16].copy_from_slice(&8u64.to_le_bytes());
        p[16..20].copy_from_slice(&0u32.to_le_bytes());
        p[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        d.page(0, &p, &mut out);
        assert_eq!(out.len(), 1);
    }
}

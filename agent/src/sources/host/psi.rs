//! Pressure Stall Information: the share of wall time in which tasks were stalled waiting
//! for memory (or CPU, or IO).
//!
//! Needs Linux 4.20 with `CONFIG_PSI` for `/proc/pressure/*`, and cgroup v2 on 4.20 or later
//! for a cgroup's `memory.pressure`. Kernels booted with `psi=0` have the files missing
//! (host) or refuse reads with `EOPNOTSUPP` (cgroups); both read as `Ok(None)`.
//! See <https://docs.kernel.org/accounting/psi.html>.
//!
//! The parser is our own rather than `procfs::MemoryPressure`: that one stores `f32` and
//! requires a `full` line, which `/proc/pressure/cpu` lacks before Linux 5.13.

use std::{io, path::Path};

/// Where the host-wide memory pressure lives.
const HOST_MEMORY: &str = "/proc/pressure/memory";

/// The kernel's internal `ENOTSUPP`, which some kernels leak to userspace from cgroup
/// pressure files; `libc` only has the POSIX `EOPNOTSUPP`.
const ENOTSUPP: i32 = 524;

/// One line of a pressure file: stall percentages over 10 s, 60 s and 300 s windows, and
/// the total stall time since boot.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct PressureLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

/// `some`: at least one task stalled; `full`: every non-idle task stalled at once.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Pressure {
    pub some: PressureLine,
    pub full: Option<PressureLine>,
}

#[derive(Debug, thiserror::Error)]
pub enum PsiError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("pressure data has no `some` line")]
    MissingSome,
    #[error("pressure line {line:?} has no {field}")]
    MissingField { line: String, field: &'static str },
    #[error("pressure line {line:?} has a bad value for {field}")]
    BadValue {
        line: String,
        field: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("pressure data repeats its {kind:?} line")]
    Duplicate { kind: &'static str },
}

/// Parses the text of a pressure file:
///
/// ```text
/// some avg10=0.00 avg60=0.00 avg300=0.00 total=4892
/// full avg10=0.00 avg60=0.00 avg300=0.00 total=3128
/// ```
///
/// Lines of kinds other than `some` and `full`, and keys other than the four known, are
/// skipped so that a kernel adding some does not break the agent.
pub fn parse(text: &str) -> Result<Pressure, PsiError> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let Some((kind, rest)) = line.trim().split_once(char::is_whitespace) else {
            continue;
        };
        let (slot, kind) = match kind {
            "some" => (&mut some, "some"),
            "full" => (&mut full, "full"),
            _ => continue,
        };
        if slot.is_some() {
            return Err(PsiError::Duplicate { kind });
        }
        *slot = Some(parse_line(line, rest)?);
    }
    Ok(Pressure {
        some: some.ok_or(PsiError::MissingSome)?,
        full,
    })
}

/// The `key=value` fields after a line's kind.
fn parse_line(line: &str, fields: &str) -> Result<PressureLine, PsiError> {
    let (mut avg10, mut avg60, mut avg300, mut total_us) = (None, None, None, None);
    for field in fields.split_whitespace() {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "avg10" => avg10 = Some(percent(line, "avg10", value)?),
            "avg60" => avg60 = Some(percent(line, "avg60", value)?),
            "avg300" => avg300 = Some(percent(line, "avg300", value)?),
            "total" => {
                total_us = Some(value.parse::<u64>().map_err(|e| PsiError::BadValue {
                    line: line.to_string(),
                    field: "total",
                    source: Box::new(e),
                })?)
            }
            _ => {}
        }
    }
    let missing = |field| PsiError::MissingField {
        line: line.to_string(),
        field,
    };
    Ok(PressureLine {
        avg10: avg10.ok_or_else(|| missing("avg10"))?,
        avg60: avg60.ok_or_else(|| missing("avg60"))?,
        avg300: avg300.ok_or_else(|| missing("avg300"))?,
        total_us: total_us.ok_or_else(|| missing("total"))?,
    })
}

/// A percentage; `f64::from_str` also accepts `NaN` and `inf`, which no kernel writes and
/// which would poison any arithmetic downstream.
fn percent(line: &str, field: &'static str, value: &str) -> Result<f64, PsiError> {
    let bad = |source: Box<dyn std::error::Error + Send + Sync>| PsiError::BadValue {
        line: line.to_string(),
        field,
        source,
    };
    let v: f64 = value.parse().map_err(|e| bad(Box::new(e)))?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad(format!("{value} is not a percentage").into()));
    }
    Ok(v)
}

/// Host-wide memory pressure; `Ok(None)` on kernels without PSI.
pub fn read_host_memory() -> Result<Option<Pressure>, PsiError> {
    read_file(Path::new(HOST_MEMORY))
}

/// Any pressure file, e.g. a cgroup's `memory.pressure`; `Ok(None)` if it is missing or
/// PSI is disabled.
pub fn read_file(path: &Path) -> Result<Option<Pressure>, PsiError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).map(Some),
        Err(e) if is_unavailable(&e) => Ok(None),
        Err(source) => Err(PsiError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Errors that mean "this kernel or cgroup has no pressure data", not a fault.
fn is_unavailable(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | ENOTSUPP))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMORY: &str = "some avg10=1.53 avg60=0.87 avg300=0.20 total=4892331\n\
                          full avg10=0.51 avg60=0.30 avg300=0.05 total=3128004\n";

    /// `/proc/pressure/cpu` before Linux 5.13: no `full` line.
    const CPU_OLD: &str = "some avg10=12.00 avg60=4.25 avg300=1.00 total=99\n";

    #[test]
    fn parses_some_and_full() {
        let p = parse(MEMORY).unwrap();
        assert_eq!(
            p.some,
            PressureLine {
                avg10: 1.53,
                avg60: 0.87,
                avg300: 0.20,
                total_us: 4_892_331
            }
        );
        assert_eq!(p.full.unwrap().total_us, 3_128_004);
        assert_eq!(p.full.unwrap().avg10, 0.51);
    }

    #[test]
    fn full_is_optional() {
        let p = parse(CPU_OLD).unwrap();
        assert_eq!(p.some.avg10, 12.0);
        assert_eq!(p.full, None);
    }

    #[test]
    fn tolerates_unknown_keys_and_lines() {
        let p =
            parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=1 avg1=3.0\nwhat x=1\n\n").unwrap();
        assert_eq!(p.some.total_us, 1);
    }

    #[test]
    fn rejects_odd_input() {
        assert!(matches!(parse(""), Err(PsiError::MissingSome)));
        assert!(matches!(
            parse("full avg10=0.00 avg60=0.00 avg300=0.00 total=1"),
            Err(PsiError::MissingSome)
        ));
        assert!(matches!(
            parse("some avg10=0.00 avg300=0.00 total=1"),
            Err(PsiError::MissingField { field: "avg60", .. })
        ));
        assert!(matches!(
            parse("some avg10=x avg60=0.00 avg300=0.00 total=1"),
            Err(PsiError::BadValue { field: "avg10", .. })
        ));
        assert!(matches!(
            parse("some avg10=NaN avg60=0.00 avg300=0.00 total=1"),
            Err(PsiError::BadValue { field: "avg10", .. })
        ));
        assert!(matches!(
            parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=-1"),
            Err(PsiError::BadValue { field: "total", .. })
        ));
        assert!(matches!(
            parse(&format!("{CPU_OLD}{CPU_OLD}")),
            Err(PsiError::Duplicate { kind: "some" })
        ));
    }

    #[test]
    fn missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read_file(&dir.path().join("memory.pressure")).unwrap(),
            None
        );
    }

    #[test]
    fn reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.pressure");
        std::fs::write(&path, MEMORY).unwrap();
        assert_eq!(read_file(&path).unwrap(), Some(parse(MEMORY).unwrap()));
    }

    #[test]
    fn live_host_memory() {
        if !Path::new(HOST_MEMORY).exists() {
            eprintln!("skipped: {HOST_MEMORY} is missing (kernel without PSI)");
            return;
        }
        let p = read_host_memory().unwrap().expect("PSI present");
        assert!(p.full.is_some(), "memory pressure always has a full line");
    }
}

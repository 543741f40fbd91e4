//! tracefs: making sure it is mounted, and reading tracepoint `format` files.
//!
//! aya attaches tracepoints through tracefs (`/sys/kernel/tracing`); fresh machines often
//! have it unmounted. Field offsets come from each tracepoint's `format` file because the
//! record layout changes between kernels.

use std::{
    collections::HashMap,
    ffi::CString,
    path::{Path, PathBuf},
};

/// Where aya looks for tracefs first, and where the agent mounts it.
pub const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted at {TRACEFS} and mounting it is disabled (agent.mount_tracefs = false)")]
    NotMounted,
    #[error("cannot mount tracefs at {TRACEFS}")]
    Mount {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot parse field line {line:?}")]
    Parse { path: PathBuf, line: String },
}

/// Mounts tracefs when it is missing. Returns whether it mounted it.
pub fn ensure_mounted(allow_mount: bool) -> Result<bool, TracefsError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(false);
    }
    if !allow_mount {
        return Err(TracefsError::NotMounted);
    }
    let c = |s: &str| CString::new(s).expect("no NUL in constant");
    let (source, target, fstype) = (c("tracefs"), c(TRACEFS), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::Mount {
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(true)
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The C type as tracefs prints it (`const void *`, `__data_loc char[]`, `__u8`).
    pub c_type: String,
    pub offset: u16,
    pub size: u16,
}

impl Field {
    pub fn is_data_loc(&self) -> bool {
        self.c_type.starts_with("__data_loc")
    }
}

/// A tracepoint's record layout.
#[derive(Debug, Clone, Default)]
pub struct Format {
    pub fields: HashMap<String, Field>,
}

impl Format {
    /// Reads `events/<category>/<name>/format`; `Ok(None)` when the kernel has no such
    /// tracepoint.
    pub fn read(root: &Path, category: &str, name: &str) -> Result<Option<Self>, TracefsError> {
        let path = root.join("events").join(category).join(name).join("format");
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path).map(Some),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TracefsError::Read { path, source }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, TracefsError> {
        let mut fields = HashMap::new();
        for line in text.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let bad = || TracefsError::Parse {
                path: path.to_path_buf(),
                line: line.to_string(),
            };
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().ok_or_else(bad)?;
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse::<u16>().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse::<u16>().ok();
                }
            }
            let (c_type, name) = decl.rsplit_once(char::is_whitespace).ok_or_else(bad)?;
            // `__u8 saddr[4]` names the field `saddr`; `__data_loc char[] comm` keeps its
            // brackets in the type.
            let name = name
                .split('[')
                .next()
                .unwrap_or(name)
                .trim_start_matches('*');
            fields.insert(
                name.to_string(),
                Field {
                    c_type: c_type.trim().to_string(),
                    offset: offset.ok_or_else(bad)?,
                    size: size.ok_or_else(bad)?,
                },
            );
        }
        Ok(Self { fields })
    }

    pub fn get(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET: &str = "name: tcp_send_reset
ID: 1503
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__data_loc char[] comm;\toffset:60;\tsize:4;\tsigned:0;

print fmt: \"skbaddr=%p\"
";

    #[test]
    fn parses_fields() {
        let f = Format::parse(SEND_RESET, Path::new("format")).unwrap();
        assert_eq!(f.get("skaddr").unwrap().offset, 16);
        assert_eq!(f.get("state").unwrap().c_type, "int");
        assert_eq!(f.get("reason").unwrap().c_type, "enum sk_rst_reason");
        let saddr = f.get("saddr").unwrap();
        assert_eq!((saddr.offset, saddr.size), (32, 28));
        assert!(f.get("comm").unwrap().is_data_loc());
        assert!(!saddr.is_data_loc());
        assert_eq!(f.get("common_type").unwrap().offset, 0);
    }

    #[test]
    fn rejects_garbage() {
        let err = Format::parse("\tfield:int x;\toffset:zz;\tsize:4;\n", Path::new("f"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("int x"), "{err}");
    }
}

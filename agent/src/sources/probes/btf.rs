//! Just enough of the [BTF format](https://docs.kernel.org/bpf/btf.html) to find where a
//! kernel struct keeps a field. Rust eBPF programs get no CO-RE relocations, so the agent
//! resolves the few offsets it needs (`sock.sk_err`, `task_struct.exit_code`,
//! `tcp_sock.bytes_received`…) here and passes them to the programs.
//!
//! The kernel's own BTF is at `/sys/kernel/btf/vmlinux` (`CONFIG_DEBUG_INFO_BTF`, Linux 5.2+).

use std::{collections::HashMap, path::Path};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not BTF data (bad magic or truncated header)")]
    Header,
    #[error("BTF type {id} is truncated or of unknown kind {kind}")]
    Type { id: u32, kind: u32 },
}

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: u32,
    /// Referenced type for modifiers and typedefs.
    target: u32,
    members: Vec<Member>,
    /// An enum's constants: (name, value).
    values: Vec<(u32, i64)>,
}

/// Parsed BTF: types (only what offset lookups need) and the string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
    enums_by_name: HashMap<String, u32>,
}

impl Btf {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| {
            data.get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if u16_at(0) != Some(MAGIC) {
            return Err(BtfError::Header);
        }
        let field = |o| u32_at(o).map(|v| v as usize).ok_or(BtfError::Header);
        let hdr_len = field(4)?;
        let (type_off, type_len) = (field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Header)?
            .to_vec();
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            target: 0,
            members: Vec::new(),
            values: Vec::new(),
        }];
        let mut pos = hdr_len + type_off;
        let end = pos + type_len;
        while pos < end {
            let id = types.len() as u32;
            let (name, info, size_or_type) = match (u32_at(pos), u32_at(pos + 4), u32_at(pos + 8)) {
                (Some(a), Some(b), Some(c)) => (a, b, c),
                _ => return Err(BtfError::Type { id, kind: 0 }),
            };
            pos += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let mut values = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        let (Some(name), Some(type_id), Some(offset)) =
                            (u32_at(m), u32_at(m + 4), u32_at(m + 8))
                        else {
                            return Err(BtfError::Type { id, kind });
                        };
                        let bit_offset = if kind_flag {
                            offset & 0xff_ffff
                        } else {
                            offset
                        };
                        members.push(Member {
                            name,
                            type_id,
                            bit_offset,
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM => {
                    for i in 0..vlen {
                        let e = pos + i * 8;
                        let (Some(name), Some(value)) = (u32_at(e), u32_at(e + 4)) else {
                            return Err(BtfError::Type { id, kind });
                        };
                        // Signed unless kind_flag says unsigned (Linux 6.0+ BTF).
                        let value = if kind_flag {
                            i64::from(value)
                        } else {
                            i64::from(value as i32)
                        };
                        values.push((name, value));
                    }
                    vlen * 8
                }
                KIND_ENUM64 => {
                    for i in 0..vlen {
                        let e = pos + i * 12;
                        let (Some(name), Some(lo), Some(hi)) =
                            (u32_at(e), u32_at(e + 4), u32_at(e + 8))
                        else {
                            return Err(BtfError::Type { id, kind });
                        };
                        values.push((name, ((u64::from(hi) << 32) | u64::from(lo)) as i64));
                    }
                    vlen * 12
                }
                KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC => vlen * 12,
                2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16
                | KIND_TYPE_TAG => 0,
                _ => return Err(BtfError::Type { id, kind }),
            };
            pos += extra;
            types.push(Type {
                kind,
                name,
                target: size_or_type,
                members,
                values,
            });
        }
        let mut btf = Self {
            types,
            strings,
            structs_by_name: HashMap::new(),
            enums_by_name: HashMap::new(),
        };
        let mut structs = HashMap::new();
        let mut enums = HashMap::new();
        for (id, ty) in btf.types.iter().enumerate() {
            // Forward declarations have no members; the full definition is the one to use.
            let index = match ty.kind {
                KIND_STRUCT if !ty.members.is_empty() => &mut structs,
                KIND_ENUM | KIND_ENUM64 if !ty.values.is_empty() && ty.name != 0 => &mut enums,
                _ => continue,
            };
            index
                .entry(btf.string(ty.name).to_string())
                .or_insert(id as u32);
        }
        btf.structs_by_name = structs;
        btf.enums_by_name = enums;
        Ok(btf)
    }

    /// The value of the constant `constant` of `enum name`.
    pub fn enum_value(&self, name: &str, constant: &str) -> Option<i64> {
        let ty = &self.types[*self.enums_by_name.get(name)? as usize];
        ty.values
            .iter()
            .find(|(n, _)| self.string(*n) == constant)
            .map(|(_, v)| *v)
    }

    fn string(&self, offset: u32) -> &str {
        let start = offset as usize;
        let bytes = self.strings.get(start..).unwrap_or_default();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.target
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// Bit offset of `name` within the struct/union `ty`, looking through anonymous
    /// members, with the member's type id.
    fn find_member(&self, ty: &Type, name: &str) -> Option<(u32, u32)> {
        for m in &ty.members {
            if self.string(m.name) == name {
                return Some((m.bit_offset, m.type_id));
            }
            if m.name == 0 {
                let inner = self.resolve(m.type_id)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                    if let Some((off, id)) = self.find_member(inner, name) {
                        return Some((m.bit_offset + off, id));
                    }
                }
            }
        }
        None
    }

    /// The byte offset of `path` (`["__sk_common", "skc_state"]`) within `struct name`.
    pub fn field_offset(&self, name: &str, path: &[&str]) -> Option<u32> {
        self.field(name, path).map(|(offset, _)| offset)
    }

    /// [`Btf::field_offset`] of a field that is an integer of `size` bytes (through
    /// typedefs such as `u64`): a program reading it as such reads the right thing.
    pub fn int_field_offset(&self, name: &str, path: &[&str], size: u32) -> Option<u32> {
        let (offset, type_id) = self.field(name, path)?;
        let ty = self.resolve(type_id)?;
        // For an INT, the word after `info` is its size in bytes.
        (ty.kind == KIND_INT && ty.target == size).then_some(offset)
    }

    /// The byte offset of `path` within `struct name`, with the field's type id.
    fn field(&self, name: &str, path: &[&str]) -> Option<(u32, u32)> {
        let mut ty = &self.types[*self.structs_by_name.get(name)? as usize];
        let mut bits = 0;
        let mut field_type = 0;
        for (i, field) in path.iter().enumerate() {
            let (off, type_id) = self.find_member(ty, field)?;
            bits += off;
            field_type = type_id;
            if i + 1 < path.len() {
                ty = self.resolve(type_id)?;
                if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
                    return None;
                }
            }
        }
        (bits % 8 == 0).then_some((bits / 8, field_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob:
    /// `struct inner { int a; int b; }`
    /// `struct outer { int x; union { int y; struct inner in; }; }` (anonymous union at 8)
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0x\0y\0in\0";
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            let pos = strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap();
            (pos + 1) as u32
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes)
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner { a @0, b @32 }
        push(&[s("inner"), (KIND_STRUCT << 24) | 2, 8]);
        push(&[s("a"), 1, 0, s("b"), 1, 32]);
        // 3: anonymous union { y @0, in @0 }
        push(&[0, (KIND_UNION << 24) | 2, 8]);
        push(&[s("y"), 1, 0, s("in"), 2, 0]);
        // 4: struct outer { x @0, <anon> @64 }
        push(&[s("outer"), (KIND_STRUCT << 24) | 2, 16]);
        push(&[s("x"), 1, 0, 0, 3, 64]);
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(strings);
        data
    }

    #[test]
    fn finds_fields_through_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.field_offset("outer", &["x"]), Some(0));
        assert_eq!(btf.field_offset("outer", &["y"]), Some(8));
        assert_eq!(btf.field_offset("outer", &["in", "b"]), Some(12));
        assert_eq!(btf.field_offset("outer", &["nope"]), None);
        assert_eq!(btf.field_offset("missing", &["x"]), None);
    }

    #[test]
    fn integer_fields_are_checked_for_their_size() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.int_field_offset("outer", &["in", "b"], 4), Some(12));
        assert_eq!(btf.int_field_offset("outer", &["in", "b"], 8), None);
        // A struct is not an integer.
        assert_eq!(btf.int_field_offset("outer", &["in"], 8), None);
    }

    #[test]
    fn rejects_non_btf() {
        assert!(matches!(
            Btf::parse(b"hello world, not btf at all"),
            Err(BtfError::Header)
        ));
    }

    #[test]
    fn reads_the_running_kernel_when_present() {
        if !Path::new(VMLINUX).exists() {
            eprintln!("skipped: no {VMLINUX}");
            return;
        }
        let btf = Btf::from_file(VMLINUX).unwrap();
        let sk_err = btf.field_offset("sock", &["sk_err"]).unwrap();
        assert!(sk_err > 0 && sk_err < 2048, "{sk_err}");
        // skc_state follows skc_family in struct sock_common, at the start of struct sock.
        let state = btf
            .field_offset("sock", &["__sk_common", "skc_state"])
            .unwrap();
        let family = btf
            .field_offset("sock", &["__sk_common", "skc_family"])
            .unwrap();
        assert_eq!(state, family + 2);
        assert!(btf.field_offset("task_struct", &["exit_code"]).is_some());
        // The byte counters of followed connections: u64 in struct tcp_sock, which starts
        // with its struct sock (the programs add the offsets to the sock's address).
        assert_eq!(
            btf.field_offset("tcp_sock", &["inet_conn", "icsk_inet", "sk"]),
            Some(0)
        );
        let received = btf.int_field_offset("tcp_sock", &["bytes_received"], 8);
        let acked = btf.int_field_offset("tcp_sock", &["bytes_acked"], 8);
        assert!(received.is_some_and(|o| o > sk_err), "{received:?}");
        assert!(acked.is_some_and(|o| o > sk_err), "{acked:?}");
    }
}

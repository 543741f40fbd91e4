//! Builds the kernel programs (`agent-ebpf`) for the BPF target with the nightly toolchain.
//! `AYA_BUILD_SKIP=1` skips that for userspace-only work (`cargo clippy`, unit tests): the
//! binary then carries an empty object and refuses to start the agent, saying why.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};

fn main() -> anyhow::Result<()> {
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        let out =
            PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
        std::fs::write(out.join("why502"), []).context("cannot write the empty object")?;
        return Ok(());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("agent/ has no parent directory"))?
        .join("agent-ebpf");
    let root_dir = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("nightly"),
    )
}

//! Builds the kernel programs (`agent-ebpf`) for the BPF target with the nightly toolchain;
//! `AYA_BUILD_SKIP=1` skips it for userspace-only work.

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow::anyhow!("agent/ has no parent directory"))?
        .join("agent-ebpf");
    let root_dir = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("nightly"),
    )
}

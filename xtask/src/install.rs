//! `cargo xtask install` and `uninstall`: the .deb's files in the same places, for hosts
//! that are not Debian-based or build from source. The list is the package's own
//! (agent/Cargo.toml's `[package.metadata.deb]`, read through `cargo metadata`), so the two
//! cannot drift; `--prefix` moves what the package puts under /usr (/etc stays /etc: the
//! unit and the agent read /etc/why502/why502.toml). Every file written is recorded in a
//! manifest, which `uninstall` removes exactly, keeping a configuration edited since.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cmd;
use crate::deb::{self, Build};

/// Where the package puts the binary; the unit's ExecStart names it.
const PACKAGE_PREFIX: &str = "/usr";
const CONFIG: &str = "/etc/why502/why502.toml";

pub struct Options {
    /// Replaces /usr in the package's paths (`/usr/local`).
    pub prefix: PathBuf,
    /// Writes under this directory instead of `/` (staging, the tests); no systemctl then.
    pub destdir: Option<PathBuf>,
    /// Takes the release binary that is there instead of building it.
    pub no_build: bool,
}

/// One file to install: where it comes from, its absolute path on the host, its mode.
struct Item {
    source: PathBuf,
    dest: PathBuf,
    mode: u32,
}

pub fn install(root: &Path, options: &Options) -> Result<()> {
    check_target(options)?;
    let build = if options.no_build {
        Build::Existing
    } else {
        Build::Release
    };
    let binary = deb::stage(root, build)?;
    let items = layout(root, &binary, &options.prefix)?;
    let mut manifest = String::new();
    for item in &items {
        let path = on_disk(options, &item.dest);
        // Like a dpkg conffile: the administrator's edits win.
        if item.dest == Path::new(CONFIG)
            && path.exists()
            && fs::read(&path)? != fs::read(&item.source)?
        {
            println!("==> kept {}: it differs from the example", path.display());
            continue;
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        write_item(item, &path, &options.prefix)?;
        println!("==> installed {}", path.display());
        manifest.push_str(&item.dest.to_string_lossy());
        if item.dest == Path::new(CONFIG) {
            // Its digest tells `uninstall` whether it was edited since.
            manifest.push(' ');
            manifest.push_str(&sha256(&path)?);
        }
        manifest.push('\n');
    }
    let manifest_path = on_disk(options, &manifest_file(&options.prefix));
    fs::write(&manifest_path, manifest)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    println!(
        "==> recorded the files in {} (for cargo xtask uninstall)",
        manifest_path.display()
    );
    if options.destdir.is_none() {
        if systemd_runs() {
            systemctl(&["daemon-reload"])?;
            systemctl(&["enable", "--now", "why502"])?;
            println!("==> why502 is enabled and started: systemctl status why502; why502 status");
        } else {
            println!(
                "==> systemd is not running (no /run/systemd/system): the unit is installed, not \
                 enabled; start the agent by hand, or `systemctl enable --now why502` under systemd"
            );
        }
    }
    Ok(())
}

pub fn uninstall(options: &Options) -> Result<()> {
    if options.destdir.is_none() && !crate::is_root() {
        bail!("uninstalling from / needs root (sudo -E cargo xtask uninstall)");
    }
    let manifest_path = on_disk(options, &manifest_file(&options.prefix));
    let manifest = fs::read_to_string(&manifest_path).with_context(|| {
        format!(
            "cannot read {}: nothing installed by `cargo xtask install` with this --prefix",
            manifest_path.display()
        )
    })?;
    if options.destdir.is_none() && systemd_runs() {
        systemctl(&["disable", "--now", "why502"])?;
    }
    for line in manifest.lines() {
        let (dest, digest) = match line.split_once(' ') {
            Some((dest, digest)) => (dest, Some(digest)),
            None => (line, None),
        };
        let path = on_disk(options, Path::new(dest));
        if !path.exists() {
            println!("==> {} was already gone", path.display());
            continue;
        }
        if let Some(digest) = digest {
            if sha256(&path)? != digest {
                println!("==> kept {}: it was modified since install", path.display());
                continue;
            }
        }
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        println!("==> removed {}", path.display());
    }
    fs::remove_file(&manifest_path)
        .with_context(|| format!("cannot remove {}", manifest_path.display()))?;
    // The package's own directories, once empty; shared ones (man1, completions) stay.
    let own_dirs = [
        manifest_path.parent().map(Path::to_path_buf),
        Some(on_disk(options, Path::new("/etc/why502"))),
    ];
    for dir in own_dirs.into_iter().flatten() {
        if fs::remove_dir(&dir).is_ok() {
            println!("==> removed {}", dir.display());
        }
    }
    if options.destdir.is_none() && systemd_runs() {
        systemctl(&["daemon-reload"])?;
    }
    println!("==> left /var/lib/why502 (the incident store): rm -rf it to drop the history");
    Ok(())
}

/// Installing over the package's files would leave dpkg's record wrong.
fn check_target(options: &Options) -> Result<()> {
    if options.destdir.is_some() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!("installing into / needs root (sudo -E cargo xtask install), or give --destdir");
    }
    if Path::new("/var/lib/dpkg/info/why502.list").exists() {
        bail!("the why502 package is installed (dpkg -l why502): remove it first (dpkg -r why502)");
    }
    Ok(())
}

/// The package's assets and unit, with their paths under `prefix`.
fn layout(root: &Path, binary: &Path, prefix: &Path) -> Result<Vec<Item>> {
    let deb = deb_metadata(root)?;
    let agent_dir = root.join("agent");
    let mut items = Vec::new();
    let assets = deb["assets"]
        .as_array()
        .context("no assets in [package.metadata.deb]")?;
    for asset in assets {
        let fields: Vec<&str> = asset
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let [source, dest, mode] = fields[..] else {
            bail!("asset {asset} is not [source, dest, mode]");
        };
        let mode = u32::from_str_radix(mode, 8).with_context(|| format!("mode of {asset}"))?;
        let sources = if source == "target/release/why502" {
            vec![binary.to_path_buf()]
        } else {
            expand(&agent_dir.join(source))?
        };
        // Debian's own checker's notes belong to the package only.
        if dest.starts_with("usr/share/lintian/") {
            continue;
        }
        for source in sources {
            let name = source.file_name().context("asset without a file name")?;
            let mut dest = host_path(dest, prefix)?;
            if dest.to_string_lossy().ends_with('/') {
                dest = dest.join(name);
            }
            // cargo-deb gzips man pages; so does `write_item`.
            if is_man_page(&dest) {
                dest.set_extension("1.gz");
            }
            items.push(Item { source, dest, mode });
        }
    }
    let units = &deb["systemd-units"];
    let unit_dir = units["unit-scripts"]
        .as_str()
        .context("no systemd-units.unit-scripts")?;
    let unit_name = units["unit-name"]
        .as_str()
        .context("no systemd-units.unit-name")?;
    items.push(Item {
        source: agent_dir
            .join(unit_dir)
            .join(format!("{unit_name}.service")),
        // Where cargo-deb puts it too: systemd's own path (also /lib/systemd/system on a
        // merged-/usr host), and systemd searches /usr/local/lib/systemd/system as well.
        dest: prefix.join(format!("lib/systemd/system/{unit_name}.service")),
        mode: 0o644,
    });
    Ok(items)
}

/// `[package.metadata.deb]` of the why502 package, as cargo reads it.
fn deb_metadata(root: &Path) -> Result<Value> {
    let Some(text) = cmd::stdout(cmd::cargo(root).args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
        "--offline",
    ])) else {
        bail!("`cargo metadata` failed");
    };
    let metadata: Value = serde_json::from_str(&text).context("cargo metadata's JSON")?;
    metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "why502"))
        .map(|package| package["metadata"]["deb"].clone())
        .filter(|deb| deb.is_object())
        .context("no [package.metadata.deb] in agent/Cargo.toml")
}

/// A package path (`usr/share/…`, `etc/…`) on this host: /usr becomes the prefix.
fn host_path(dest: &str, prefix: &Path) -> Result<PathBuf> {
    if let Some(rest) = dest.strip_prefix("usr/") {
        // Keeps a trailing slash: the asset's file name goes there.
        return Ok(PathBuf::from(format!("{}/{rest}", prefix.display())));
    }
    if dest.starts_with("etc/") {
        return Ok(PathBuf::from(format!("/{dest}")));
    }
    bail!("asset destination {dest} is neither under usr/ nor etc/")
}

/// The files a `dir/*.ext` source names (cargo-deb's glob, in the only form used here).
fn expand(source: &Path) -> Result<Vec<PathBuf>> {
    let name = source.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Some(suffix) = name.strip_prefix('*') else {
        return Ok(vec![source.to_path_buf()]);
    };
    let dir = source.parent().context("glob without a directory")?;
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    Ok(files)
}

fn is_man_page(dest: &Path) -> bool {
    dest.parent()
        .is_some_and(|dir| dir.ends_with("share/man/man1"))
}

/// Copies one file: man pages gzipped (`-n`: no name or time, as cargo-deb does), the unit
/// with ExecStart pointing into the prefix, the rest as they are.
fn write_item(item: &Item, path: &Path, prefix: &Path) -> Result<()> {
    let data = if is_man_page(&item.dest) {
        let Some(out) = Command::new("gzip")
            .args(["-9n", "-c"])
            .arg(&item.source)
            .output()
            .ok()
            .filter(|out| out.status.success())
        else {
            bail!("gzip of {} failed", item.source.display());
        };
        out.stdout
    } else {
        let data = fs::read(&item.source)
            .with_context(|| format!("cannot read {}", item.source.display()))?;
        if item.dest.extension().is_some_and(|e| e == "service") {
            let text = String::from_utf8(data).context("the unit is not UTF-8")?;
            let packaged = format!("ExecStart={PACKAGE_PREFIX}/bin/why502 ");
            let ours = format!("ExecStart={}/bin/why502 ", prefix.display());
            text.replace(&packaged, &ours).into_bytes()
        } else {
            data
        }
    };
    // Replaced, not written through: a running binary cannot be opened for writing.
    let _ = fs::remove_file(path);
    fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(item.mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

/// `<prefix>/share/why502/installed-files`: next to the rules and dashboard, the package's
/// own directory.
fn manifest_file(prefix: &Path) -> PathBuf {
    prefix.join("share/why502/installed-files")
}

fn on_disk(options: &Options, path: &Path) -> PathBuf {
    match &options.destdir {
        Some(destdir) => destdir.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    }
}

fn sha256(path: &Path) -> Result<String> {
    let Some(out) = cmd::stdout(Command::new("sha256sum").arg(path)) else {
        bail!("sha256sum {} failed", path.display());
    };
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// systemd's own test for "booted with systemd" (sd_booted(3)).
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> Result<()> {
    cmd::run(
        &format!("systemctl {}", args.join(" ")),
        Command::new("systemctl").args(args),
    )
}

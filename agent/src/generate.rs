//! `why502 generate-assets DIR`: the man pages and shell completions, generated from the
//! clap definitions so that they never drift from `--help`. The packaging (`cargo xtask
//! deb`, `cargo xtask install`) runs it with the binary it installs.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use why502::cli::{Cli, VERSION};

/// The shells whose completions are packaged, and each file's name as its loader expects
/// it: bash-completion looks the command's own name up, zsh's compinit wants `_why502`,
/// fish `why502.fish`.
const COMPLETIONS: [(Shell, &str); 3] = [
    (Shell::Bash, "why502"),
    (Shell::Zsh, "_why502"),
    (Shell::Fish, "why502.fish"),
];

/// Writes `dir/man/why502.1` and one page per subcommand (`why502-agent.1`, …), and
/// `dir/completions/` with one file per shell. Returns the paths written, relative to `dir`.
pub fn write_assets(dir: &Path) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let man = dir.join("man");
    fs::create_dir_all(&man).with_context(|| format!("cannot create {}", man.display()))?;
    let cli = Cli::command();
    write_man_page(&man, "why502", cli.clone(), &mut written)?;
    for sub in cli.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        // The page is why502-agent(1), and its synopsis says `why502 agent`, not `agent`.
        let title = format!("why502-{}", sub.get_name());
        let sub = sub
            .clone()
            .bin_name(format!("why502 {}", sub.get_name()))
            .version(VERSION);
        write_man_page(&man, &title, sub, &mut written)?;
    }

    let completions = dir.join("completions");
    fs::create_dir_all(&completions)
        .with_context(|| format!("cannot create {}", completions.display()))?;
    for (shell, file) in COMPLETIONS {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut visible_command(), "why502", &mut text);
        let path = completions.join(file);
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(format!("completions/{file}"));
    }
    Ok(written)
}

/// The command line without its hidden subcommands: clap_complete completes them too,
/// clap_mangen does not. A Command cannot drop a subcommand, so this one is rebuilt from
/// the parts completion looks at: name, version, top-level options, subcommands.
fn visible_command() -> clap::Command {
    let full = Cli::command();
    clap::Command::new("why502")
        .version(VERSION)
        .subcommand_required(true)
        .args(full.get_arguments().cloned())
        .subcommands(
            full.get_subcommands()
                .filter(|sub| !sub.is_hide_set())
                .cloned(),
        )
}

fn write_man_page(
    dir: &Path,
    title: &str,
    cmd: clap::Command,
    written: &mut Vec<String>,
) -> Result<()> {
    let file = format!("{title}.1");
    let mut text = Vec::new();
    clap_mangen::Man::new(cmd)
        .title(title)
        .render(&mut text)
        .with_context(|| format!("cannot render {file}"))?;
    let path = dir.join(&file);
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(format!("man/{file}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_page_per_visible_command_and_every_completion() {
        let dir = tempfile::tempdir().unwrap();
        let mut written = write_assets(dir.path()).unwrap();
        written.sort();
        assert_eq!(
            written,
            [
                "completions/_why502",
                "completions/why502",
                "completions/why502.fish",
                "man/why502-agent.1",
                "man/why502-explain.1",
                "man/why502-incidents.1",
                "man/why502-status.1",
                "man/why502-watch.1",
                "man/why502.1",
            ]
        );
        let agent = fs::read_to_string(dir.path().join("man/why502-agent.1")).unwrap();
        // The subcommand's page is titled by its full name and documents its options.
        assert!(agent.contains(".TH why502-agent 1"), "{agent}");
        assert!(agent.contains("check\\-config"), "{agent}");
        let bash = fs::read_to_string(dir.path().join("completions/why502")).unwrap();
        assert!(bash.contains("complete -F _why502"), "{bash}");
        // The hidden packaging command is nobody's to complete.
        assert!(!bash.contains("generate-assets"), "{bash}");
    }
}

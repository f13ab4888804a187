//! Man pages and shell completions from the clap definitions, for `make install`.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

use crate::cli::Invocation;
use crate::failure::Failure;

/// Writes `kvmisolate.1` and `kvmisolate-SUBCOMMAND.1` (visible subcommands) into `dir`.
pub fn man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let cmd = crate::cli::command();
    clap_mangen::generate_to(cmd.clone(), dir)?;
    let mut files = vec![dir.join("kvmisolate.1")];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        files.push(dir.join(format!("kvmisolate-{}.1", sub.get_name())));
    }
    Ok(files)
}

/// Writes `kvmisolate.bash`, `_kvmisolate` (zsh) and `kvmisolate.fish` into `dir`; install
/// them as `bash-completion/completions/kvmisolate`, `zsh/site-functions/_kvmisolate` and
/// `fish/vendor_completions.d/kvmisolate.fish` below `$(PREFIX)/share`.
pub fn completions(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for (shell, file) in [
        (Shell::Bash, "kvmisolate.bash"),
        (Shell::Zsh, "_kvmisolate"),
        (Shell::Fish, "kvmisolate.fish"),
    ] {
        let mut text = Vec::new();
        let mut cmd = crate::cli::command();
        clap_complete::generate(shell, &mut cmd, "kvmisolate", &mut text);
        let path = dir.join(file);
        std::fs::write(&path, text)?;
        files.push(path);
    }
    Ok(files)
}

/// The hidden build-time generators (no bus needed).
pub fn run(invocation: Invocation) -> Result<(), Failure> {
    let (what, dir, result) = match invocation {
        Invocation::GenerateMan(dir) => {
            let r = man_pages(&dir);
            ("man pages", dir, r)
        }
        Invocation::GenerateCompletions(dir) => {
            let r = completions(&dir);
            ("completions", dir, r)
        }
        Invocation::Cli(_) => return Ok(()),
    };
    result
        .map(|_files| ())
        .map_err(|e| Failure::other(format!("cannot write {what} to {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_man_pages_for_every_visible_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let files = man_pages(dir.path()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "kvmisolate-bench.1",
                "kvmisolate-check.1",
                "kvmisolate-isolate.1",
                "kvmisolate-monitor.1",
                "kvmisolate-plan.1",
                "kvmisolate-release.1",
                "kvmisolate-run.1",
                "kvmisolate-status.1",
                "kvmisolate-top.1",
                "kvmisolate.1"
            ]
        );
        assert!(files.iter().all(|f| f.exists()));
        let main = std::fs::read_to_string(dir.path().join("kvmisolate.1")).unwrap();
        assert!(
            main.contains("unreachable"),
            "exit codes reach the man page"
        );
        assert!(
            !main.contains("generate\\-man"),
            "hidden commands stay hidden"
        );
    }

    #[test]
    fn writes_completions() {
        let dir = tempfile::tempdir().unwrap();
        let files = completions(dir.path()).unwrap();
        assert_eq!(files.len(), 3);
        let bash = std::fs::read_to_string(dir.path().join("kvmisolate.bash")).unwrap();
        assert!(bash.contains("isolate"));
        assert!(
            !bash.contains("generate-man"),
            "hidden commands are not completed"
        );
        assert!(dir.path().join("_kvmisolate").exists());
        assert!(dir.path().join("kvmisolate.fish").exists());
    }
}

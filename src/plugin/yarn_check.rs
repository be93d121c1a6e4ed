//! Yarn scripts that use the bridge's commands in a game that does not run the bridge:
//! `bevy_yarnspinner` ignores commands nobody registered, so without this check a writer's
//! `<<generate_line>>` would do nothing, silently.

use std::path::{Path, PathBuf};

/// The bridge's commands, as a script writes them.
const COMMANDS: [&str; 4] = [
    "<<generate_line",
    "<<generate_reply",
    "<<generate_options",
    "<<generate_action",
];

/// How deep, how many entries and how large a file the scan goes: an asset folder is small,
/// and the scan must end even on a huge or looping one.
const MAX_DEPTH: usize = 8;
const MAX_ENTRIES: usize = 10_000;
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The first use of a bridge command in each `.yarn` file under `dir`, as `path:line:
/// command`.
pub(crate) fn bridge_commands_in(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo: Vec<(PathBuf, usize)> = vec![(dir.to_owned(), 0)];
    let mut seen = 0;
    while let Some((folder, depth)) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                return found;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() && depth < MAX_DEPTH {
                todo.push((path, depth + 1));
            } else if kind.is_file()
                && path.extension().is_some_and(|e| e == "yarn")
                && entry.metadata().is_ok_and(|m| m.len() <= MAX_FILE_BYTES)
                && let Ok(text) = std::fs::read_to_string(&path)
                && let Some((n, command)) = text.lines().enumerate().find_map(|(n, line)| {
                    COMMANDS
                        .iter()
                        .find(|c| line.contains(*c))
                        .map(|c| (n + 1, &c[2..]))
                })
            {
                let shown = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                found.push(format!("{shown}:{n}: `{command}`"));
            }
        }
    }
    found.sort();
    found
}

/// Logs an error for each script that uses the bridge's commands, off the main thread.
/// `why` says what is missing.
pub(crate) fn warn_in_background(dir: PathBuf, why: &'static str) {
    let _ = std::thread::Builder::new()
        .name("llm-dialogue-yarn-check".into())
        .spawn(move || {
            for hit in bridge_commands_in(&dir) {
                tracing::error!("{hit} asks for generated dialogue, but {why}: it will do nothing");
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_bridge_command_of_each_yarn_file_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("yarn-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("dialogue/deep")).unwrap();
        let script =
            "title: A\n---\nGuard: Hi.\n<<generate_options 2>>\n<<generate_line Guard>>\n===\n";
        std::fs::write(dir.join("dialogue/a.yarn"), script).unwrap();
        std::fs::write(dir.join("dialogue/deep/b.yarn"), "<<generate_action X>>").unwrap();
        std::fs::write(dir.join("dialogue/plain.yarn"), "title: B\n---\nHi.\n===\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "<<generate_line X>>").unwrap();
        let found = bridge_commands_in(&dir);
        let sep = std::path::MAIN_SEPARATOR;
        assert_eq!(
            found,
            [
                format!("dialogue{sep}a.yarn:4: `generate_options`"),
                format!("dialogue{sep}deep{sep}b.yarn:1: `generate_action`"),
            ]
        );
        assert!(bridge_commands_in(&dir.join("missing")).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

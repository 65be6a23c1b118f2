//! The training text: files or directories of UTF-8 text, read in a fixed order.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// One text file of the corpus.
#[derive(Debug, Clone)]
pub struct Document {
    pub path: PathBuf,
    pub text: String,
}

/// The files named by `paths`: each file itself, and every file under each directory
/// (recursively, sorted by path, hidden entries skipped).
pub fn list_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Err(Error::Input(
            "no corpus given: name one or more text files or directories".into(),
        ));
    }
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            let before = files.len();
            walk_dir(path, &mut files)?;
            if files.len() == before {
                return Err(Error::Input(format!(
                    "{}: the directory holds no files",
                    path.display()
                )));
            }
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn walk_dir(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            entries.push(path);
        }
    }
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk_dir(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

/// Reads every file of [`list_files`]. A missing, empty or non-UTF-8 file is an error that names
/// the file (and, for bad UTF-8, the byte offset).
pub fn read_corpus(paths: &[PathBuf]) -> Result<Vec<Document>> {
    list_files(paths)?
        .into_iter()
        .map(|path| read_document(&path).map(|text| Document { path, text }))
        .collect()
}

fn read_document(path: &Path) -> Result<String> {
    crate::files::regular(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        return Err(Error::Input(format!("{}: the file is empty", path.display())));
    }
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let byte = e.as_bytes()[offset];
        Error::Input(format!(
            "{}: not UTF-8 text: byte 0x{byte:02X} at offset {offset}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_read_recursively_in_path_order_and_bad_files_are_named() {
        let root = std::env::temp_dir().join(format!("gpt2-corpus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("b")).unwrap();
        std::fs::write(root.join("b/2.txt"), "two").unwrap();
        std::fs::write(root.join("a.txt"), "one").unwrap();
        std::fs::write(root.join(".hidden"), "skip").unwrap();
        let docs = read_corpus(std::slice::from_ref(&root)).unwrap();
        let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(texts, ["one", "two"]);

        std::fs::write(root.join("b/3.txt"), b"ok\xffno").unwrap();
        let err = read_corpus(std::slice::from_ref(&root)).unwrap_err().to_string();
        assert!(err.contains("3.txt") && err.contains("0xFF at offset 2"), "{err}");
        std::fs::write(root.join("b/3.txt"), b"").unwrap();
        let err = read_corpus(std::slice::from_ref(&root)).unwrap_err().to_string();
        assert!(err.contains("3.txt: the file is empty"), "{err}");
        let err = read_corpus(&[root.join("missing.txt")]).unwrap_err().to_string();
        assert!(err.contains("missing.txt"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}

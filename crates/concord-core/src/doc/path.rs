//! Paths into a JSON document: a sequence of map keys and list indexes, and prefix helpers.

use std::fmt;

/// One step of a [`Path`]: a map key or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSeg {
    /// A key of a JSON object.
    Key(String),
    /// An index into a JSON array.
    Index(usize),
}

/// A path from the document root; the empty path is the root itself.
pub type Path = Vec<PathSeg>;

impl PathSeg {
    /// The index, if this step is a list index.
    pub fn index(&self) -> Option<usize> {
        match self {
            PathSeg::Index(i) => Some(*i),
            PathSeg::Key(_) => None,
        }
    }
}

impl From<&str> for PathSeg {
    fn from(k: &str) -> Self {
        PathSeg::Key(k.to_owned())
    }
}

impl From<usize> for PathSeg {
    fn from(i: usize) -> Self {
        PathSeg::Index(i)
    }
}

impl fmt::Display for PathSeg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathSeg::Key(k) => write!(f, "{k:?}"),
            PathSeg::Index(i) => write!(f, "{i}"),
        }
    }
}

/// Formats a path the way it appears on the wire, e.g. `["items",3,"title"]`.
pub struct DisplayPath<'a>(pub &'a [PathSeg]);

impl fmt::Display for DisplayPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, seg) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{seg}")?;
        }
        f.write_str("]")
    }
}

/// Whether `prefix` is a prefix of `path` (equal paths included).
pub fn is_prefix(prefix: &[PathSeg], path: &[PathSeg]) -> bool {
    prefix.len() <= path.len() && path[..prefix.len()] == *prefix
}

/// Whether `prefix` is a proper prefix of `path` (an ancestor of it).
pub fn is_strict_prefix(prefix: &[PathSeg], path: &[PathSeg]) -> bool {
    prefix.len() < path.len() && is_prefix(prefix, path)
}

/// Builds a path from mixed keys and indexes: `doc_path!["items", 3, "title"]`.
#[macro_export]
macro_rules! doc_path {
    ($($seg:expr),* $(,)?) => {
        vec![$($crate::doc::PathSeg::from($seg)),*]
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let a: Path = crate::doc_path!["a", 1];
        let ab: Path = crate::doc_path!["a", 1, "b"];
        assert!(is_prefix(&a, &ab));
        assert!(is_strict_prefix(&a, &ab));
        assert!(is_prefix(&a, &a));
        assert!(!is_strict_prefix(&a, &a));
        assert!(!is_prefix(&ab, &a));
        assert!(is_strict_prefix(&[], &a));
        assert_eq!(DisplayPath(&ab).to_string(), r#"["a",1,"b"]"#);
    }
}

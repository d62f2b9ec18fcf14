//! Bounded echoes of what a peer sent, for error messages.
//!
//! A status message that repeats a client's value verbatim can be made as
//! large as the request (a 1 MiB model id, a shape with 100,000 dimensions);
//! past a client's metadata limit (16 KiB by default in most gRPC stacks) the
//! client then sees a transport error instead of the real one. Every value a
//! peer chose goes into a message through these helpers: strings keep their
//! first [`MAX_CHARS`] characters and say how long they were, shapes their
//! first [`MAX_DIMS`] dimensions and how many there were.

use std::fmt;

/// Characters of a peer's string kept in a message.
pub const MAX_CHARS: usize = 64;
/// Dimensions of a peer's shape kept in a message.
pub const MAX_DIMS: usize = 8;

/// At most [`MAX_CHARS`] characters of `s`, then `… (N bytes)` when cut.
pub fn text(s: &str) -> String {
    text_within(s, MAX_CHARS)
}

/// At most `max` characters of `s`, then `… (N bytes)` when cut (for text
/// that is not the client's own but may carry some of it, such as a
/// library's error message).
pub fn text_within(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}… ({} bytes)", &s[..cut], s.len()),
        None => s.to_string(),
    }
}

/// [`text`] in double quotes, escaped as `{:?}` would (control characters
/// in a client's string do not reach logs or messages raw).
pub fn quoted(s: &str) -> String {
    match s.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &s[..cut], s.len()),
        None => format!("{s:?}"),
    }
}

/// A shape as a peer sent it, bounded: its first [`MAX_DIMS`] dimensions and
/// how many it had. Displays as `[2, 3, 4]`, or `[1, 1, 1, 1, 1, 1, 1, 1, …]
/// (100000 dims)` when cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The first dimensions (at most [`MAX_DIMS`]).
    pub head: Vec<u64>,
    /// How many dimensions the shape had.
    pub len: usize,
}

impl Shape {
    pub fn of<T: Copy + Into<u64>>(dims: &[T]) -> Self {
        Self { head: dims.iter().take(MAX_DIMS).map(|&d| d.into()).collect(), len: dims.len() }
    }

    /// From `usize` dimensions (which `Into<u64>` does not cover).
    pub fn of_usize(dims: &[usize]) -> Self {
        Self { head: dims.iter().take(MAX_DIMS).map(|&d| d as u64).collect(), len: dims.len() }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.head.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        if self.len > self.head.len() {
            write!(f, ", …] ({} dims)", self.len)
        } else {
            f.write_str("]")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_bounded() {
        assert_eq!(text("resnet"), "resnet");
        let long = "x".repeat(1 << 20);
        let t = text(&long);
        assert!(t.len() < 100 && t.ends_with("(1048576 bytes)"), "{t}");
        assert_eq!(quoted("a\nb"), "\"a\\nb\"");
        assert!(quoted(&long).len() < 100);
        // Multi-byte characters are cut on a character boundary.
        let wide = "é".repeat(100);
        assert!(text(&wide).starts_with(&"é".repeat(64)) && text(&wide).ends_with("(200 bytes)"));
        assert_eq!(Shape::of(&[2u32, 3, 4]).to_string(), "[2, 3, 4]");
        let many = vec![1u32; 100_000];
        assert_eq!(Shape::of(&many).to_string(), "[1, 1, 1, 1, 1, 1, 1, 1, …] (100000 dims)");
        assert_eq!(Shape::of_usize(&[]).to_string(), "[]");
    }
}

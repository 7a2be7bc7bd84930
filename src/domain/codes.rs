//! Medical codes (diagnoses, procedures, medications).
//!
//! A code is a trimmed, non-empty string of at most [`MAX_CODE_LEN`]
//! printable characters; a set holds at most [`MAX_CODES_PER_SET`] codes;
//! duplicates are dropped, keeping the first occurrence's position.
use std::collections::HashSet;

pub const MAX_CODE_LEN: usize = 64;
pub const MAX_CODES_PER_SET: usize = 1000;

/// Why a code set was refused; `index` is the position in the input list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeSetError {
    #[error("a set holds at most {MAX_CODES_PER_SET} codes, got {0}")]
    TooMany(usize),
    #[error("code is empty")]
    Empty { index: usize },
    #[error("code is longer than {MAX_CODE_LEN} characters")]
    TooLong { index: usize },
    #[error("code contains a non-printable character")]
    NotPrintable { index: usize },
}

impl CodeSetError {
    /// Index of the offending code, if the error concerns one code.
    pub fn index(&self) -> Option<usize> {
        match self {
            CodeSetError::TooMany(_) => None,
            CodeSetError::Empty { index }
            | CodeSetError::TooLong { index }
            | CodeSetError::NotPrintable { index } => Some(*index),
        }
    }
}

/// A validated, de-duplicated list of codes in first-seen order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeSet(Vec<String>);

impl CodeSet {
    /// Validates every code and drops duplicates. The first failing rule is
    /// reported; use [`CodeSet::parse_all`] for every error.
    pub fn parse<S: AsRef<str>>(raw: &[S]) -> Result<Self, CodeSetError> {
        Self::parse_all(raw).map_err(|mut e| e.remove(0))
    }

    /// Like [`CodeSet::parse`], reporting every bad code.
    pub fn parse_all<S: AsRef<str>>(raw: &[S]) -> Result<Self, Vec<CodeSetError>> {
        if raw.len() > MAX_CODES_PER_SET {
            return Err(vec![CodeSetError::TooMany(raw.len())]);
        }
        let mut errors = Vec::new();
        let mut seen = HashSet::with_capacity(raw.len());
        let mut codes = Vec::with_capacity(raw.len());
        for (index, code) in raw.iter().enumerate() {
            let code = code.as_ref().trim();
            if code.is_empty() {
                errors.push(CodeSetError::Empty { index });
            } else if code.chars().count() > MAX_CODE_LEN {
                errors.push(CodeSetError::TooLong { index });
            } else if code.chars().any(|c| c.is_control()) {
                errors.push(CodeSetError::NotPrintable { index });
            } else if seen.insert(code.to_string()) {
                codes.push(code.to_string());
            }
        }
        if errors.is_empty() { Ok(CodeSet(codes)) } else { Err(errors) }
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_dedups_in_order() {
        let s = CodeSet::parse(&[" A01 ", "B02", "A01", "B02 "]).unwrap();
        assert_eq!(s.as_slice(), ["A01", "B02"]);
    }

    #[test]
    fn rejects_each_rule_with_index() {
        assert_eq!(CodeSet::parse(&["ok", "  "]), Err(CodeSetError::Empty { index: 1 }));
        let long = "x".repeat(65);
        assert_eq!(CodeSet::parse(&[long.as_str()]), Err(CodeSetError::TooLong { index: 0 }));
        assert!(CodeSet::parse(&["x".repeat(64)]).is_ok());
        assert_eq!(CodeSet::parse(&["a\u{7}b"]), Err(CodeSetError::NotPrintable { index: 0 }));
        let many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
        assert_eq!(CodeSet::parse(&many), Err(CodeSetError::TooMany(1001)));
        let max: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        assert_eq!(CodeSet::parse(&max).unwrap().len(), 1000);
    }
}

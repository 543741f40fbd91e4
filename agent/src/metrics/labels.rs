//! Bounded label values: the first `max` distinct values of a label are kept as they are,
//! later ones are folded into `other`, so that a port scan or a storm of short-lived
//! processes cannot grow the number of series without bound. First come, first kept:
//! series never change names under a dashboard once they exist.

use std::collections::HashSet;

pub const OTHER: &str = "other";

#[derive(Debug)]
pub struct LabelCap {
    admitted: HashSet<String>,
    max: usize,
    folded: u64,
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        Self {
            admitted: HashSet::new(),
            max,
            folded: 0,
        }
    }

    /// The value to use for `value`: itself if admitted (or room is left), else `other`.
    pub fn admit(&mut self, value: &str) -> String {
        if self.admitted.contains(value) {
            return value.to_string();
        }
        if self.admitted.len() < self.max {
            self.admitted.insert(value.to_string());
            return value.to_string();
        }
        self.folded += 1;
        OTHER.to_string()
    }

    /// Values folded into `other` so far.
    pub fn folded(&self) -> u64 {
        self.folded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_beyond_the_cap() {
        let mut cap = LabelCap::new(2);
        assert_eq!(cap.admit("a"), "a");
        assert_eq!(cap.admit("b"), "b");
        assert_eq!(cap.admit("c"), OTHER);
        assert_eq!(cap.admit("a"), "a");
        assert_eq!(cap.folded(), 1);
    }
}
